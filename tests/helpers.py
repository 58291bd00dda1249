"""Helpers shared by test modules (fixtures stay in conftest.py)."""

from __future__ import annotations

import os
import select
import subprocess
import sys

import pytest
from conftest import ROOT


def popen_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m featcache ARGS`` started in the background, pipes for stdout and stderr."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "featcache", *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 300) -> str:
    """The next stderr line of ``proc``, which must start with ``prefix`` (else the test fails)."""
    ready, _, _ = select.select([proc.stderr], [], [], timeout)
    line = proc.stderr.readline() if ready else ""
    if not line.startswith(prefix):
        proc.kill()
        pytest.fail(f"expected {prefix!r} on stderr, got: {line}{proc.stderr.read()}")
    return line


def paused_cli(args: list[str], point: str, n: int = 1, env: dict | None = None) -> subprocess.Popen:
    """A real CLI run stopped at the n-th arrival at a fault point (featcache.faults): no race with its progress.

    Send SIGUSR1 to let it go on, SIGINT / SIGKILL to interrupt it there."""
    proc = popen_cli(*args, env={**(env or {}), "FEATCACHE_FAULT": f"{point}:{n}:pause"})
    wait_for_line(proc, f"featcache: paused at {point} #{n}")
    return proc
