"""Workloads for ``busy.py`` that ``pickpool.lab`` lacks, and the busy machine's spinners.

Each workload is a top-level function of one item, so that worker processes find it by name.
The inputs they share are built at import (a few MB, well under a second): a worker process
pays for them once, when it first unpickles one of these functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator

SEED = 20_240_601
MEGABYTE = random.Random(SEED).randbytes(1 << 20)
# Words and numbers, ~1 MB: enough text that one regex pass is milliseconds of C code, which
# ``re`` runs with the GIL held throughout.
TEXT = " ".join(
    f"word{i % 977} {i * 7919 % 100_003} key={i % 13}:value{i % 31};" for i in range(40_000)
)
PATTERN = re.compile(r"key=(\d+):value(\d+);")
SKEW_SMALL = 2_000  # loop steps of most skewed items
SKEW_BIG = 200_000  # of the few big ones
SKEW_EVERY = 25  # one item in this many is big

# The spinner asks the kernel to kill it when its parent dies (Linux), so that even a parent
# killed without running its ``finally`` leaves no orphan; it also quits if the parent is
# already gone when it starts. Elsewhere it spins until killed.
SPIN = """\
import os, sys
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit()
while True: pass
"""


def sha(n: int) -> str:
    """SHA-256 of 1 MiB, eight times over: C code that releases the GIL while it hashes."""
    h = hashlib.sha256(n.to_bytes(8, "little"))
    for _ in range(8):
        h.update(MEGABYTE)
    return h.hexdigest()[:16]


def scan(n: int) -> int:
    """A regex pass over ~1 MB of text: C code that holds the GIL throughout."""
    return sum(int(a) + int(b) for a, b in PATTERN.findall(TEXT)) + n


def _spin_cpu(seconds: float) -> int:
    """Pure-Python work for ``seconds`` of this thread's CPU time, however fast the core."""
    total, i = 0, 0
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        for _ in range(500):
            total = (total * 31 + i) % 1_000_003
            i += 1
    return total


def compute_then_sleep(n: int) -> int:
    """5 ms of pure-Python CPU, then 20 ms asleep."""
    _spin_cpu(0.005)
    time.sleep(0.02)
    return n


def wait(n: int) -> int:
    """A 10 ms sleep: nothing but waiting."""
    time.sleep(0.01)
    return n


def spawn(n: int) -> int:
    """Start a Python child that does nothing, and wait for it."""
    return subprocess.run([sys.executable, "-c", "pass"], check=True).returncode + n


def loop(steps: int) -> int:
    """Pure-Python work proportional to ``steps``, holding the GIL."""
    total = steps
    for i in range(steps):
        total = (total * 31 + i) % 1_000_003
    return total


def skewed(count: int) -> list[int]:
    """``count`` step counts for :func:`loop`: most SKEW_SMALL, one in SKEW_EVERY SKEW_BIG,
    at places drawn from a fixed seed (so the first items, the probe's, are not all small)."""
    rng = random.Random(SEED)
    big = set(rng.sample(range(count), max(1, count // SKEW_EVERY)))
    return [SKEW_BIG if i in big else SKEW_SMALL for i in range(count)]


def _running() -> int:
    """Tasks running or runnable on the machine now, this one (reading) left out."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("procs_running "):
                return int(line.split()[1]) - 1
    raise OSError("no procs_running in /proc/stat")


def runnable(seconds: float = 0.5, samples: int = 20) -> float | None:
    """How many tasks other than this one wanted a core, on average over the next
    ``seconds`` (None where /proc/stat lacks the count). Unlike CPU use, it does not stop at
    the core count: two spinners beside two others read 4, not "2 cores busy"."""
    counts = []
    try:
        for _ in range(samples):
            counts.append(_running())
            time.sleep(seconds / samples)
    except OSError:
        return None
    return sum(counts) / len(counts)


@contextlib.contextmanager
def spinners(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes that spin ``while True: pass``, killed when the block ends,
    however it ends (Ctrl-C included)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # One at a time, so that if a start fails, those started are in ``procs`` to kill.
        for _ in range(count):
            procs.append(  # noqa: PERF401
                subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())])
            )
        # Past their start-up (imports, then a full core each) before anything is timed.
        time.sleep(0.5)
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


# A table every call reads and no call writes, built once at import: shared by the threads of
# one process (on a free-threaded build each read touches the same objects' reference counts
# from every thread), copied into each worker process or interpreter.
SHARED = {f"key{i}": (i, str(i)) for i in range(20_000)}


def shared(n: int) -> int:
    """Pure Python over a module-level dict all calls share: ~8 ms on a 2020s core."""
    total = n
    for _ in range(8):
        for key, (number, text) in SHARED.items():
            total += number + len(text) + len(key)
    return total


def collatz(n: int) -> int:
    """Pure Python on numbers of its own: the Collatz steps of 2,048 starting values, ~15 ms
    on a 2020s core. Its only constants are small ints, which CPython never counts, so its
    threads share no object (on free-threaded 3.13, lab.crunch's one large constant is
    counted by every thread that uses it, and its threads contend for that count)."""
    steps = 0
    for start in range((n + 1) << 11, (n + 2) << 11):
        x = start
        while x != 1:
            x = x >> 1 if x & 1 == 0 else 3 * x + 1
            steps += 1
    return steps
