"""Hedged connects (``pickpool.hedge``): the first connect to complete wins, the other is closed
before a byte is sent, a refusal or a timeout is the standard one's, and hedges stay a small
share of connects. The servers here are the kernel's listen queues (no Python serves them), so
they share no GIL with the client. No assertion is on a timing."""

from __future__ import annotations

import contextlib
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from pickpool import _limits, hedge

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def listening(backlog: int = 16) -> Iterator[socket.socket]:
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(backlog)
        yield server
    finally:
        server.close()


def test_the_first_to_connect_wins_and_the_other_is_closed_unused() -> None:
    with listening() as server:
        port = server.getsockname()[1]
        # after=0: the second connect is sent at once, so both reach the server.
        sock = hedge.create_connection(("127.0.0.1", port), timeout=10, after=0)
        with sock:
            sock.sendall(b"the request")
            sock.shutdown(socket.SHUT_WR)
            server.settimeout(10)
            received = []
            for _ in range(2):
                accepted, _ = server.accept()
                with accepted:
                    accepted.settimeout(10)
                    chunks = []
                    while chunk := accepted.recv(4096):
                        chunks.append(chunk)
                    received.append(b"".join(chunks))
    # One connection carried the request; the other was closed before any byte of it.
    assert sorted(received) == [b"", b"the request"]


def test_a_connect_past_its_hedging_wait_is_marked_late(monkeypatch: pytest.MonkeyPatch) -> None:
    # The mark tells a run's limiter in this process that the far side's queue is full (see
    # pickpool._limits.Marks): once per connect that waited, none for one that did not.
    marks = _limits.Marks()
    monkeypatch.setattr(_limits, "marks", marks)
    with listening() as server:
        port = server.getsockname()[1]
        hedge.create_connection(("127.0.0.1", port), timeout=10, after=10).close()
        assert marks.read(0.0, 0.0) == []
        hedge.create_connection(("127.0.0.1", port), timeout=10, after=0).close()
    [(noted, began)] = marks.read(0.0, 0.0)
    assert began <= noted


def test_a_refused_connect_raises_as_the_standard_one_does() -> None:
    with listening() as server:
        port = server.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        hedge.create_connection(("127.0.0.1", port), timeout=10)


def test_a_connect_no_one_answers_times_out_and_leaves_no_socket() -> None:
    import psutil

    with listening(backlog=0) as server:
        port = server.getsockname()[1]
        # A full accept queue: the kernel drops new SYNs without a word, as a busy server's.
        filling = []
        for _ in range(8):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            filling.append(client)
        try:
            before = len(psutil.Process().net_connections())
            with pytest.raises(TimeoutError):
                hedge.create_connection(("127.0.0.1", port), timeout=0.3, after=0.05)
            assert len(psutil.Process().net_connections()) == before
        finally:
            for client in filling:
                client.close()


def test_each_host_is_hedged_on_its_own_connect_times(monkeypatch: pytest.MonkeyPatch) -> None:
    # A far host's 100 ms connects are not late beside a near one's 0.1 ms.
    monkeypatch.setattr(hedge, "_recent", {})
    for _ in range(5):
        hedge._note_connect(("far.example", 443), 0.1)
        hedge._note_connect(("127.0.0.1", 8080), 0.0001)
    assert hedge._wait_before_hedging(("far.example", 443)) == pytest.approx(0.3)
    assert hedge._wait_before_hedging(("127.0.0.1", 8080)) == hedge.LEAST_WAIT
    assert hedge._wait_before_hedging(("new.example", 80)) == hedge.LEAST_WAIT
    # The hosts least recently connected to are forgotten past a few hundred.
    for port in range(hedge.MOST_PLACES):
        hedge._note_connect(("127.0.0.1", port), 0.2)
    assert ("far.example", 443) not in hedge._recent
    assert len(hedge._recent) == hedge.MOST_PLACES


def test_hedges_stay_a_tenth_of_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hedge, "_connects", 0)
    monkeypatch.setattr(hedge, "_hedged", 0)
    allowed = 0
    for _ in range(1000):
        hedge._connects += 1
        allowed += hedge._may_hedge()
    assert allowed == hedge.FIRST_FEW + int(hedge.SHARE * 1000)


def test_urllib_through_the_hedged_opener() -> None:
    with listening() as server:
        port = server.getsockname()[1]
        opener = hedge.opener()
        handlers = [type(h) for h in opener.handlers]  # type: ignore[attr-defined]
        assert hedge.HTTPHandler in handlers
        assert hedge.HTTPSHandler in handlers
        assert urllib.request.HTTPHandler not in handlers  # (replaced, not beside)
        connection = hedge.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.connect()
        assert connection.sock is not None
        assert connection.sock.getpeername()[1] == port
        connection.close()
