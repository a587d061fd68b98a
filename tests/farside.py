"""HTTP servers with a finite capacity, each in a process of its own, for tests and benchmarks.

A server in a thread of the client's process would share the client's GIL and make threads look
worse (or better) than they are against a real service; these run in a child process:

- ``"roomy"``: a thread per connection and a deep listen backlog (1024): room for any client;
- ``"backlog"``: a thread per connection, but the listen backlog of Python's own ``http.server``
  (5): past it connections are dropped and the client's kernel retries them after 1 s, 3 s...;
- ``"capacity"``: serves at most ``limit`` requests at once, the rest wait their turn, so each
  answer takes longer as more are in flight (a database with a connection pool);
- ``"ratelimit"``: answers ``429 Too Many Requests`` (with ``Retry-After``) to requests past
  ``limit`` in flight, as an API with a quota does;
- ``"rate"``: answers 429 to requests past ``rate`` in any one second (a sliding window), as
  an API that allows so many requests a second does.

Each answers ``GET /<n>`` with ``n`` after ``delay`` seconds.

Example::

    >>> from tests import farside
    >>> with farside.serve("capacity", delay=0.02, limit=8) as url:
    ...     pickpool.map(functools.partial(farside.get, url), range(100))
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

KINDS = ("roomy", "backlog", "capacity", "ratelimit", "rate")


class TooManyRequests(Exception):
    """The server answered 429: over its limit. Raised by :func:`get`."""


def get(url: str, n: int, timeout: float = 30.0, *, hedged: bool = False) -> int:
    """``GET url/n`` with urllib, one connection per request; :class:`TooManyRequests` on 429.
    ``hedged``: its connects hedged (``pickpool.hedge``)."""
    open_url = _hedged_opener().open if hedged else urllib.request.urlopen
    try:
        with open_url(f"{url}/{n}", timeout=timeout) as response:
            return int(response.read())
    except urllib.error.HTTPError as exc:
        exc.close()  # its connection
        if exc.code == 429:
            raise TooManyRequests(f"item {n}: 429 Too Many Requests") from None
        raise


@functools.cache
def _hedged_opener() -> urllib.request.OpenerDirector:
    from pickpool import hedge

    return hedge.opener()


@contextlib.contextmanager
def serve(kind: str, *, delay: float = 0.02, limit: int = 8, rate: float = 100.0) -> Iterator[str]:
    """Start a ``kind`` server in a child process; yield its base URL; stop it after."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    command = [
        sys.executable,
        __file__,  # (a script: the server needs nothing of pickpool, nor of the tests)
        kind,
        "--delay",
        str(delay),
        "--limit",
        str(limit),
        "--rate",
        str(rate),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if not line.startswith("http://"):
            raise RuntimeError(f"the {kind} server did not start (it printed {line!r})")
        yield line
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        server: Any = self.server
        if server.kind == "ratelimit":
            with server.lock:
                admitted = server.in_flight < server.limit
                server.in_flight += admitted
            if not admitted:
                self._answer(429, b"busy", retry_after=True)
                return
            try:
                time.sleep(server.delay)
            finally:
                with server.lock:
                    server.in_flight -= 1
        elif server.kind == "rate":
            now = time.monotonic()
            with server.lock:
                arrivals = server.arrivals
                while arrivals and arrivals[0] <= now - 1.0:
                    arrivals.popleft()
                admitted = len(arrivals) < server.rate
                if admitted:
                    arrivals.append(now)
            if not admitted:
                self._answer(429, b"slow down", retry_after=True)
                return
            time.sleep(server.delay)
        elif server.kind == "capacity":
            with server.slots:
                time.sleep(server.delay)
        else:
            time.sleep(server.delay)
        self._answer(200, self.path.strip("/").encode() or b"0")

    def _answer(self, status: int, body: bytes, *, retry_after: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if retry_after:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout, a run stopped early) closed the connection
        # before the answer: what a real server logs at most, not a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python tests/farside.py")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args(argv)
    server_class = type(
        "Server", (_Server,), {"request_queue_size": 5 if args.kind == "backlog" else 1024}
    )
    server: Any = server_class(("127.0.0.1", 0), _Handler)
    server.kind, server.delay, server.limit = args.kind, args.delay, args.limit
    server.rate, server.arrivals = args.rate, collections.deque()
    server.lock = threading.Lock()
    server.in_flight = 0
    server.slots = threading.Semaphore(args.limit)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
