"""Bounds on a GBNF grammar, checked before llama.cpp parses it (issue "A server that no request can take
down"). llama.cpp's grammar parser is recursive descent (deep nesting overflows its stack) and its grammar
step keeps one stack per parse position the output may be at: a run of optional items, or a bounded
repetition of something that may match nothing, multiplies those positions, and every candidate token is
checked against each of them (measured, SmolLM2's 49k vocabulary, 1 thread: 32 optional items in a row
cost 0.09 s a token, 64 cost 0.28 s, 200 cost 38 s; `("a"?){0,32}` 0.10 s, `{0,64}` 0.59 s, `{0,200}` 64 s).

The check is a small parser of llama.cpp's GBNF syntax (rules `name ::= alternates`, literals, character
classes, rule references, groups, `.`, tokens `<...>`, the postfixes `* + ? {m} {m,} {m,n}`, comments) that
measures the text's size, its nesting depth, the elements its repetitions expand to, the alternatives one
position faces (an alternation of 24,000 words cost 11 s a token, 2,000 cost 0.37 s), and the longest run of
items in one sequence that may all match nothing (an optional item or a rule reference counts 1; a bounded
repetition of something nullable counts its inner run times its count). What it cannot parse is left to
llama.cpp, which refuses it.

What the run does not see: a chain of rules each holding one optional item and a reference to the next (a
JSON schema's optional properties are such a chain, and cheap because each link starts with its own key:
256 of them cost 0.10 s a token, 8 cost 0.03 s). A hand-made chain of ambiguous links can still be slow;
the scheduler's per-token budget (scheduler.py, `max_sample_seconds`) ends such a request after its
first costly token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import FieldError

MAX_BYTES = 256 * 1024      # tool-call grammars of many tools stay well below it
MAX_DEPTH = 64              # parentheses inside one another (llama.cpp overflowed at 30,000)
MAX_ELEMENTS = 200_000      # elements after expanding repetitions
MAX_NULLABLE_RUN = 32       # parse positions a run of may-be-empty items keeps alive at once
MAX_ALTERNATIVES = 1024     # alternatives one position may face (24,000 cost 11 s a token; 2,000 0.37 s)


class GrammarTooCostly(FieldError):
    """A grammar over one of the bounds: the message names the bound and says what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "grammar")


@dataclass
class _Node:
    kind: str                     # "term", "empty", "ref", "seq", "alt", "rep"
    items: list = field(default_factory=list)
    name: str = ""
    lo: int = 0
    hi: int | None = None         # None: unbounded


def _word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in "-_")


