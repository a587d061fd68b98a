"""Hedged TCP connects, for servers that drop connections silently past a short listen queue.

A server whose listen backlog is full drops a new connection's SYN without a word; the
client's kernel sends it again only after a second (RFC 6298's initial timeout), then two,
four... Nothing warns before it: connect times stay flat until the drop. Calls of 20 ms that
wait a second each for a retried SYN make a batch several times slower, whatever limits the
calls at once (``model="auto"``'s limiter sees the stuck calls only after they are stuck).
A hedged connect is also a warning: one that waited past the hedging wait is marked late for
``model="auto"``'s limiter in this process, which then stops raising the calls at once.

A hedged connect sends a second SYN, on a new socket, when the first has not completed after
``max(50 ms, 3x the usual connect time)``; the first to complete is used, the other closed,
before any byte of the request is sent (so nothing runs twice). At most about one connect in
ten is hedged (as gRPC throttles its hedged calls), so a server that is merely slow does not
get twice the connections::

    import urllib.request
    import pickpool.hedge

    opener = pickpool.hedge.opener()           # urllib, hedged; or:
    urllib.request.install_opener(opener)      # every urlopen() from here on
    with opener.open("http://127.0.0.1:8000/") as response:
        body = response.read()

:func:`create_connection` is a drop-in for :func:`socket.create_connection`, for a client that
takes a connect function; :class:`HTTPConnection` and :class:`HTTPSConnection` are
``http.client``'s, hedged.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import http.client
import os
import selectors
import socket
import statistics
import threading
import time
import urllib.request
from typing import Any

from . import _limits

__all__ = [
    "HTTPConnection",
    "HTTPHandler",
    "HTTPSConnection",
    "HTTPSHandler",
    "create_connection",
    "opener",
]

LEAST_WAIT = 0.05  # seconds before a second SYN, at least
TYPICAL_TIMES = 3.0  # ... or this many times the usual connect time
SHARE = 0.1  # of connects, at most, hedged (beyond a first few)
FIRST_FEW = 10

_lock = threading.Lock()
# Seconds of the last connects not hedged, by (host, port), the most recently used last: a far
# host's connects are not judged by a near one's.
_recent: dict[tuple[str, int], collections.deque[float]] = {}
MOST_PLACES = 256
_connects = 0
_hedged = 0


def _wait_before_hedging(place: tuple[str, int]) -> float:
    with _lock:
        seconds = _recent.get(place)
        usual = statistics.median(seconds) if seconds else 0.0
    return max(LEAST_WAIT, TYPICAL_TIMES * usual)


def _note_connect(place: tuple[str, int], seconds: float) -> None:
    with _lock:
        kept = _recent.pop(place, None) or collections.deque(maxlen=64)
        kept.append(seconds)
        _recent[place] = kept
        if len(_recent) > MOST_PLACES:
            del _recent[next(iter(_recent))]


def _may_hedge() -> bool:
    """One more hedge keeps hedges within :data:`SHARE` of connects (after a first few)."""
    global _hedged
    with _lock:
        if _hedged < FIRST_FEW + SHARE * _connects:
            _hedged += 1
            return True
    return False


def _start(info: tuple[Any, ...], source_address: tuple[str, int] | None) -> socket.socket:
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if source_address is not None:
            sock.bind(source_address)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(code, f"connect to {address}: {os.strerror(code)}")
    except BaseException:
        sock.close()
        raise
    return sock


def _first_done(
    selector: selectors.BaseSelector, sockets: list[socket.socket], wait: float
) -> tuple[socket.socket | None, OSError | None]:
    """(the socket that connected, or None; the error of one that failed, or None), after
    waiting ``wait`` seconds at most for one to complete."""
    failed = None
    for key, _ in selector.select(None if wait == float("inf") else max(0.0, wait)):
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        selector.unregister(sock)
        sockets.remove(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:
            return sock, None
        sock.close()
        failed = OSError(code, os.strerror(code))
    return None, failed


def create_connection(
    address: tuple[str, int],
    timeout: float | object | None = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
    source_address: tuple[str, int] | None = None,
    *,
    after: float | None = None,
) -> socket.socket:
    """:func:`socket.create_connection`, hedged: a second connect, on a new socket, if the
    first has not completed ``after`` seconds in (default ``max(50 ms, 3x the usual connect
    time)`` to that host and port in this process); the first to complete is returned, the
    other closed. As the standard one, it tries the host's addresses in turn while they
    refuse.

    Example::

        >>> import pickpool.hedge
        >>> sock = pickpool.hedge.create_connection(("127.0.0.1", port), 10)  # doctest: +SKIP
    """
    global _connects
    if timeout is socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
        timeout = socket.getdefaulttimeout()
    assert timeout is None or isinstance(timeout, (int, float))
    host, port = address
    addresses = list(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
    began = time.monotonic()
    deadline = float("inf") if timeout is None else began + timeout
    wait = _wait_before_hedging((host, port)) if after is None else after
    _limits.marks.arm(wait)  # (a run's limiter gives a new limit the time to be marked)
    hedge_at = began + wait
    hedged = False
    with _lock:
        _connects += 1
    sockets: list[socket.socket] = []
    error = OSError(f"getaddrinfo returned nothing for {host!r}")
    with selectors.DefaultSelector() as selector:
        try:
            while sockets or addresses:
                if not sockets:  # (the first, or the next address after a refusal)
                    current = addresses.pop(0)
                    try:
                        sockets.append(_start(current, source_address))
                    except OSError as exc:  # (refused at once, as loopback may)
                        error = exc
                        continue
                    selector.register(sockets[-1], selectors.EVENT_WRITE)
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError(f"connect to {host}:{port} timed out after {timeout} s")
                if now >= hedge_at:
                    hedge_at = float("inf")  # (one hedge per connect, or none)
                    _limits.marks.note(began)  # (a run's limiter stops rising: see Marks)
                    if len(sockets) == 1 and _may_hedge():
                        with contextlib.suppress(OSError):  # (no hedge: the first goes on)
                            sockets.append(_start(current, source_address))
                            selector.register(sockets[-1], selectors.EVENT_WRITE)
                            hedged = True
                sock, failed = _first_done(selector, sockets, min(hedge_at, deadline) - now)
                if sock is not None:
                    if not hedged:  # (the usual connect time: of connects not hedged)
                        _note_connect((host, port), time.monotonic() - began)
                    sock.setblocking(True)
                    sock.settimeout(timeout)
                    return sock
                if failed is not None:
                    error = OSError(failed.errno, f"connect to {host}:{port}: {failed.strerror}")
                    hedge_at = float("inf")  # (refused: a second SYN would be refused too)
            raise error
        finally:
            for sock in sockets:
                sock.close()


class HTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` whose connects are hedged (:func:`create_connection`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = create_connection  # (http.client's own hook)


class HTTPSConnection(http.client.HTTPSConnection):
    """``http.client.HTTPSConnection`` whose connects are hedged (TLS after the winner)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = create_connection


class HTTPHandler(urllib.request.HTTPHandler):
    """urllib's handler for ``http://``, on :class:`HTTPConnection`."""

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(HTTPConnection, req)


class HTTPSHandler(urllib.request.HTTPSHandler):
    """urllib's handler for ``https://``, on :class:`HTTPSConnection`."""

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(HTTPSConnection, req, context=self._context)  # type: ignore[attr-defined]


def opener(*handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
    """A urllib opener whose connects are hedged, with ``handlers`` added (cookies, auth...).

    Example::

        >>> import pickpool.hedge
        >>> opener = pickpool.hedge.opener()
        >>> opener.open("http://127.0.0.1:8000/").read()  # doctest: +SKIP
    """
    return urllib.request.build_opener(HTTPHandler(), HTTPSHandler(), *handlers)
