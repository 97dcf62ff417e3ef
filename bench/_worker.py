"""Every bench measures in a fresh process (a cold model and allocator each time, one side at a time): a
worker's last line of output is its JSON result."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_worker(args: list[str], upstream=None, stdin: str | None = None) -> dict:
    """Run `python <args>` (a script file, or -c and its source, then its arguments) and return its last
    stdout line as JSON. `upstream`: the reference build (tests/upstream_build.ensure_upstream), whose
    llama-cpp-python the worker then imports; None: led-local as installed."""
    env = dict(os.environ)
    if upstream is not None:
        from upstream_build import upstream_env  # (tests/ is on sys.path in every bench script)

        env |= upstream_env(upstream)
    r = subprocess.run([sys.executable, *args], input=stdin, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"worker {' '.join(args[2:] if args[0] == '-c' else args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])