class _Parser:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0
        self.level = 0  # groups open: this parser recurses into each, and must not overflow Python's stack

    def space(self, newline_ok: bool) -> None:
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in " \t" or (newline_ok and c in "\r\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(s) and s[self.i] not in "\r\n":
                    self.i += 1
            else:
                break

    def skip_quoted(self, end: str) -> None:
        s = self.s
        self.i += 1
        while self.i < len(s) and s[self.i] != end:
            self.i += 2 if s[self.i] == "\\" else 1
        if self.i >= len(s):
            raise SyntaxError
        self.i += 1

    def rules(self) -> dict[str, _Node]:
        out: dict[str, _Node] = {}
        self.space(True)
        while self.i < len(self.s):
            start = self.i
            while self.i < len(self.s) and _word(self.s[self.i]):
                self.i += 1
            name = self.s[start:self.i]
            self.space(False)
            if not name or not self.s.startswith("::=", self.i):
                raise SyntaxError
            self.i += 3
            self.space(True)
            node = self.alternates(nested=False)
            out[name] = _Node("alt", [out[name], node]) if name in out else node
            self.space(True)
        return out

    def alternates(self, nested: bool) -> _Node:
        alts = [self.sequence(nested)]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            self.space(True)
            alts.append(self.sequence(nested))
        return alts[0] if len(alts) == 1 else _Node("alt", alts)

    def sequence(self, nested: bool) -> _Node:
        s, items = self.s, []
        while self.i < len(s):
            c = s[self.i]
            start = self.i
            if c == '"':
                self.skip_quoted('"')
                items.append(_Node("empty" if self.i - start == 2 else "term"))
            elif c == "[":
                self.skip_quoted("]")
                items.append(_Node("term"))
            elif c == ".":
                self.i += 1
                items.append(_Node("term"))
            elif c == "<" or (c == "!" and s.startswith("<", self.i + 1)):
                self.i += 1 if c == "<" else 2
                self.i = s.index(">", self.i) + 1
                items.append(_Node("term"))
            elif _word(c):
                while self.i < len(s) and _word(s[self.i]):
                    self.i += 1
                items.append(_Node("ref", name=s[start:self.i]))
            elif c == "(":
                self.i += 1
                self.level += 1
                if self.level > MAX_DEPTH:  # where _depth's count and this parse disagree (a bad token, say)
                    raise GrammarTooCostly(f"the grammar's groups nest more than {MAX_DEPTH} deep")
                self.space(True)
                inner = self.alternates(nested=True)
                self.level -= 1
                if self.i >= len(s) or s[self.i] != ")":
                    raise SyntaxError
                self.i += 1
                items.append(inner)
            elif c in "*+?{":
                if not items:
                    raise SyntaxError
                items[-1] = self.postfix(items[-1])
            else:
                break
            self.space(nested)
        return _Node("seq", items)

    def postfix(self, node: _Node) -> _Node:
        c = self.s[self.i]
        self.i += 1
        if c != "{":
            return _Node("rep", [node], lo=int(c == "+"), hi=1 if c == "?" else None)
        end = self.s.index("}", self.i)
        body = self.s[self.i:end].replace(" ", "")
        self.i = end + 1
        lo, _, hi = body.partition(",")
        lo_n = int(lo)
        hi_n = lo_n if "," not in body else (int(hi) if hi else None)
        if hi_n is not None and hi_n < lo_n:
            # llama.cpp's parser takes hi - lo unsigned and expands the repetition until memory runs out (a
            # JSON schema's minLength above its maxLength becomes such a repetition)
            raise GrammarTooCostly(f"the repetition {{{body}}} has its maximum below its minimum")
        return _Node("rep", [node], lo=lo_n, hi=hi_n)


def _depth(text: str) -> int:
    """Deepest nesting of parentheses outside literals and classes, counted without recursion (a
    recursive count would meet the very stack overflow it guards against)."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"[":
            end = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != end:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] not in "\r\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


class _Measure:
    def __init__(self, rules: dict[str, _Node]) -> None:
        self.rules = rules
        self.nullable_rules = self._nullable_rules()
        self.longest_run = 0
        self.width_memo: dict[str, int] = {}

    def _nullable_rules(self) -> set[str]:
        found: set[str] = set()
        changed = True
        while changed:  # fixed point over the rules
            changed = False
            for name, node in self.rules.items():
                if name not in found and self.nullable(node, found):
                    found.add(name)
                    changed = True
        return found

    def nullable(self, node: _Node, rules: set[str] | None = None) -> bool:
        rules = self.nullable_rules if rules is None else rules
        k = node.kind
        if k == "empty":
            return True
        if k == "term":
            return False
        if k == "ref":
            return node.name in rules
        if k == "seq":
            return all(self.nullable(x, rules) for x in node.items)
        if k == "alt":
            return any(self.nullable(x, rules) for x in node.items)
        return node.lo == 0 or self.nullable(node.items[0], rules)

    def span(self, node: _Node) -> int:
        """Parse positions a nullable node keeps alive at once (1 for an item that must match something)."""
        k = node.kind
        if not self.nullable(node):
            return 1
        if k == "ref":  # counted once: a rule's own runs are measured where it is defined
            return 1
        if k == "seq":
            return max(1, sum(self.span(x) for x in node.items))
        if k == "alt":
            return sum(self.span(x) for x in node.items)
        if k == "rep":
            inner = node.items[0]
            if self.nullable(inner):
                return self.span(inner) * max(1, node.hi if node.hi is not None else 1)
            return 1
        return 1

    def width(self, node: _Node) -> int:
        """Alternatives a parse position at the start of the node faces (each is a grammar stack that every
        candidate token is checked against): an alternation adds them up, a sequence adds those of its
        leading items while they may match nothing, a rule reference counts its rule's."""
        k = node.kind
        if k in ("term", "empty"):
            return 1
        if k == "ref":
            if node.name not in self.width_memo:
                self.width_memo[node.name] = 1  # a cycle counts once
                rule = self.rules.get(node.name)
                self.width_memo[node.name] = self.width(rule) if rule is not None else 1
            return self.width_memo[node.name]
        if k == "alt":
            return sum(self.width(x) for x in node.items)
        if k == "rep":
            return self.width(node.items[0])
        total = 0
        for x in node.items:
            total += self.width(x)
            if not self.nullable(x):
                break
        return max(total, 1)

    def first_refs(self, node: _Node) -> set[str]:
        """Rules a parse position at the start of the node may enter before the node has matched anything."""
        k = node.kind
        if k == "ref":
            return {node.name}
        if k == "alt":
            return set().union(*(self.first_refs(x) for x in node.items))
        if k == "rep":
            return self.first_refs(node.items[0]) if node.hi != 0 else set()
        found: set[str] = set()
        for x in node.items if k == "seq" else ():
            found |= self.first_refs(x)
            if not self.nullable(x):
                break
        return found

    def left_recursion(self) -> str | None:
        """A rule that may enter itself before matching anything, or None. llama.cpp refuses a rule that
        starts with itself, but not one that reaches itself through items that may be empty (`root ::= r0
        root "a"` with `r0 ::= "c"?`): its grammar step then expands stacks until memory runs out (found by
        tests/fuzz_grammar.py). A depth-first search with a list, not recursion."""
        edges = {name: sorted(self.first_refs(node) & self.rules.keys()) for name, node in self.rules.items()}
        state: dict[str, int] = {}  # 1: on the path, 2: done
        for start in edges:
            if start in state:
                continue
            state[start], path = 1, [(start, iter(edges[start]))]
            while path:
                name, nexts = path[-1]
                after = next(nexts, None)
                if after is None:
                    state[name] = 2
                    path.pop()
                elif state.get(after) == 1:
                    return after
                elif after not in state:
                    state[after] = 1
                    path.append((after, iter(edges[after])))
        return None

    def walk(self, node: _Node) -> int:
        """Elements the node expands to; records the longest run of nullable items in any sequence."""
        k = node.kind
        if k in ("term", "empty", "ref"):
            return 1
        if k == "rep":
            return self.walk(node.items[0]) * max(1, node.hi if node.hi is not None else node.lo, node.lo)
        sizes = [self.walk(x) for x in node.items]
        if k == "seq":
            run = 0
            for x in node.items:
                run = run + self.span(x) if self.nullable(x) else 0
                self.longest_run = max(self.longest_run, run)
        return sum(sizes) + 1


def check_grammar(gbnf: str) -> None:
    """Raise GrammarTooCostly when the grammar is over a bound (module docstring); return when it is within
    them or does not parse here (llama.cpp then says whether it parses)."""
    size = len(gbnf.encode("utf-8", "replace"))
    if size > MAX_BYTES:
        raise GrammarTooCostly(f"the grammar is {size} bytes; the limit is {MAX_BYTES}")
    depth = _depth(gbnf)
    if depth > MAX_DEPTH:
        raise GrammarTooCostly(f"the grammar nests parentheses {depth} deep; the limit is {MAX_DEPTH} "
                               "(name the inner groups as rules)")
    try:
        rules = _Parser(gbnf).rules()
    except GrammarTooCostly:
        raise
    except (SyntaxError, ValueError, IndexError):
        return
    m = _Measure(rules)
    looped = m.left_recursion()
    if looped is not None:
        raise GrammarTooCostly(f"the rule `{looped}` can reach itself before matching anything (left recursion, "
                               "perhaps through items that may be empty); rewrite it to match something first")
    elements = sum(m.walk(node) for node in rules.values())
    if elements > MAX_ELEMENTS:
        raise GrammarTooCostly(f"the grammar's repetitions expand to {elements} elements; the limit is {MAX_ELEMENTS}")
    widest = max((m.width(_Node("ref", name=name)) for name in rules), default=0)
    if widest > MAX_ALTERNATIVES:
        raise GrammarTooCostly(f"one position of the grammar faces {widest} alternatives; the limit is "
                               f"{MAX_ALTERNATIVES}, as every token is checked against each (group them: "
                               "shared prefixes as rules)")
    if m.longest_run > MAX_NULLABLE_RUN:
        raise GrammarTooCostly(
            f"the grammar lets {m.longest_run} items in a row match nothing (optional items, or a repetition of "
            f"something optional); the limit is {MAX_NULLABLE_RUN}, as each one multiplies the work of every "
            "token: make the items required, or repeat a required item with {0,n}")


MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32         # json-schema-to-grammar recurses once per level
MAX_SCHEMA_NODES = 20_000     # objects, arrays and values in the schema
MAX_PROPERTIES = 256          # per object: the converter's optional-property rules grow ~cubically
#                               (256: 0.03 s; 2,000: 21 s, measured on this project's CI machine)
MAX_ENUM = 1024               # values of one enum


def check_schema(schema: object) -> None:
    """Raise GrammarTooCostly when a JSON schema (parsed) is over a bound, before it is converted. Walked
    with a list, not recursion: a schema nested 100,000 deep must not overflow Python's stack either."""
    todo, nodes = [(schema, 1)], 0
    while todo:
        node, depth = todo.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise GrammarTooCostly(f"the JSON schema has more than {MAX_SCHEMA_NODES} values; simplify it")
        if depth > MAX_SCHEMA_DEPTH:
            raise GrammarTooCostly(f"the JSON schema nests more than {MAX_SCHEMA_DEPTH} levels deep")
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict) and len(props) > MAX_PROPERTIES:
                raise GrammarTooCostly(f"a JSON schema object has {len(props)} properties; the limit is {MAX_PROPERTIES}")
            enum = node.get("enum")
            if isinstance(enum, list) and len(enum) > MAX_ENUM:
                raise GrammarTooCostly(f"a JSON schema enum has {len(enum)} values; the limit is {MAX_ENUM}")
            for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
                lo, hi = node.get(low), node.get(high)
                if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
                    # no value matches, and the converted grammar's reversed repetition would exhaust memory
                    raise GrammarTooCostly(f"a JSON schema has {low} {lo} above its {high} {hi}; no value can match")
            todo.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            todo.extend((v, depth + 1) for v in node)
    looped = inlined_ref_cycle(schema)
    if looped is not None:
        raise GrammarTooCostly(f"the JSON schema's allOf refers (\"$ref\": {looped!r}) to a schema that holds "
                               "the same allOf: merging it never ends; refer to it outside allOf")


