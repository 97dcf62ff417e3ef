"""`led-local chat`: a streaming REPL over the model's chat template.

Line editing and history come from prompt_toolkit; colours from click. Ctrl-C stops the answer being
written (what was written stays in the conversation), Ctrl-D leaves. The conversation keeps to the context
window by dropping its oldest turns, with a notice. `<think>` sections are shown dimmed, or hidden.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from .. import diagnostics, models
from ..generate import chat_prompt_tokens
from ..sampling import LEDConfig
from .common import (CLI, USER_ERRORS, model_options, one_line_errors, open_model, sampler_options,
                     sampling_kwargs)

HELP = """commands:
  /help                 this list
  /sampler NAME         led, standard or dola
  /set key=value        temperature, max_tokens, seed, top_k, top_p, d, k, latent_norm, exploit, think_only,
                        dola_layers, think=show|hide
  /system TEXT          set the system message (empty: none) and start over
  /reset                forget the conversation
  /stats                speed and LED's share of explored tokens
  /save FILE            write the conversation and settings as JSON
Ctrl-C stops an answer, Ctrl-D leaves."""


class ThinkStyler:
    """Splits streamed text into thinking and answer parts, across chunk boundaries."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self.inside = False
        self.pending = ""

    def feed(self, text: str, final: bool = False) -> list[tuple[str, bool]]:
        """(text, is_thinking) pieces ready to show; a possible partial tag is held back unless final."""
        buf, out = self.pending + text, []
        while buf:
            tag = self.CLOSE if self.inside else self.OPEN
            i = buf.find(tag)
            if i >= 0:
                out.append((buf[:i], self.inside))
                out.append((tag, self.inside or tag == self.OPEN))
                buf, self.inside = buf[i + len(tag):], not self.inside
                continue
            hold = 0 if final else next((k for k in range(min(len(tag) - 1, len(buf)), 0, -1)
                                         if buf.endswith(tag[:k])), 0)
            out.append((buf[: len(buf) - hold], self.inside))
            buf = buf[len(buf) - hold:]
            break
        self.pending = buf
        return [(t, thinking) for t, thinking in out if t]


@dataclass
class Session:
    llm: object
    sampler: str
    settings: dict
    system: str | None = None
    turns: list[dict] = field(default_factory=list)
    show_think: bool = True
    last: dict = field(default_factory=dict)
    model_key: str | None = None   # the registry key, when the model came from the registry
    noticed: bool = False
    # per sampler: answers' tokens and seconds, and LED's explored steps (/stats; /reset clears them)
    stats: dict = field(default_factory=dict)

    def reservoir_notice(self) -> None:
        """Once, for LED: what the model's measured entropy profile says LED can do on it."""
        if self.sampler != "led" or self.noticed:
            return
        measured = diagnostics.measured_reservoir(self.llm.model_path, self.model_key)
        if measured is None or measured["has_reservoir"]:
            return
        self.noticed = True
        better = next((m.key for m in models.REGISTRY.values() if m.latent_reservoir), None)
        figures = (f" (LED's blocks {measured['led_blocks_raw']:.3f} against the final layer's {measured['final']:.3f})"
                   if "final" in measured else "")
        click.echo(click.style(
            f"note: this model's last blocks are no more entropic than its final layer{figures}, measured with "
            "`led-local entropy-profile`: LED still explores on unsure steps, but its draws there stay close to the "
            "final layer's top-k, so expect answers like standard sampling's"
            + (f"; --model {better} has a reservoir" if better else ""), fg="yellow"))

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def sampling(self) -> dict:
        s = self.settings
        return {**sampling_kwargs(self.sampler, temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"],
                                  d=s["d"], k=s["k"], latent_norm=s["latent_norm"], exploit=s["exploit"],
                                  think_only=s["think_only"], dola_layers=s["dola_layers"]),
                "seed": s["seed"]}

    def fit_context(self) -> int:
        """When the prompt and a full answer no longer fit, drop the oldest turns down to half the room, so
        that the next turns add to the cached conversation instead of each cutting its start again (which
        would make the model evaluate the whole conversation on every turn). Returns how many were dropped."""
        room = self.llm.n_ctx() - self.settings["max_tokens"]  # for the prompt

        def prompt_len() -> int:
            return len(chat_prompt_tokens_unchecked(self.llm, self.messages()))

        dropped = 0
        while len(self.turns) > 1 and prompt_len() > (room // 2 if dropped else room):
            self.turns = self.turns[2:] if len(self.turns) > 2 else self.turns[1:]
            dropped += 1
        return dropped


def chat_prompt_tokens_unchecked(llm, messages: list[dict]) -> list[int]:
    try:
        return chat_prompt_tokens(llm, messages)
    except ValueError as e:
        if "context window" in str(e):
            return [0] * llm.n_ctx()  # too long: the caller drops turns until it fits
        raise


def _coerce(key: str, value: str, settings: dict):
    try:
        return _coerce_value(key, value, settings)
    except ValueError as e:
        if "invalid literal" in str(e) or "could not convert" in str(e):
            kind = "an integer" if isinstance(settings[key], int) or key == "seed" else "a number"
            raise ValueError(f"{key} takes {kind}, got {value!r}") from None
        raise


def _coerce_value(key: str, value: str, settings: dict):
    current = settings[key]
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "on", "yes"):
            return True
        if value.lower() in ("0", "false", "off", "no"):
            return False
        raise ValueError(f"{key} takes on/off")
    if key == "seed":
        return None if value.lower() in ("none", "random", "") else int(value)
    if isinstance(current, int) and not isinstance(current, bool):
        return int(value)
    if isinstance(current, float):
        return float(value)
    return value


