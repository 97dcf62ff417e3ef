"""One sample's text as its tokens arrive: UTF-8 assembled across tokens, cut at the first stop string, and
handed out in deltas that hold back any end that could still grow into a stop string.

The fronts (generate.py for `Llama` and the server) give the scheduler one `TextStream` per sample; the
scheduler only feeds it token ids and asks for the next delta, so the token loop stays free of text
(vLLM's split: stop strings and detokenizing live in the front end). A stream is used by one thread, the
one running the steps: stop strings must be checked before the next token is decoded, or a stopped
sample would spend one more token (and its usage would count it).
"""

from __future__ import annotations

import codecs
from typing import Callable


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string (not streamed yet)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class TextStream:
    """The text of one sample. `feed` each token; `delta` hands out what is new."""

    def __init__(self, token_bytes: Callable[[int], bytes], stops: list[str]) -> None:
        self.token_bytes = token_bytes
        self.stops = [s for s in stops if s]
        self.longest_stop = max((len(s) for s in self.stops), default=0)
        # a character split across tokens waits for its last byte; bytes that never form one become U+FFFD
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0      # characters handed out in deltas
        self.stopped = False  # a stop string ended it: the text is final (cut before the stop)
        self.closed = False   # its last delta was handed out

    def feed(self, token: int) -> bool:
        """Add one token's bytes. Returns whether a stop string now ends the text (it ends before the earliest
        one); tokens fed after that are ignored."""
        if self.stopped:
            return True
        before = len(self.text)
        self.text += self.decoder.decode(self.token_bytes(token))
        if self.stops:
            # only a stop that ends in the new text can be new: search from where the longest could start
            window = max(0, before - self.longest_stop + 1)
            hits = [p for p in (self.text.find(s, window) for s in self.stops) if p >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
        return self.stopped

    def delta(self, final: bool) -> str:
        """The text not handed out yet. `final` (the sample ended, for any reason): all of it, the held-back
        end and any unfinished character included; otherwise all but an end that a stop string could still
        claim."""
        if self.closed:
            return ""
        if final:
            if not self.stopped:
                self.text += self.decoder.decode(b"", final=True)
            end = len(self.text)
            self.closed = True
        else:
            end = len(self.text) - held_back(self.text, self.stops)
        out = self.text[self.emitted: end]
        self.emitted = max(self.emitted, end)
        return out
