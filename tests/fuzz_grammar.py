"""Fuzz llama.cpp's grammar parser, grammar sampler and JSON-schema converter with what a request may send:
generated and mutated GBNF grammars and JSON schemas go through the product's path (LlamaGrammar's bounds,
then llama.cpp's parser, then a few grammar-constrained tokens of a tiny model). Run by tests/test_fuzz.py
in a child Python whose native libraries are the AddressSanitizer/UBSan build (tests/asan_build.py), so a
memory error or undefined behaviour in any of those C/C++ paths ends the run with the sanitizer's report.

    python tests/fuzz_grammar.py MODEL.gguf --seconds 60 --seed 0

Inputs are seeded and generated in order, so a seed and a count reproduce a run; the input being tried is
written to --last (the report's reproducer when the process dies). Prints one summary line of counts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from led_local import Llama, LlamaGrammar
from led_local.errors import FieldError
from led_local.sampling import NoTokenAllowed

SEED_GRAMMARS = [
    'root ::= "yes" | "no"',
    'root ::= [a-z]+ ("," [a-z]+)*',
    'root ::= "(" root ")" | [0-9]{1,3}',
    'root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= [0-9]+ | "(" expr ")"',
    'root ::= [^\\n"\\\\]{0,8} "\\n"',
    'root ::= "\\x41" "\\u00e9" "\\U0001F600" [\\x00-\\x7f]',
    'root ::= . .? .{2}',
    '# a comment\nroot ::= item+ # trailing\nitem ::= "a" | "b"\n',
    'root ::= <think> [a-z]* <[151644]>?',
    'root ::= !<think> "x"',
    'root ::= ("ab" | "a" | "")* "c"',
    'root ::= value\nvalue ::= object | array | string | number | ("true" | "false" | "null")\n'
    'object ::= "{" ( string ":" value ("," string ":" value)* )? "}"\n'
    'array ::= "[" ( value ("," value)* )? "]"\nstring ::= "\\"" [^"\\\\]* "\\""\nnumber ::= "-"? [0-9]+',
]

SEED_SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
     "required": ["name"]},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    {"enum": ["red", "green", 3, None, True]},
    {"type": "string", "pattern": "^[A-Z][a-z]{2,5}(-[0-9]+)?$"},
    {"type": "string", "minLength": 2, "maxLength": 4},
    {"type": "string", "format": "date-time"},
    {"anyOf": [{"type": "string"}, {"type": "object", "additionalProperties": {"type": "integer"}}]},
    {"$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
     "$ref": "#/$defs/node"},
    {"allOf": [{"type": "object", "properties": {"a": {"const": 1}}}, {"properties": {"b": {"type": "null"}}}]},
    {"type": "integer", "minimum": -5, "maximum": 120},
    {"oneOf": [{"type": "boolean"}, {"type": "array", "prefixItems": [{"type": "string"}], "items": False}]},
]

GBNF_PIECES = ['"', "'", "(", ")", "[", "]", "^", "-", "|", "*", "+", "?", "{", "}", ",", ".", "::=", "\\",
               "\\x", "\\u", "\\U", "\\n", "#", "<", ">", "!", "\n", " ", "root", "a", "0", "9", "{0,", "999}",
               "<[", "]>", "\x00", "\u00e9", "\U0001F600"]
REGEX_PIECES = ["^", "$", ".", "*", "+", "?", "|", "(", ")", "[", "]", "{", "}", "\\", "\\d", "\\w", "\\s", "-",
                "a", "Z", "0", "{2,", "3}", "(?:", "[^", "\\\\", "\""]


def random_term(rng: random.Random, rules: list[str]) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return json.dumps("".join(rng.choice("ab\"\\ z\u00e9") for _ in range(rng.randrange(4))))
    if kind == 1:
        lo, hi = sorted(rng.choice("abcz09") for _ in range(2))
        return f"[{'^' if rng.random() < 0.3 else ''}{lo}-{hi}]"
    if kind == 2:
        return rng.choice(rules)
    if kind == 3:
        return "."
    if kind == 4:
        return rng.choice(["<think>", "!<think>", "<[3]>", "!<[9]>"])
    return f"({random_alternates(rng, rules, depth=1)})"


def random_sequence(rng: random.Random, rules: list[str], depth: int = 0) -> str:
    items = []
    for _ in range(rng.randint(1, 4)):
        term = random_term(rng, rules) if depth < 3 else json.dumps("x")
        postfix = rng.choice(["", "", "*", "+", "?", f"{{{rng.randrange(4)}}}", f"{{{rng.randrange(3)},}}",
                              f"{{{rng.randrange(3)},{rng.randrange(3, 6)}}}"])
        items.append(term + postfix)
    return " ".join(items)


def random_alternates(rng: random.Random, rules: list[str], depth: int = 0) -> str:
    return " | ".join(random_sequence(rng, rules, depth + 1) for _ in range(rng.randint(1, 3)))


def random_grammar(rng: random.Random) -> str:
    rules = ["root"] + [f"r{i}" for i in range(rng.randrange(4))]
    return "\n".join(f"{name} ::= {random_alternates(rng, rules)}" for name in rules)


def mutate_text(rng: random.Random, text: str, pieces: list[str]) -> str:
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(text) + 1)
        op = rng.randrange(5)
        if op == 0:
            text = text[:at] + rng.choice(pieces) + text[at:]
        elif op == 1 and text:
            text = text[:at] + text[at + rng.randint(1, 4):]
        elif op == 2 and text:
            end = min(len(text), at + rng.randint(1, 16))
            text = text[:end] + text[at:end] * rng.randint(1, 40) + text[end:]
        elif op == 3:  # nesting, from shallow to far past llama.cpp's stack
            depth = int(10 ** rng.uniform(0, 4.7))
            text = text[:at] + "(" * depth + '"n"' + ")" * depth + text[at:]
        else:
            text = text[:at] + text[rng.randrange(len(text) + 1):]
    return text


def random_schema(rng: random.Random, depth: int = 0) -> object:
    if depth > 3 or rng.random() < 0.3:
        return rng.choice([{"type": t} for t in ("string", "integer", "number", "boolean", "null")]
                          + [{"type": "string", "pattern": mutate_text(rng, "^[a-z]+$", REGEX_PIECES)},
                             {"const": rng.choice([1, "x", None, [1], {"k": 2}])},
                             {"enum": [rng.randrange(10) for _ in range(rng.randrange(1, 5))]},
                             {"type": "integer", "minimum": rng.randint(-10**12, 10), "maximum": rng.randint(-3, 10**12)},
                             {"type": "string", "minLength": rng.randrange(6), "maxLength": rng.randrange(8)},
                             {"type": "string", "format": rng.choice(["date", "time", "uuid", "email", "x"])},
                             True, False])
    kind = rng.randrange(4)
    if kind == 0:
        props = {f"p{i}": random_schema(rng, depth + 1) for i in range(rng.randrange(5))}
        schema = {"type": "object", "properties": props,
                  "required": rng.sample(sorted(props), rng.randrange(len(props) + 1))}
        if rng.random() < 0.3:
            schema["additionalProperties"] = rng.choice([False, True, random_schema(rng, depth + 1)])
        return schema
    if kind == 1:
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": rng.randrange(3),
                "maxItems": rng.randrange(2, 6)}
    if kind == 2:
        return {rng.choice(["anyOf", "oneOf", "allOf"]): [random_schema(rng, depth + 1)
                                                         for _ in range(rng.randint(1, 3))]}
    return {"$defs": {"d": random_schema(rng, depth + 1)}, "$ref": rng.choice(["#/$defs/d", "#/$defs/x", "#"])}


def next_input(rng: random.Random) -> tuple[str, str]:
    """("gbnf" | "schema", text)."""
    roll = rng.random()
    if roll < 0.3:
        return "gbnf", random_grammar(rng)
    if roll < 0.6:
        return "gbnf", mutate_text(rng, rng.choice(SEED_GRAMMARS), GBNF_PIECES)
    if roll < 0.8:
        return "schema", json.dumps(random_schema(rng))
    text = json.dumps(rng.choice(SEED_SCHEMAS))
    return "schema", mutate_text(rng, text, ['"', "{", "}", "[", "]", ",", ":", "1", '"type"', '"$ref"', "null"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--last", type=Path, default=Path("fuzz-last-input.txt"))
    args = ap.parse_args()
    llm = Llama(args.model, n_ctx=256, n_threads=1, verbose=False)
    rng = random.Random(args.seed)
    counts = {"inputs": 0, "refused_by_bounds": 0, "refused_by_llama_cpp": 0, "sampled": 0, "no_token": 0}
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        kind, text = next_input(rng)
        args.last.write_text(f"{kind}\n{text}", encoding="utf-8", errors="surrogatepass")
        counts["inputs"] += 1
        try:
            grammar = LlamaGrammar(text) if kind == "gbnf" else LlamaGrammar.from_json_schema(text)
        except FieldError:
            counts["refused_by_bounds"] += 1
            continue
        except ValueError:  # not JSON, or json-schema-to-grammar refused it
            counts["refused_by_llama_cpp"] += 1
            continue
        try:
            llm.create_completion("x", max_tokens=4, grammar=grammar, seed=counts["inputs"])
            counts["sampled"] += 1
        except NoTokenAllowed:
            counts["no_token"] += 1
        except ValueError:  # llama.cpp's parser refused it
            counts["refused_by_llama_cpp"] += 1
    print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