def handle_command(session: Session, line: str) -> bool:
    """A slash command; returns False when the REPL should end."""
    cmd, _, arg = line[1:].partition(" ")
    arg = arg.strip()
    if cmd == "help":
        click.echo(HELP)
    elif cmd == "sampler":
        if arg not in ("led", "standard", "dola"):
            raise ValueError("/sampler takes led, standard or dola")
        session.sampler = arg
        click.echo(f"sampler: {arg}")
        session.reservoir_notice()
    elif cmd == "set":
        if "=" not in arg:
            raise ValueError("/set takes key=value, e.g. /set temperature=0.8")
        key, value = (x.strip() for x in arg.split("=", 1))
        if key == "think":
            if value not in ("show", "hide"):
                raise ValueError("/set think=show or think=hide")
            session.show_think = value == "show"
        elif key in session.settings:
            new = dict(session.settings, **{key: _coerce(key, value, session.settings)})
            old, session.settings = session.settings, new
            try:
                checked = session.sampling()  # validates (LEDConfig, dola layers) ...
                if "led" in checked:
                    checked["led"].latent_layers(session.llm)  # ... and against this model
                if new["temperature"] < 0 or new["max_tokens"] < 1:
                    raise ValueError("temperature must be >= 0 and max_tokens >= 1")
            except (ValueError, TypeError):
                session.settings = old
                raise
        else:
            raise ValueError(f"unknown setting {key!r}; /help lists them")
        click.echo(f"{key} = {value}")
    elif cmd == "system":
        session.system, session.turns = (arg or None), []
        click.echo("system message set; conversation restarted" if arg else "system message cleared")
    elif cmd == "reset":
        session.turns, session.last, session.stats = [], {}, {}
        click.echo("conversation and statistics reset")
    elif cmd == "stats":
        last = session.last
        if not last:
            click.echo("no answer yet")
            return True
        click.echo(f"last answer ({last['sampler']}): {last['tokens']} tokens in {last['seconds']:.2f}s = "
                   f"{last['tok_s']:.1f} tokens/s")
        for sampler, st in session.stats.items():
            speed = st["tokens"] / st["seconds"] if st["seconds"] > 0 else 0.0
            explored = (f", explored {st['explored'] / st['tokens']:.1%} of its tokens"
                        if sampler == "led" and st["tokens"] else "")
            click.echo(f"  {sampler}: {st['answers']} answer(s), {st['tokens']} tokens, {speed:.1f} tokens/s{explored}")
    elif cmd == "save":
        if not arg:
            raise ValueError("/save takes a file name")
        path = Path(arg).expanduser()
        data = {"model": session.llm.model_path, "sampler": session.sampler, "settings": session.settings,
                "messages": session.messages()}
        save_json(path, data)
        click.echo(f"saved to {path}")
    elif cmd in ("quit", "exit"):
        return False
    else:
        raise ValueError(f"unknown command /{cmd}; /help lists them")
    return True


