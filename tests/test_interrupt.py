"""Ctrl-C during a run: KeyboardInterrupt in the caller, and every worker gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

SCRIPT = """
import os, sys, time, pickpool

def slow(x):
    print("running", os.getpid(), flush=True)
    time.sleep(30)
    return x

try:
    pickpool.map(slow, range(100), model=sys.argv[1], workers=2)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""


# Threads cannot be interrupted: today a Ctrl-C there waits for the running items to return
# (issue 5 decides between waiting and abandoning them).
@pytest.mark.parametrize("model", ["processes"])
def test_ctrl_c_stops_the_run_and_its_workers(model: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, model],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until a worker runs an item
        assert line.startswith("running"), line
        workers = {int(line.split()[1])}
        tree = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert workers <= tree
    assert "interrupted" in out
    assert proc.returncode == 3
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in tree
    )
