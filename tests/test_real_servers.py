"""The real servers the capacity benchmark starts (PostgreSQL, Redis, nginx): each starts on a
free port, answers, refuses past its stated capacity, and leaves no process behind. Each is
skipped, with what to install, where this machine lacks it. Assertions are on answers and
refusals, never on timings."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

import psutil
import pytest
from benchmarks import real_servers

pytestmark = pytest.mark.timeout(180)


# What each server says past its capacity, and that capacity.
REFUSALS = {
    "postgres": (real_servers.POSTGRES_CONNECTIONS, "too many clients"),
    "redis-bare": (real_servers.REDIS_CLIENTS, "max number of clients"),
    "nginx": (real_servers.NGINX_CONNECTIONS, "503"),
}


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _refusals(call: Callable[[int], int], at_once: int) -> list[BaseException]:
    """``at_once`` calls started together: what each raised (None where it answered)."""
    gate = threading.Barrier(at_once)

    def together(n: int) -> BaseException | None:
        gate.wait()
        try:
            assert call(n) == n
        except Exception as exc:
            return exc
        return None

    with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
        return [e for e in pool.map(together, range(at_once)) if e is not None]


@pytest.mark.parametrize("kind", real_servers.KINDS)
def test_a_real_server_answers_refuses_past_its_capacity_and_stops(kind: str) -> None:
    lacking = real_servers.missing(kind)
    if lacking:
        pytest.skip(lacking)
    before = _children()
    # A longer wait than the benchmark's, so that calls started together overlap for sure.
    with real_servers.serve(kind, delay=0.5) as call:
        assert call(7) == 7
        if kind in REFUSALS:
            capacity, said = REFUSALS[kind]
            refused = _refusals(call, capacity + 8)
            assert refused, f"{kind} refused nothing past its capacity of {capacity}"
            assert all(said in str(e) for e in refused), refused
        else:
            # redis-py retries a refused connection itself: past maxclients calls wait, and
            # all of them answer in the end (a refusal it gave up on would show here).
            assert _refusals(call, real_servers.REDIS_CLIENTS + 8) == []
    assert _children() - before == set()
