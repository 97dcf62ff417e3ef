"""The devices this build of llama.cpp can put layers on (ggml's registered backends), for users and for the
GPU check: which GPU `n_gpu_layers` fills, and how much of its memory a loaded model took."""

from __future__ import annotations

from dataclasses import dataclass

from . import _native
from ._native import ffi

# enum ggml_backend_dev_type of the pinned ggml-backend.h, in order
_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")


@dataclass(frozen=True)
class Device:
    name: str            # ggml's name: "CPU", "CUDA0", "Metal", "RPC[host:port]", ...
    description: str     # the hardware, as the backend reports it
    kind: str            # "cpu", "gpu" (its own memory), "igpu" (host memory), "accel" (BLAS, AMX), "meta"
    memory_free: int     # bytes, as the backend reports them now
    memory_total: int


def devices() -> list[Device]:
    """Every device of this build, in llama.cpp's order (GPUs take layers in this order after RPC servers')."""
    lib = _native.lib()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ffi.new("size_t *"), ffi.new("size_t *")
        lib.ggml_backend_dev_memory(dev, free, total)
        kind = lib.ggml_backend_dev_type(dev)
        out.append(Device(name=ffi.string(lib.ggml_backend_dev_name(dev)).decode(),
                          description=ffi.string(lib.ggml_backend_dev_description(dev)).decode(errors="replace"),
                          kind=_KINDS[kind] if 0 <= kind < len(_KINDS) else f"type {kind}",
                          memory_free=int(free[0]), memory_total=int(total[0])))
    return out


def gpu_offload_supported() -> bool:
    """Whether `n_gpu_layers` has a local GPU to fill (llama-cpp-python's llama_supports_gpu_offload()): a GPU
    or integrated GPU is registered. (`rpc_servers` places layers on other machines' devices without one.)"""
    return any(d.kind in ("gpu", "igpu") for d in devices())
