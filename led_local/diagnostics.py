"""The entropy profile of docs/led.md ("When it helps"): for each generated token, the normalized entropy
H(softmax(W . h_i / T)) / ln V of every block i and of the final layer, averaged over tokens, in both
lenses: raw states (what LED reads) and states through the final norm (what `latent_norm` reads).

LED can only help where the blocks it reads sit above the final layer in this profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .generate import chat_prompt_tokens
from .sampling import StandardSampling
from .scheduler import Job


@dataclass(frozen=True)
class EntropyProfile:
    blocks: list[int]
    raw: np.ndarray       # [n_layer] mean normalized entropy, raw lens
    normed: np.ndarray    # [n_layer] mean normalized entropy, normed lens
    final: float          # the final layer's
    mean_top1: float      # the final layer's mean top-1 probability
    tokens: int           # generated tokens averaged over
    temperature: float
    led_blocks: list[int]  # the blocks LED reads at d = 8

    @property
    def has_reservoir(self) -> bool:
        """LED's blocks (raw lens, as LED reads them by default) are on average more entropic than the final layer."""
        return float(np.mean(self.raw[self.led_blocks])) > self.final

    def verdict(self) -> str:
        led = float(np.mean(self.raw[self.led_blocks]))
        normed = float(np.mean(self.normed[self.led_blocks]))
        span = f"blocks {self.led_blocks[-1]}-{self.led_blocks[0]}"
        if self.has_reservoir:
            return (f"This model HAS the latent entropy reservoir LED needs: the {span} that LED reads average "
                    f"{led:.3f} (raw lens) against {self.final:.3f} for the final layer.")
        hint = (f" The normed lens ({normed:.3f}) is above the final layer: try --latent-norm."
                if normed > 1.5 * self.final else "")
        return (f"This model shows NO latent entropy reservoir: the {span} that LED reads average {led:.3f} (raw "
                f"lens) against {self.final:.3f} for the final layer, so LED is unlikely to help it.{hint}")


def normalized_entropy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """H(softmax(z / T)) / ln V for each row of logits [rows, V] (T = 0 reads as 1: no division)."""
    x = logits.astype(np.float64) / (temperature if temperature > 0 else 1.0)
    x = np.where(np.isnan(x), -np.inf, x)
    m = x.max(axis=-1, keepdims=True)
    p = np.exp(x - m)
    s = p.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        h = np.log(s[..., 0]) - np.where(p > 0, p * (x - m), 0.0).sum(axis=-1) / s[..., 0]
    return h / np.log(logits.shape[-1])


def _profile_pass(llama, prompts: list[list[dict]], norm: bool, max_tokens: int, temperature: float, seed: int):
    """One generation per prompt on the Llama's scheduler, reading every block through the head (on demand,
    per token) before each token is sampled."""
    n_layer, n_vocab = llama.n_layer(), llama.n_vocab()
    sums, totals = np.zeros(n_layer), {"final": 0.0, "top1": 0.0, "count": 0}
    spec = StandardSampling(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0)

    def observe(row: int, index: list[int]) -> None:
        nonlocal sums
        final = llama.engine.logits(row)
        lat = llama.scheduler.latent_logits(row, index)
        sums += normalized_entropy(lat, temperature)
        totals["final"] += float(normalized_entropy(final[None], temperature)[0])
        z = final.astype(np.float64) / (temperature or 1.0)
        totals["top1"] += float(1.0 / np.exp(z - z.max()).sum())
        totals["count"] += 1

    for p_index, messages in enumerate(prompts):
        tokens = (chat_prompt_tokens(llama, messages) if llama.chat_template()
                  else llama.tokenize(messages[-1]["content"], special=True))
        # no cached prefix: both lenses must see the very same generations
        job = Job(prompt=tokens, max_tokens=max_tokens, spec=spec, seed=seed + p_index,
                  watch=(tuple(range(n_layer)), norm), observe=observe, reuse=False)
        llama.scheduler.run(job)
    return sums, totals["final"], totals["top1"], totals["count"]


def entropy_profile(llama, prompts: list[list[dict]], max_tokens: int = 64, temperature: float = 0.6,
                    seed: int = 0) -> EntropyProfile:
    """Both lenses over the same generations (same seeds; the readout leaves the final logits bit-identical)."""
    raw, final_sum, top1_sum, count = _profile_pass(llama, prompts, False, max_tokens, temperature, seed)
    normed, _, _, count_n = _profile_pass(llama, prompts, True, max_tokens, temperature, seed)
    if count == 0 or count_n != count:
        raise RuntimeError("the two passes of the entropy profile did not generate the same tokens")
    n = llama.n_layer()
    return EntropyProfile(blocks=list(range(n)), raw=raw / count, normed=normed / count, final=final_sum / count,
                          mean_top1=top1_sum / count, tokens=count, temperature=temperature,
                          led_blocks=[n - 1 - j for j in range(1, min(8, n))])


def plot_profile(profile: EntropyProfile, path, title: str = "") -> None:
    from .plots import new_figure, save_figure

    fig, ax = new_figure(6, 3.5)
    lo, hi = min(profile.led_blocks), max(profile.led_blocks)
    ax.axvspan(lo - 0.5, hi + 0.5, color="tab:orange", alpha=0.15, label="blocks LED reads (d=8)")
    ax.plot(profile.blocks, profile.raw, marker="o", ms=3, label="raw lens (LED default)")
    ax.plot(profile.blocks, profile.normed, marker="s", ms=3, label="normed lens (latent_norm)")
    ax.axhline(profile.final, color="k", ls="--", lw=1, label="final layer")
    ax.set_xlabel("block")
    ax.set_ylabel("normalized entropy")
    ax.set_title(title or f"entropy profile, T={profile.temperature}, {profile.tokens} tokens")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


# --- the verdict, remembered per model file (chat's note about LED reads it) --------------------------------

def _verdict_file(model_path) -> "Path":
    from pathlib import Path

    from .models import cache_dir

    p = Path(model_path)
    return cache_dir().parent / "profiles" / f"{p.stem}-{p.stat().st_size}.json"


def remember_profile(model_path, profile: EntropyProfile) -> None:
    """Keep what the profile found for this model file (name and size), for `led-local chat`'s note."""
    import json
    import os
    import tempfile

    path = _verdict_file(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"has_reservoir": profile.has_reservoir, "led_blocks_raw": float(np.mean(profile.raw[profile.led_blocks])),
            "final": float(profile.final), "tokens": profile.tokens, "temperature": profile.temperature}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profile-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def measured_reservoir(model_path, registry_key: str | None = None) -> dict | None:
    """What a profile of this model found: the one `led-local entropy-profile` last kept for this file, else
    the registry's measurement for a registry model, else None (never measured)."""
    import json

    try:
        return json.loads(_verdict_file(model_path).read_text())
    except (OSError, ValueError):
        pass
    from .models import REGISTRY

    entry = REGISTRY.get(registry_key or "")
    if entry is not None and entry.latent_reservoir is not None:
        return {"has_reservoir": entry.latent_reservoir}
    return None

