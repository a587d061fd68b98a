"""Built-in workloads that stand for the usual advice's cases, for the demo and the benchmarks.

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
import http.server
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any

# Sized so that one call takes ~20-30 ms on a 2020s core: long enough for any model's
# hand-off to be small beside it.
CRUNCH_N = 400_000
DIGEST_BYTES = b"\x5a" * (8 * 1024 * 1024)
WAIT_SECONDS = 0.02


def crunch(n: int) -> int:
    """Pure-Python CPU work that holds the GIL: the usual case for processes."""
    total = n
    for i in range(CRUNCH_N):
        total = (total * 31 + i) % 1_000_003
    return total


def digest(n: int) -> str:
    """CPU work in C that releases the GIL (hashlib on 8 MiB): threads run it in parallel."""
    h = hashlib.sha256(n.to_bytes(8, "little"))
    h.update(DIGEST_BYTES)
    return h.hexdigest()[:16]


def blocking_wait(n: int) -> int:
    """A blocking wait of 20 ms that releases the GIL, the usual ``time.sleep`` example."""
    time.sleep(WAIT_SECONDS)
    return n


async def async_wait(n: int) -> int:
    """The same wait as a coroutine: the usual case for asyncio."""
    await asyncio.sleep(WAIT_SECONDS)
    return n


def squeeze(n: int) -> int:
    """zlib compression of 1 MiB: C code that releases the GIL, like hashlib."""
    block = (n.to_bytes(8, "little") + bytes(range(256)) * 3) * (1024 * 1024 // 776)
    return len(zlib.compress(block, 6))


def tiny(x: int) -> int:
    """Work of about a microsecond: too small for any parallelism to pay."""
    return x * x + 1


def sample_sum(numbers: list[int]) -> int:
    """Light work on a large argument: pickling the list costs far more than this."""
    return sum(numbers[::10])


def mixed(n: int) -> int:
    """Half waiting (10 ms asleep), half pure-Python computing (10 ms of this thread's CPU
    time, however fast the machine); returns ``n``."""
    time.sleep(WAIT_SECONDS / 2)
    total, i = n, 0
    end = time.thread_time() + WAIT_SECONDS / 2
    while time.thread_time() < end:
        for _ in range(1000):
            total = (total * 31 + i) % 1_000_003
            i += 1
    return n


def child(n: int) -> int:
    """Waiting on a child process (a short-lived ``python -c``): the parent thread blocks."""
    done = subprocess.run([sys.executable, "-S", "-c", "import time; time.sleep(0.02)"], check=True)
    return done.returncode + n


async def async_blocking(n: int) -> int:
    """An ``async def`` that blocks its event loop with ``time.sleep``: a common mistake."""
    time.sleep(WAIT_SECONDS)  # noqa: ASYNC251 - the mistake this workload stands for
    return n


async def async_crunch(n: int) -> int:
    """An ``async def`` doing pure-Python CPU work: it blocks its loop and holds the GIL."""
    return crunch(n)


def fetch(address: tuple[str, int], n: int) -> int:
    """Ask the local :func:`server` for ``n`` back: a blocking socket round trip."""
    with socket.create_connection(address, timeout=10) as conn:
        conn.sendall(b"%d\n" % n)
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
    with _serving(_Server(("127.0.0.1", 0), _Handler), delay) as (host, port):
        yield host, port


@contextlib.contextmanager
def _serving(srv: socketserver.TCPServer, delay: float) -> Iterator[tuple[str, int]]:
    """Serve ``srv`` from a thread until the block ends; yields (host, port)."""
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


class _HTTPHandler(http.server.BaseHTTPRequestHandler):
    """Answers ``GET /<n>`` with ``n`` after the server's delay, like a slowish web service."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        time.sleep(self.server.delay)  # type: ignore[attr-defined]
        body = self.path.strip("/").encode() or b"0"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the demo prints its own table


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


@contextlib.contextmanager
def http_server(delay: float = WAIT_SECONDS) -> Iterator[str]:
    """A real HTTP server on loopback, each answer ``delay`` seconds late; yields its base URL.

    Example::

        >>> with lab.http_server(0.02) as url:
        ...     pickpool.map(functools.partial(lab.http_get, url), range(3))
        [0, 1, 2]
    """
    with _serving(_HTTPServer(("127.0.0.1", 0), _HTTPHandler), delay) as (host, port):
        yield f"http://{host}:{port}"


def http_get(url: str, n: int) -> int:
    """``GET url/n`` with a blocking client (urllib): the usual case for threads."""
    with urllib.request.urlopen(f"{url}/{n}", timeout=30) as response:
        return int(response.read())


async def ahttp_get(url: str, n: int) -> int:
    """``GET url/n`` with an async client (aiohttp if installed, else asyncio streams)."""
    try:
        import aiohttp
    except ImportError:
        return await _raw_get(url, n)
    async with aiohttp.ClientSession() as session, session.get(f"{url}/{n}") as response:
        return int(await response.read())


async def _raw_get(url: str, n: int) -> int:
    """HTTP/1.0 GET over asyncio streams: the async client when aiohttp is not installed."""
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"GET /{n} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(response.split(b"\r\n\r\n", 1)[1])
