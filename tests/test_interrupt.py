"""Ctrl-C during a run: KeyboardInterrupt in the caller, and every worker gone."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.helpers import python_script

SCRIPT = r"""
import asyncio, os, signal, sys, time, pickpool

# Ctrl-C raises KeyboardInterrupt, as in a program started from a terminal, even when this
# test runs in the background (a shell starts background jobs with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)

def slow(x):
    if x < 2:
        return x  # the first two come back at once
    os.write(1, b"running %d\n" % os.getpid())  # one write: lines from threads stay whole
    time.sleep(30)
    return x

async def aslow(x):
    if x < 2:
        return x
    os.write(1, b"running %d\n" % os.getpid())  # one write: lines from threads stay whole
    await asyncio.sleep(30)
    return x

async def blocks_loop(x):
    if x < 2:
        return x  # the first two come back at once
    os.write(1, b"running %d\n" % os.getpid())  # one write: lines from threads stay whole
    time.sleep(30)
    return x

fn = {"sync": slow, "async": aslow, "blocks-loop": blocks_loop}[sys.argv[2]]
results = pickpool.imap(fn, range(100), model=sys.argv[1], workers=2, chunksize=1)
received = []
try:
    for result in results:
        received.append(result)
        os.write(1, b"got %d\n" % result)
except KeyboardInterrupt:
    os.write(1, b"interrupted, kept %r\n" % received)  # one write: a worker's line stays out
    sys.exit(3)
"""

CASES = [
    (model, kind)
    for model in ("serial", "threads", "processes", "asyncio", "auto")
    for kind in ("sync", "async")
] + [("asyncio", "blocks-loop"), ("threads", "blocks-loop")]


@pytest.mark.parametrize(("model", "kind"), CASES)
def test_ctrl_c_stops_the_run_and_its_workers(model: str, kind: str) -> None:
    # Items that would run 30 s: the call must give control back within a few seconds,
    # raising KeyboardInterrupt, with every worker process gone. A thread cannot be killed:
    # one still running after a second's grace is abandoned, a daemon that cannot keep the
    # program alive.
    with python_script(SCRIPT, model, kind) as proc:
        assert proc.stdout is not None
        # Wait until the consumer holds the first two results and a worker runs a slow item.
        workers: set[int] = set()
        got: set[int] = set()
        while not (workers and got == {0, 1}):
            line = proc.stdout.readline()
            assert line.startswith(("running", "got")), line
            word, number = line.split()
            (workers if word == "running" else got).add(int(number))
        tree = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, _ = proc.communicate(timeout=20)
        took = time.monotonic() - sent
    assert workers <= (tree if model == "processes" else {proc.pid})
    # What imap had handed out stays handed out: every result the consumer printed, [0, 1]
    # and whatever else came before the signal landed (a thread's sleep, woken by the signal,
    # can end its item first).
    handed = [0, 1] + [int(line.split()[1]) for line in out.splitlines() if line.startswith("got")]
    assert f"interrupted, kept {handed!r}" in out, out
    assert proc.returncode == 3
    assert took < 8, f"{took:.1f} s to stop"
    # The workers are stopped before the program exits; multiprocessing's fork server and
    # resource tracker follow it out a moment later.
    assert not still_running(tree, within=5.0)


WORKER_SIGNAL_SCRIPT = r"""
import os, signal, sys, threading, time, pickpool

signal.signal(signal.SIGINT, signal.default_int_handler)

def slow(x):
    if x == 0:
        # The kernel may hand a process's SIGINT to any of its threads: here, to this one.
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    time.sleep(30)
    return x

try:
    for result in pickpool.imap(slow, range(4), model=sys.argv[1], workers=2, chunksize=1):
        pass
except KeyboardInterrupt:
    os.write(1, b"interrupted\n")
    sys.exit(3)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["threads", "asyncio"])
def test_ctrl_c_handed_to_a_worker_thread_still_stops_the_run(model: str) -> None:
    # Python runs signal handlers in the main thread only; one that a worker thread received
    # must not wait for the main thread's next outcome (30 s here) to be seen.
    with python_script(WORKER_SIGNAL_SCRIPT, model) as proc:
        out, _ = proc.communicate(timeout=20)
    assert out == "interrupted\n"
    assert proc.returncode == 3


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def still_running(pids: set[int], *, within: float) -> set[int]:
    """Those of ``pids`` still running (not zombies) after waiting up to ``within`` seconds."""
    deadline = time.monotonic() + within
    alive = set(pids)
    while alive:
        alive = {pid for pid in alive if _running(pid)}
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return alive


ORPHAN_SCRIPT = r"""
import os, sys, time, pickpool

def slow(x):
    os.write(1, b"running %d\n" % os.getpid())
    time.sleep(60)
    return x

pickpool.map(slow, range(10), model="processes", workers=2)
"""


@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_workers_do_not_outlive_a_killed_parent(method: str) -> None:
    # SIGKILL leaves the parent no chance to stop anything: its workers, busy in 60 s items,
    # must notice and exit on their own.
    with python_script(ORPHAN_SCRIPT, text=False, env={"PICKPOOL_START_METHOD": method}) as proc:
        assert proc.stdout is not None
        workers = {int(proc.stdout.readline().split()[1]) for _ in range(2)}
    alive = still_running(workers, within=10.0)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their parent"
