"""Shared fixtures: tiny GGUF models written per session, the registry's smallest real model, and an
unpatched upstream llama.cpp build (cached) used as a reference."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "models"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import TinySpec, write_tiny_model  # noqa: E402  (models/tiny.py)

TINY_SPECS = {
    "llama-tied": TinySpec(arch="llama", tied=True),
    "llama-untied": TinySpec(arch="llama", tied=False, seed=1),
    "qwen2-untied-think": TinySpec(arch="qwen2", tied=False, think=True, seed=2),
    # a sharp final layer over flatter raw latents, the regime where LED's latent rows matter
    "qwen2-led": TinySpec(arch="qwen2", tied=False, think=True, seed=2, final_norm_scale=8.0),
    # an output bias (part of f, docs/led.md) that makes the model close its thinking now and then
    "qwen2-think-bias": TinySpec(arch="qwen2", tied=False, think=True, seed=3, think_bias=2.0),
    # never ends on its own (long generations for the server's disconnect test), and closes its thinking now
    # and then, so that every LED field the server takes changes what it generates
    "qwen2-no-eos": TinySpec(arch="qwen2", tied=False, seed=4, eog_bias=-40.0, think=True, think_bias=2.0),
    # qwen3's per-head q/k norms
    "qwen3-untied": TinySpec(arch="qwen3", tied=False, seed=5),
    # gemma2's final logit soft-capping: part of f (docs/led.md), so the latent rows must be capped too
    "gemma2-softcap": TinySpec(arch="gemma2", seed=6, logit_softcap=5.0),
    # 12 blocks: DoLa's "high" and "low" each give three candidate layers to choose among
    "llama-deep": TinySpec(arch="llama", tied=False, n_layer=12, seed=7),
    # fill-in-the-middle tokens (completion's `suffix`)
    "qwen2-fim": TinySpec(arch="qwen2", tied=False, seed=8, fim=True),
    # a thinking template (Qwen3's shape): answers' <think> sections come back as reasoning_content
    "qwen2-think-template": TinySpec(arch="qwen2", tied=False, seed=9, think=True, think_template=True),
}


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: write_tiny_model(root / f"{name}.gguf", spec) for name, spec in TINY_SPECS.items()}


@pytest.fixture(scope="session")
def tiny_path(tiny_paths) -> Path:
    return tiny_paths["llama-tied"]


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from led_local import models

    return models.pull("smollm2-135m", quiet=True)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    from led_local import models

    return models.pull("gemma3-270m", quiet=True)


@pytest.fixture(scope="session")
def qwen15_path() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct: the registry's model whose template has tools (1.1 GB, fetched once)."""
    from led_local import models

    return models.pull("qwen2.5-coder-1.5b", quiet=True)


@pytest.fixture(scope="session")
def upstream():
    """(PYTHONPATH entry, lib dir) of upstream llama-cpp-python on unpatched llama.cpp (built once, cached)."""
    from upstream_build import ensure_upstream

    return ensure_upstream()