# values that are data, not schemas (an enum's object may hold any keys)
_NOT_SCHEMAS = frozenset({"enum", "const", "default", "examples"})


def _resolve(root: object, ref: object) -> object:
    """The schema a local `$ref` ("#", "#/$defs/name") points at, or None."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def inlined_ref_cycle(root: object) -> str | None:
    """The `$ref` of an allOf that leads back to that allOf, or None. json-schema-to-grammar gives each
    other $ref a rule of its own (so recursion through them is a grammar's recursion), but merges an allOf's
    referenced schemas into the rule being built: when one contains the allOf again, it recurses until the
    stack overflows and the process dies (found by tests/fuzz_grammar.py). Walked with a list, not recursion."""
    def successors(node: object) -> list[tuple[object, str | None]]:
        if isinstance(node, list):
            return [(v, None) for v in node if isinstance(v, (dict, list))]
        if not isinstance(node, dict):
            return []
        out = [(v, None) for k, v in node.items() if k not in _NOT_SCHEMAS and isinstance(v, (dict, list))]
        all_of = node.get("allOf")
        for part in all_of if isinstance(all_of, list) else ():
            if isinstance(part, dict) and "$ref" in part:
                target = _resolve(root, part["$ref"])
                if isinstance(target, (dict, list)):
                    out.append((target, part["$ref"]))
        return out

    state: dict[int, int] = {id(root): 1}  # 1: on the path, 2: done
    path = [(root, iter(successors(root)), None)]  # (node, its successors left, the $ref that led to it)
    while path:
        node, nexts, _ = path[-1]
        step = next(nexts, None)
        if step is None:
            state[id(node)] = 2
            path.pop()
            continue
        after, ref = step
        seen = state.get(id(after))
        if seen == 1:  # a cycle (tree edges alone make none, so one of its edges is a $ref)
            start = next(i for i, frame in enumerate(path) if frame[0] is after)
            return next(r for r in [*(frame[2] for frame in path[start + 1:]), ref] if r is not None)
        if seen is None:
            state[id(after)] = 1
            path.append((after, iter(successors(after)), ref))
    return None
