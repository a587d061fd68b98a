"""Built-in workloads that stand for the seeds' cases, for the demo and the benchmarks.

Each is a module-level function of one item, so every model (processes included) can run it.

Example::

    >>> import pickpool
    >>> from pickpool import lab
    >>> len(pickpool.map(lab.digest, range(2), model="threads"))
    2
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import socketserver
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator

# Sized so that one call takes ~20-30 ms on a 2020s core: long enough for any model's
# hand-off to be small beside it.
CRUNCH_N = 400_000
DIGEST_BYTES = b"\x5a" * (8 * 1024 * 1024)
WAIT_SECONDS = 0.02


def crunch(seed: int) -> int:
    """Pure-Python CPU work that holds the GIL: the seeds' case for processes."""
    total = seed
    for i in range(CRUNCH_N):
        total = (total * 31 + i) % 1_000_003
    return total


def digest(seed: int) -> str:
    """CPU work in C that releases the GIL (hashlib on 8 MiB): threads run it in parallel."""
    h = hashlib.sha256(seed.to_bytes(8, "little"))
    h.update(DIGEST_BYTES)
    return h.hexdigest()[:16]


def blocking_wait(seed: int) -> int:
    """A blocking wait of 20 ms that releases the GIL, as the seeds' ``time.sleep`` example."""
    time.sleep(WAIT_SECONDS)
    return seed


async def async_wait(seed: int) -> int:
    """The same wait as a coroutine: the seeds' case for asyncio."""
    await asyncio.sleep(WAIT_SECONDS)
    return seed


def squeeze(seed: int) -> int:
    """zlib compression of 1 MiB: C code that releases the GIL, like hashlib."""
    block = (seed.to_bytes(8, "little") + bytes(range(256)) * 3) * (1024 * 1024 // 776)
    return len(zlib.compress(block, 6))


def tiny(x: int) -> int:
    """Work of about a microsecond: too small for any parallelism to pay."""
    return x * x + 1


def sample_sum(numbers: list[int]) -> int:
    """Light work on a large argument: pickling the list costs far more than this."""
    return sum(numbers[::10])


def mixed(seed: int) -> int:
    """Half waiting (10 ms asleep), half pure-Python computing (~10 ms)."""
    time.sleep(WAIT_SECONDS / 2)
    total = seed
    for i in range(CRUNCH_N // 2):
        total = (total * 31 + i) % 1_000_003
    return total


def child(seed: int) -> int:
    """Waiting on a child process (a short-lived ``python -c``): the parent thread blocks."""
    done = subprocess.run([sys.executable, "-S", "-c", "import time; time.sleep(0.02)"], check=True)
    return done.returncode + seed


async def async_blocking(seed: int) -> int:
    """An ``async def`` that blocks its event loop with ``time.sleep``: a common mistake."""
    time.sleep(WAIT_SECONDS)  # noqa: ASYNC251 - the mistake this workload stands for
    return seed


async def async_crunch(seed: int) -> int:
    """An ``async def`` doing pure-Python CPU work: it blocks its loop and holds the GIL."""
    return crunch(seed)


def fetch(address: tuple[str, int], seed: int) -> int:
    """Ask the local :func:`server` for ``seed`` back: a blocking socket round trip."""
    with socket.create_connection(address, timeout=10) as conn:
        conn.sendall(b"%d\n" % seed)
        reply = conn.makefile("rb").readline()
    return int(reply)


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        time.sleep(self.server.delay)  # type: ignore[attr-defined]
        self.wfile.write(line)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


@contextlib.contextmanager
def server(delay: float = WAIT_SECONDS) -> Iterator[tuple[str, int]]:
    """A local TCP server that answers each line after ``delay`` seconds; yields its address.

    Example::

        >>> import functools
        >>> with lab.server() as address:
        ...     pickpool.map(functools.partial(lab.fetch, address), range(3))
        [0, 1, 2]
    """
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.delay = delay  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, name="pickpool-lab-server", daemon=True)
    thread.start()
    host, port = srv.server_address[:2]
    try:
        yield str(host), int(port)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