def save_json(path: Path, data: object) -> None:
    """Whole or not at all: a temporary file of its own beside the target (never a predictable name that a
    link could redirect), renamed over it."""
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"cannot save to {path}: the folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
    except OSError as e:
        raise ValueError(f"cannot save to {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ValueError(f"cannot save to {path}: {e.strerror}") from None


def answer(session: Session, user_text: str) -> None:
    session.turns.append({"role": "user", "content": user_text})
    dropped = session.fit_context()
    if dropped:
        click.echo(click.style(f"(dropped the {dropped} oldest turn(s) to fit the context window)", fg="yellow"))
    styler, text, reasoning, steps, explored, finish = ThinkStyler(), "", "", 0, 0, None
    t0 = time.perf_counter()
    chunks = session.llm.create_chat_completion(session.messages(), max_tokens=session.settings["max_tokens"],
                                                stream=True, trace=True, **session.sampling())

    def show(pieces):
        for piece, thinking in pieces:
            if thinking and not session.show_think:
                continue
            click.echo(click.style(piece, dim=True) if thinking else piece, nl=False)
        sys.stdout.flush()

    try:
        for chunk in chunks:
            for c in chunk["choices"]:
                # a thinking template's <think> section arrives split out (chat.py); others' inline
                reasoning += c["delta"].get("reasoning_content", "")
                show([(c["delta"].get("reasoning_content", ""), True)])
                text += c["delta"].get("content") or ""
                show(styler.feed(c["delta"].get("content") or ""))
                for t in c.get("led_trace", []):
                    steps += 1
                    explored += bool(t.get("explored"))
                finish = c.get("finish_reason") or finish
    except KeyboardInterrupt:
        chunks.close()
        show(styler.feed("", final=True))
        click.echo(click.style(" [interrupted]", fg="yellow"), nl=False)
    show(styler.feed("", final=True))
    if finish == "length":
        click.echo(click.style(f" [cut at max_tokens={session.settings['max_tokens']}]", fg="yellow"), nl=False)
    click.echo()
    seconds = time.perf_counter() - t0
    session.turns.append({"role": "assistant", "content": text} | ({"reasoning_content": reasoning} if reasoning else {}))
    session.last = {"sampler": session.sampler, "tokens": steps, "seconds": seconds,
                    "tok_s": steps / seconds if seconds > 0 else 0.0}
    st = session.stats.setdefault(session.sampler, {"answers": 0, "tokens": 0, "seconds": 0.0, "explored": 0})
    st["answers"] += 1
    st["tokens"] += steps
    st["seconds"] += seconds
    st["explored"] += explored


def _reader():
    """prompt_toolkit's line editor with history on a terminal; plain lines otherwise (pipes, tests)."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        history = models.cache_dir().parent / "chat_history"
        history.parent.mkdir(parents=True, exist_ok=True)
        history.touch(mode=0o600, exist_ok=True)
        os.chmod(history, 0o600)  # what was typed is the user's alone
        prompt_session = PromptSession(history=FileHistory(str(history)))
        return lambda: prompt_session.prompt("you> ")

    def read() -> str:
        click.echo("you> ", nl=False)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")
    return read


@click.command()
@model_options
@sampler_options
@click.option("--max-tokens", type=click.IntRange(1), default=1024, show_default=True, help="per answer")
@click.option("--ctx", "n_ctx", type=click.IntRange(256), default=4096, show_default=True, help="context window")
@click.option("--system", default=None, help="system message")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None)
@click.option("--hide-think", is_flag=True, help="hide <think> sections")
@one_line_errors
def chat(model, threads, placement, sampling, max_tokens, n_ctx, system, seed, hide_think):
    """Chat with a model (streaming; /help lists the slash commands)."""
    # Ctrl-C stops an answer even where the launch ignored SIGINT (a background job of a script: Python then
    # leaves it ignored), as eval's handler does
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with open_model(model, threads, placement, n_seq_max=1, n_ctx=n_ctx) as llm:
        if llm.chat_template() is None:
            raise ValueError(f"{Path(llm.model_path).name} has no chat template; use `led-local generate --no-chat`")
        led = sampling.get("led") or LEDConfig()
        settings = {"temperature": sampling["temperature"], "max_tokens": max_tokens, "seed": seed,
                    "top_k": sampling.get("top_k", CLI["top_k"]), "top_p": sampling.get("top_p", CLI["top_p"]),
                    "d": led.d, "k": led.k,
                    "latent_norm": led.latent_norm, "exploit": led.exploit, "think_only": led.think_only,
                    "dola_layers": sampling.get("dola_layers", "high")}
        session = Session(llm=llm, sampler=sampling["sampler"], settings=settings, system=system,
                          show_think=not hide_think, model_key=model if model in models.REGISTRY else None)
        click.echo(f"led-local chat: {Path(llm.model_path).name}, sampler {session.sampler}. "
                   "/help for commands, Ctrl-D to leave.")
        session.reservoir_notice()
        read = _reader()
        while True:
            try:
                line = read().strip()
            except KeyboardInterrupt:
                continue
            except EOFError:
                click.echo()
                return
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not handle_command(session, line):
                        return
                else:
                    answer(session, line)
            except USER_ERRORS as e:
                click.echo(click.style(f"error: {e}", fg="red"))
