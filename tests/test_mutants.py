"""The mutation check (tests/mutants.py) as part of the suite: every planted bug must be caught."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.upstream]


def test_every_planted_bug_is_caught():
    script = Path(__file__).with_name("mutants.py")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=3600)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "SURVIVED" not in r.stdout and " planted bugs caught" in r.stdout
