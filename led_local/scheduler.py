"""The one token loop of a Llama: a scheduler over its Engine (engine.py) that owns the context's sequences,
their cached prefixes, and one llama_decode per step for every live sequence of every request (continuous
batching). It handles token ids, slots and batches only: each sample's text is the front's (textstream.py).

After llama-server's split of slots from tasks: a *slot* is a llama.cpp sequence id and the tokens its KV
cells hold (its cached prefix); a *job* is one request: a prompt, n samples, sampler settings, seeds, stop
strings' detector and limits (or, for `Llama.latents`, a readout of the prompt's last row). A job takes n free slots
when admitted. Sample 0 gets the free slot whose cache shares the longest prefix with the prompt, so only
the rest of the prompt is evaluated; when the prompt is in, samples 1..n-1 get a copy of its cells
(llama_memory_seq_cp: the cells are shared, not copied). A finished job frees its slots, which keep their
cells as cache for the next job.

The KV cache is one pool of n_ctx cells shared by every slot (llama.cpp's unified KV cache, llama-server's
`--kv-unified`): a request may use all of it, as with llama-cpp-python. Admission reserves what a job may
need: its prompt's cells plus, per sample, max_tokens - 1 (the last token is never decoded), capped at the
pool. Idle slots' cached prefixes fill the rest and are evicted, least recently used first, when a job needs
their room. A job that does not fit waits behind the ones running (first come, first served); one that
cannot fit even alone is refused at the call. A job without max_tokens reserves only its prompt and grows
into cells no one has reserved: a sample of it ends with "length" when there are none left, which on a
busy pool can be sooner than alone (the one place where load changes a result; give max_tokens to rule it
out).

One step (`Scheduler.step`):
 1. admit waiting jobs, first come first served, into free slots;
 2. sample a token for every sequence whose output row came out of the last decode; check end of
    generation, max_tokens and (through the front's text stream, led_local/textstream.py) stop strings,
    and hand the new text to the job's consumer;
 3. build one batch: the new token of every live sequence, then prompt chunks of jobs still prefilling,
    up to n_batch tokens, so a long prompt never freezes the others' streams;
 4. give the graph the latent readout that the jobs in flight need (the union of their blocks; none when
    no job needs any), and decode.

Who runs the steps: the thread consuming a job's results (`Scheduler.results`), or a background driver
(`Scheduler.drive`, the server's); either way one step at a time, under the Llama's lock.

Determinism: every sequence has its own seeded sampler and its own row of every decode; in the shared pool
its attention reads only its own cells (flash attention skips the masked ones). The CPU kernels compute
a quantized model's row the same whatever else is in the batch, so a seeded job gives the same tokens
alone, beside others, or after a cached prefix (README, "Determinism", says where the last bits can move).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .engine import Engine
from .sampling import NativeSamplers


@dataclass(frozen=True)
class Delta:
    """New text of sample `index`; `finish_reason` is set on its last delta."""

    index: int
    text: str
    finish_reason: str | None = None
    trace: list[dict] | None = None  # per-token trace of the tokens sampled in this step (trace=True)
    logprobs: list[dict] | None = None  # per-token {"token", "logprob", "top"} (Job.logprobs set)


@dataclass(eq=False)
class _Sequence:
    index: int
    seed: int
    slot: "Slot | None" = None
    tokens: list[int] = field(default_factory=list)
    text: Any = None  # the front's TextStream: feed(token) -> whether a stop string ended it; delta(final)
    finish_reason: str | None = None
    pending_token: int | None = None  # sampled, to be decoded in this step's batch
    row: int | None = None            # its output row in the last decode
    pending_trace: list = field(default_factory=list)
    pending_logprobs: list = field(default_factory=list)
    closed: bool = False  # its last delta was handed out


@dataclass(eq=False)
class Slot:
    seq: int                                          # the llama.cpp sequence id (and KV stream)
    tokens: list[int] = field(default_factory=list)   # the tokens its cells hold, positions 0.. (its cache)
    job: "Job | None" = None
    last_used: int = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return int(np.argmin(np.asarray(a[:n]) == np.asarray(b[:n])))


@dataclass(eq=False)
class Job:
    """One request. Generation: n samples of `prompt` (sample i seeded with seed + i). Readout (`readout` set
    to (layers, norm), n = 1): the latent rows of the prompt's last token, no generation."""

    prompt: list[int]
    n: int = 1
    max_tokens: int | None = None
    spec: Any = None
    seed: int = 0
    # makes each sample's text stream (led_local.textstream.TextStream: UTF-8, stop strings, hold-back);
    # None: the deltas carry no text (a diagnostic that reads tokens only)
    text: Callable[[], Any] | None = None
    trace: bool = False
    logprobs: int | None = None  # hand out each token's log-probability and this many alternatives
    readout: tuple[tuple[int, ...], bool] | None = None
    # a diagnostic's view of each step: the blocks (and lens) to read out besides what the sampler needs,
    # and a callback given the output row and those blocks' rows among the readout, before each sample
    watch: tuple[tuple[int, ...], bool] | None = None
    observe: Callable[[int, list[int]], None] | None = None
    reuse: bool = True        # may start from a cached prefix

    # cells of the shared pool: reserved at admission (see the module's docstring) and held so far
    reserve: int = 0
    held: int = 0

    # filled by the scheduler
    usage: dict = field(default_factory=dict)
    seqs: list[_Sequence] = field(default_factory=list)
    samplers: NativeSamplers | None = None
    needs: tuple[tuple[int, ...], bool, bool] = ((), False, False)
    latent_index: list[int] = field(default_factory=list)
    watch_index: list[int] = field(default_factory=list)
    prefilled: int = 0        # prompt tokens whose cells sample 0's slot holds
    prompt_row: int | None = None
    cached_tokens: int = 0
    result: Any = None        # a readout's arrays
    pending: deque = field(default_factory=deque)
    finished: bool = False
    cancelled: bool = False
    error: BaseException | None = None
    notify: Callable[[], None] | None = None  # called (under the lock) when results or the end arrive

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        self.seqs = [_Sequence(index=i, seed=(self.seed + i) & 0xFFFFFFFF,
                               text=self.text() if self.text is not None else None) for i in range(self.n)]
        n_prompt = len(self.prompt)
        self.usage.update(prompt_tokens=n_prompt, completion_tokens=0, total_tokens=n_prompt,
                          prompt_tokens_details={"cached_tokens": 0})

    def drain(self) -> tuple[list[Delta], bool]:
        """The deltas handed out since the last drain, and whether they are the last (safe from any thread:
        a step appends a job's last delta before it marks the job finished)."""
        finished = self.finished
        items = []
        while self.pending:
            items.append(self.pending.popleft())
        return items, finished

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    @property
    def slots(self) -> list[Slot]:
        return [s.slot for s in self.seqs if s.slot is not None]

    @property
    def prefilling(self) -> bool:
        return self.prompt_row is None


