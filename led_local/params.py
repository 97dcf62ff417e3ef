"""The one table of sampling parameters. Every place that names one derives from it: the sampler settings'
defaults and checks (sampling.py: `StandardSampling`, `LEDConfig`), the server's request fields and their
bounds (server.py), the `led-local` command's options (commands/common.py), and `create_*`'s defaults
(generate.py keeps its explicit, discoverable signatures; tests/test_params.py checks they match).

Fronts differ on purpose, and the table says where: `Llama.create_*` has llama-cpp-python's defaults; a
server request that leaves a field out asks for nothing (OpenAI's neutral values, `api_default`) and
OpenAI's documented ranges bound it (`api_lo`/`api_hi`); the command line defaults to the paper's setting
(`cli`, docs/led.md "Defaults": LED, or its "standard" baseline at temperature 0.6, top-p 0.95, top-k 20).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

INT32_MAX = 2**31 - 1
MAX_LED_K = 1 << 20  # checked against the model's vocabulary when a model is at hand

SAME: Any = object()  # "as the Python API": the default or bound of the column to the left
STANDARD, LED, DOLA = "standard", "led", "dola"
SAMPLERS = (STANDARD, LED, DOLA)


@dataclass(frozen=True)
class Param:
    name: str                      # create_*'s keyword (llama-cpp-python's name); LED's: LEDConfig's field
    kind: type                     # float, int or bool
    default: Any                   # create_*'s default (llama-cpp-python's; LED's: the paper's)
    help: str
    samplers: tuple[str, ...]      # the samplers that read it
    lo: float | None = None        # the Python API's bounds (inclusive; None: open on that side)
    hi: float | None = None
    lo_exclusive: bool = False     # lo itself is refused (a penalty of 0 would divide by 0)
    api: str | None = None         # the server's field when it is not `name` (llama-server's spelling)
    api_default: Any = SAME        # a server request that leaves it out
    api_lo: Any = SAME             # the server's bounds, where OpenAI documents tighter ones
    api_hi: Any = SAME
    cli: Any = None                # the command's default (None: no option; the Python default is used)
    cli_flag: str | None = None    # the command's option when it is not --NAME

    @property
    def field(self) -> str:
        return self.api or self.name

    @property
    def request_default(self) -> Any:
        return self.default if self.api_default is SAME else self.api_default

    def api_bounds(self) -> tuple[float | None, float | None]:
        return (self.lo if self.api_lo is SAME else self.api_lo, self.hi if self.api_hi is SAME else self.api_hi)

    def check(self, value: Any, label: str | None = None) -> Any:
        """`value` as this parameter's kind within the Python API's bounds, else a TypeError/ValueError that
        names it (as `label`, e.g. "LEDConfig.d")."""
        name = label or self.name
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
                rng = f"a positive integer (at most {self.hi})" if self.lo == 1 else f"an integer in [{self.lo}, {self.hi}]"
                raise ValueError(f"{name} must be {rng}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        v = float(value)
        below = self.lo is not None and (v <= self.lo if self.lo_exclusive else v < self.lo)
        if not math.isfinite(v) or below or (self.hi is not None and v > self.hi):
            if self.lo_exclusive:
                rng = f" > {self.lo}"
            else:
                rng = f" in [{self.lo}, {self.hi}]" if self.hi is not None else (f" >= {self.lo}" if self.lo is not None else "")
            raise ValueError(f"{name} must be a finite number{rng}, got {value!r}")
        return v


_CHAINS = (STANDARD, DOLA)

PARAMS: tuple[Param, ...] = (
    Param("temperature", float, 0.8, "divides the logits (0: greedy)", SAMPLERS, lo=0.0,
          api_default=1.0, api_hi=2.0, cli=0.6, cli_flag="--temperature/-t"),
    # truncations: the ordinary chain's, which LED's own candidates replace
    Param("top_k", int, 40, "keep the k most likely tokens (<= 0: all)", _CHAINS, lo=-INT32_MAX, hi=INT32_MAX,
          api_default=0, api_lo=0, cli=20),
    Param("top_p", float, 0.95, "keep the most likely tokens up to this much probability", _CHAINS, lo=0.0, hi=1.0,
          api_default=1.0, cli=0.95),
    Param("min_p", float, 0.05, "drop tokens below this share of the best one's probability", _CHAINS,
          lo=0.0, hi=1.0, api_default=0.0),
    Param("typical_p", float, 1.0, "locally typical sampling (1: off)", _CHAINS, lo=0.0, hi=1.0),
    Param("mirostat_mode", int, 0, "Mirostat 1 or 2 after the temperature (0: off)", _CHAINS, lo=0, hi=2,
          api="mirostat"),
    Param("mirostat_tau", float, 5.0, "Mirostat's target surprise", _CHAINS, lo=0.0),
    Param("mirostat_eta", float, 0.1, "Mirostat's learning rate", _CHAINS, lo=0.0),
    # constraints: what changes the final logits before any sampler picks (LED's included)
    Param("repeat_penalty", float, 1.0, "divide repeated tokens' logits (1: off)", SAMPLERS, lo=0.0,
          lo_exclusive=True),
    Param("frequency_penalty", float, 0.0, "lower tokens by how often they occurred", SAMPLERS, lo=-2.0, hi=2.0),
    Param("presence_penalty", float, 0.0, "lower tokens that occurred", SAMPLERS, lo=-2.0, hi=2.0),
)

# LED's settings (LEDConfig; a request's `led` object; the command's LED options)
LED_PARAMS: tuple[Param, ...] = (
    Param("d", int, 8, "depths: the final layer and the d-1 blocks below the last", (LED,), lo=1, hi=4096, cli=8,
          cli_flag="--d"),
    Param("k", int, 8, "candidates from the final layer", (LED,), lo=1, hi=MAX_LED_K, cli=8,
          cli_flag="--led-k/--k"),
    Param("latent_norm", bool, False, "pass latent states through the final norm", (LED,), cli=False),
    Param("exploit", bool, True, "the coin of step 8 (off: always explore)", (LED,), cli=True),
    Param("think_only", bool, True, "stop exploring once the model closes </think>", (LED,), cli=True),
)

BY_NAME = {p.name: p for p in PARAMS}
LED_BY_NAME = {p.name: p for p in LED_PARAMS}
TRUNCATIONS = ("top_k", "top_p", "min_p", "typical_p", "mirostat_mode", "mirostat_tau", "mirostat_eta")
PENALTIES = ("repeat_penalty", "frequency_penalty", "presence_penalty")


def defaults(names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """create_*'s defaults of these parameters (all of the table's by default)."""
    return {p.name: p.default for p in PARAMS if names is None or p.name in names}