class _LatentSet:
    """What the decode graph hands out: the union of the blocks the jobs in flight need, in the order they
    were first asked for (so a sampler's row indices stay valid while others join), in-graph head logits
    if any job needs them, and one final-norm setting (jobs that need the other wait)."""

    def __init__(self) -> None:
        self.layers: list[int] = []
        self.with_logits = False
        self.norm = False
        self.users = 0

    def compatible(self, needs: tuple) -> bool:
        layers, _, norm = needs
        return not layers or self.users == 0 or norm == self.norm

    def add(self, needs: tuple) -> list[int]:
        layers, with_logits, norm = needs
        if not layers:
            return []
        if self.users == 0:
            self.norm = norm
        self.users += 1
        self.with_logits = self.with_logits or with_logits
        for il in layers:
            if il not in self.layers:
                self.layers.append(il)
        return [self.layers.index(il) for il in layers]

    def remove(self, needs: tuple) -> bool:
        """Returns whether the readout is now off."""
        if needs[0]:
            self.users -= 1
            if self.users == 0:
                self.layers, self.with_logits, self.norm = [], False, False
                return True
        return False


class SamplingTooCostly(ValueError):
    """A request whose sampling (its grammar, mostly) costs more per token than the scheduler allows."""
    param = "grammar"


class Scheduler:
    def __init__(self, engine: Engine, prefix_cache: bool = True) -> None:
        self.engine = engine
        self.prefix_cache = prefix_cache
        self.lock = engine.lock  # direct users of the context (embeddings, state, tests) exclude steps too
        # submitting and cancelling never wait for a step (an event loop calls them): jobs arrive through
        # the inbox, cancellation is a flag, and the wakeup tells an idle driver
        self.inbox: deque[Job] = deque()
        self.wakeup = threading.Event()
        self.slots = [Slot(seq=i) for i in range(engine.n_seq_max)]
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.latent = _LatentSet()
        self.capacity = engine.n_ctx()    # cells of the pool, shared by the slots
        self.decodes = 0                 # llama_decode calls so far (how much the jobs shared them)
        # seconds one token's sampling may take (a costly grammar); a job over it ends with SamplingTooCostly
        # after that token, so the others' streams go on (None: no limit; the server sets one)
        self.max_sample_seconds: float | None = None
        self._clock = itertools.count(1)

    # --- the public side ----------------------------------------------------------------------------------

    def check(self, job: Job) -> None:
        """The errors a job would meet at admission, raised now (at the call, before anything runs)."""
        if self.engine.embedding:
            raise ValueError("this Llama was opened with embedding=True, which computes embeddings only; open "
                             "another Llama without it to generate or read latent states")
        if job.n > len(self.slots):
            raise ValueError(f"n={job.n} exceeds this Llama's n_seq_max={len(self.slots)}; "
                             f"create Llama(..., n_seq_max={job.n})")
        if len(job.prompt) + (1 if job.readout is None else 0) > self.capacity:
            raise ValueError(
                f"the prompt has {len(job.prompt)} tokens, which leaves no room to generate in the context window "
                f"(n_ctx={self.capacity}); shorten it or create Llama(..., n_ctx=larger)")

    def require_idle(self, what: str) -> None:
        with self.lock:
            if self.inbox or self.waiting or self.running:
                raise RuntimeError(f"{what} needs every request of this Llama finished first")

    def submit(self, job: Job) -> Job:
        self.check(job)
        self.engine.check_open()
        self.inbox.append(job)
        self.wakeup.set()
        return job

    def cancel(self, job: Job) -> None:
        """Stop a job at the next step (a consumer that went away); its slots keep their cells as cache."""
        job.cancelled = True
        self.wakeup.set()

    @property
    def queued(self) -> int:
        """Jobs waiting for slots."""
        return len(self.inbox) + len(self.waiting)

    def results(self, job: Job) -> Iterator[Delta]:
        """The job's deltas as they come, running steps in this thread while it waits for them."""
        try:
            while True:
                with self.lock:
                    while not job.pending and not job.finished:
                        self.step()
                items, finished = job.drain()
                yield from items
                if finished:
                    job.raise_error()
                    return
        finally:
            if not job.finished:
                self.cancel(job)

    def run(self, job: Job) -> Job:
        """Submit and run a job to its end; returns it (deltas consumed, result and usage filled)."""
        for _ in self.results(self.submit(job)):
            pass
        return job

    def drive(self, stop: threading.Event) -> None:
        """Run steps whenever there is work, until `stop` is set (the server's thread). The lock is let go
        between steps."""
        while not stop.is_set():
            if not (self.inbox or self.waiting or self.running):
                self.wakeup.wait(timeout=0.5)
                self.wakeup.clear()
                continue
            with self.lock:
                self.step()

    def clear(self) -> None:
        """Forget every cached prefix: the KV cache was cleared. Jobs in flight lost their cells and fail."""
        with self.lock:
            for job in list(self.running):
                job.error = RuntimeError("the context was reset while this request was running")
                self._finish(job, None)
            for slot in self.slots:
                slot.tokens = []

    # --- one step -----------------------------------------------------------------------------------------

    def step(self) -> None:
        with self.lock:
            self.engine.check_open()
            while self.inbox:
                self.waiting.append(self.inbox.popleft())
            self._admit()
            for job in list(self.running):
                if job.cancelled:
                    self._finish(job, "cancelled")
                elif not job.prefilling and job.readout is None:
                    try:
                        self._sample(job)
                    except Exception as e:  # this job's sampler failed: it ends, the others go on
                        job.error = e
                        self._finish(job, None)
            entries, owners = self._batch()
            if entries:
                self._decode(entries, owners)

    def _admit(self) -> None:
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                job.finished = True
                self._notify(job)
                continue
            free = [s for s in self.slots if s.job is None]
            if len(free) < job.n:
                return  # first come, first served: later jobs wait behind it
            try:
                needs = self._needs(job)
            except Exception as e:
                self.waiting.popleft()
                job.error, job.finished = e, True
                self._notify(job)
                continue
            if not self.latent.compatible(needs):
                return
            first, rest, keep = self._choose_slots(job, free)
            job.reserve = self._reservation(job)
            if not self._make_room(job.reserve, mine=[first, *rest], freed=self._cells_freed(first, rest)):  # (keep < prompt <= reserve)
                return  # it waits until running jobs end (it fits alone: check() refused any that cannot)
            self.waiting.popleft()
            try:
                self._start(job, first, rest, keep, needs)
            except Exception as e:
                job.error = e
                self._finish(job, None)

    def _needs(self, job: Job) -> tuple[tuple[int, ...], bool, bool]:
        """(blocks, in-graph head logits, final norm) the job needs from the decode graph."""
        if job.readout is not None:
            return (job.readout[0], True, job.readout[1])
        layers, with_logits, norm = job.spec.graph_needs(self.engine)
        if job.watch is not None:
            if layers and norm != job.watch[1]:
                raise ValueError("a watched readout must use the sampler's own lens")
            layers = layers + tuple(il for il in job.watch[0] if il not in layers)
            norm = job.watch[1]
        return (layers, with_logits, norm)

    # --- the pool of KV cells -----------------------------------------------------------------------------

    def _reservation(self, job: Job) -> int:
        """Cells the job may need: its prompt, and each sample's decoded tokens (max_tokens - 1, or none
        reserved without max_tokens), at most the pool."""
        if job.readout is not None or job.max_tokens is None:
            return len(job.prompt)
        per_sample = min(max(job.max_tokens - 1, 0), self.capacity - len(job.prompt))
        return min(self.capacity, len(job.prompt) + job.n * per_sample)

    def _free_cells(self) -> int:
        """Cells neither reserved by a running job nor holding an idle slot's cache. Counting each slot's
        tokens on its own over-counts cells that samples share, so this never promises cells llama.cpp lacks."""
        idle = sum(len(s.tokens) for s in self.slots if s.job is None)
        return self.capacity - idle - sum(max(j.reserve, j.held) for j in self.running)

    @staticmethod
    def _cells_freed(first: Slot, rest: list[Slot]) -> int:
        return len(first.tokens) + sum(len(s.tokens) for s in rest)

    def _make_room(self, cells: int, mine: list[Slot] = (), freed: int = 0) -> bool:
        """Evict idle slots' caches (least recently used first, never `mine`) until `cells` fit; `freed`:
        cached cells that taking `mine` releases. Returns whether they fit."""
        victims = sorted((s for s in self.slots if s.job is None and s not in mine and s.tokens),
                         key=lambda s: s.last_used)
        while self._free_cells() + freed < cells:
            if not victims:
                return False
            self._truncate(victims.pop(0), 0)
        return True

    def _choose_slots(self, job: Job, free: list[Slot]) -> tuple[Slot, list[Slot], int]:
        # sample 0: the free slot whose cache shares the longest prefix with the prompt (then the least
        # recently used); the others: the least recently used of the rest
        def reuse(slot: Slot) -> int:
            return common_prefix(slot.tokens, job.prompt) if self.prefix_cache and job.reuse else 0

        first = max(free, key=lambda s: (reuse(s), -s.last_used))
        rest = sorted((s for s in free if s is not first), key=lambda s: s.last_used)[: job.n - 1]
        keep = min(reuse(first), len(job.prompt) - 1)  # the last prompt token is evaluated again: its row
        return first, rest, keep

    def _start(self, job: Job, first: Slot, rest: list[Slot], keep: int, needs: tuple) -> None:
        self._truncate(first, keep)
        for slot in rest:
            self._truncate(slot, 0)
        for seq, slot in zip(job.seqs, [first, *rest]):
            seq.slot, slot.job = slot, job
        job.needs = needs
        job.latent_index = self.latent.add(needs)
        if job.watch is not None:
            job.watch_index = [self.latent.layers.index(il) for il in job.watch[0]]
        job.prefilled = job.cached_tokens = job.held = keep
        job.usage["prompt_tokens_details"]["cached_tokens"] = keep
        if job.readout is None:
            n_own = len(job.spec.graph_needs(self.engine)[0])  # the sampler's blocks come first
            job.samplers = NativeSamplers(self.engine, job.spec, [s.seed for s in job.seqs],
                                          job.latent_index[:n_own] or None)
        self.running.append(job)

    def _truncate(self, slot: Slot, keep: int) -> None:
        # always told to llama.cpp: a direct decode (tests, the entropy profile) may have written the slot
        self.engine.remove_cells(slot.seq, keep)
        del slot.tokens[keep:]

    def _sample(self, job: Job) -> None:
        n_prompt, engine = len(job.prompt), self.engine
        for s in job.seqs:
            if s.finish_reason is not None or s.row is None:
                continue
            if job.observe is not None:
                job.observe(s.row, job.watch_index)
            started = time.perf_counter()
            token = job.samplers.sample(s.index, s.row)
            spent = time.perf_counter() - started
            if self.max_sample_seconds is not None and spent > self.max_sample_seconds:
                raise SamplingTooCostly(f"one token of this request took {spent:.1f} s to sample (the limit is "
                                        f"{self.max_sample_seconds:g} s): its grammar or response_format is too "
                                        "costly; simplify it")
            if job.trace:
                s.pending_trace.append({"token": token, **(job.samplers.trace(s.index) or {})})
            if job.logprobs is not None and not engine.is_eog(token):
                s.pending_logprobs.append(job.samplers.logprobs(s.index, s.row, token, job.logprobs))
            s.row = None
            if engine.is_eog(token):
                s.finish_reason = "stop"
            else:
                s.tokens.append(token)
                job.usage["completion_tokens"] += 1
                if s.text is not None and s.text.feed(token):
                    s.finish_reason = "stop"  # a stop string
                if s.finish_reason is None and job.max_tokens is not None and len(s.tokens) >= job.max_tokens:
                    s.finish_reason = "length"
                if s.finish_reason is None and not self._cell_for(job):
                    s.finish_reason = "length"  # the pool has no cell left for this token
            if s.finish_reason is None:
                s.pending_token = token
                job.held += 1
        job.usage["total_tokens"] = n_prompt + job.usage["completion_tokens"]
        self._emit(job)
        if all(s.finish_reason is not None for s in job.seqs):
            self._finish(job, None)

    def _cell_for(self, job: Job) -> bool:
        """Whether one more token of the job has a cell: within its reservation, or else a cell no one has
        reserved (evicting idle caches for it)."""
        if job.held < job.reserve:
            return True
        return job.held < self.capacity and self._make_room(1)

    def _emit(self, job: Job) -> None:
        for s in job.seqs:
            if s.closed:
                continue
            text = s.text.delta(final=s.finish_reason is not None) if s.text is not None else ""
            if text or s.finish_reason is not None or (job.trace and s.pending_trace) or s.pending_logprobs:
                job.pending.append(Delta(s.index, text, s.finish_reason,
                                         s.pending_trace if job.trace else None,
                                         s.pending_logprobs if job.logprobs is not None else None))
                s.pending_trace, s.pending_logprobs = [], []
            s.closed = s.finish_reason is not None
        self._notify(job)

    def _finish(self, job: Job, reason: str | None) -> None:
        """End a job: unfinished samples end with `reason`, its slots are freed (keeping their cells)."""
        if reason is not None and job.readout is None and not job.prefilling:
            for s in job.seqs:
                if s.finish_reason is None:
                    s.finish_reason = reason
            self._emit(job)
        if job in self.running:
            self.running.remove(job)
        now = next(self._clock)
        for slot in job.slots:
            slot.job, slot.last_used = None, now
        for s in job.seqs:
            s.slot = None
        if job.samplers is not None:
            job.samplers.close()
            job.samplers = None
        if self.latent.remove(job.needs):
            self.engine.set_latents((), False, False)  # the graph is upstream's again until a job needs more
        job.needs = ((), False, False)
        job.finished = True
        self._notify(job)

    def _notify(self, job: Job) -> None:
        if job.notify is not None:
            job.notify()

    # --- the batch ----------------------------------------------------------------------------------------

    def _batch(self) -> tuple[list[tuple[int, int, int, bool]], list[tuple[Job, _Sequence | None]]]:
        entries: list[tuple[int, int, int, bool]] = []
        owners: list[tuple[Job, _Sequence | None]] = []
        for job in self.running:
            for s in job.seqs:
                if s.pending_token is not None:
                    entries.append((s.pending_token, len(job.prompt) + len(s.tokens) - 1, s.slot.seq, True))
                    owners.append((job, s))
        budget = self.engine.n_batch - len(entries)
        for job in self.running:
            if budget <= 0:
                break
            if not job.prefilling:
                continue
            first = job.seqs[0].slot
            end = min(len(job.prompt), job.prefilled + budget)
            job.held += end - job.prefilled
            for pos in range(job.prefilled, end):
                last = pos == len(job.prompt) - 1
                entries.append((job.prompt[pos], pos, first.seq, last))
                owners.append((job, None) if last else (job, "prompt"))
            budget -= end - job.prefilled
        return entries, owners

    def _decode(self, entries: list, owners: list) -> None:
        try:
            self.engine.set_latents(self.latent.layers, self.latent.with_logits, self.latent.norm)
            self.decodes += 1
            outputs = iter(self.engine.decode(entries))
        except Exception as e:  # the jobs in this batch end with the error; what their slots hold is unknown
            for job in {job for job, _ in owners}:
                for slot in job.slots:
                    self._truncate(slot, 0)
                job.error = job.error or e  # (a job ended on purpose keeps its own reason: a shutdown's)
                self._finish(job, None)
            return
        for (token, pos, seq_id, wants), (job, who) in zip(entries, owners):
            self.slots[seq_id].tokens.append(token)
            if isinstance(who, _Sequence):
                who.pending_token, who.row = None, next(outputs)
            elif who == "prompt":
                job.prefilled += 1
            else:  # the prompt's last token: its row is where every sample starts
                job.prefilled += 1
                job.prompt_row = next(outputs)
                self._prompt_done(job)

    def _prompt_done(self, job: Job) -> None:
        first = job.seqs[0].slot
        if job.readout is not None:
            try:
                job.result = self._read_rows(job)
            except Exception as e:
                job.error = e
            self._finish(job, None)
            return
        n_prompt = len(job.prompt)
        for s in job.seqs[1:]:
            # another stream: llama.cpp copies the cells (whole streams only), before the next decode
            self.engine.copy_sequence(first.seq, s.slot.seq)
            s.slot.tokens = list(first.tokens[:n_prompt])
        for s in job.seqs:
            s.row = job.prompt_row

    def _read_rows(self, job: Job) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hidden, logits = self.engine.latent_rows(job.prompt_row)
        return hidden[job.latent_index].copy(), logits[job.latent_index].copy(), self.engine.logits(job.prompt_row)

    # --- for diagnostics and state ------------------------------------------------------------------------

    def latent_logits(self, row: int, index: list[int]) -> np.ndarray:
        """Output `row`'s head logits over the readout's blocks at `index` (a watching job's `watch_index`),
        for a job's `observe` callback."""
        return self.engine.latent_rows(row)[1][index]

    def cached_prefixes(self) -> list[list[int]]:
        """The tokens each slot's cells hold (for Llama.save_state)."""
        return [list(s.tokens) for s in self.slots]

    def restore_prefixes(self, prefixes: list[list[int]]) -> None:
        """Say what each slot's cells hold after the engine's state was restored (Llama.load_state)."""
        for slot, tokens in zip(self.slots, prefixes):
            slot.tokens = list(tokens)
