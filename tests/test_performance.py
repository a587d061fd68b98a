"""The machinery behind speed: warm worker processes, adaptive chunks, blocks of results.

Only behaviour here; timings live in ``benchmarks/``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pickpool
from pickpool._backends._processes import warm
from pickpool._chunks import MAX_CHUNK, MAX_CHUNK_BYTES, Chunking
from pickpool._plan import Plan
from pickpool._schedule import Block, Done, Schedule
from pickpool._task import BLOCK, OK, Caller


def pid(_: object) -> int:
    return os.getpid()


def double(x: int) -> int:
    return 2 * x


def test_worker_processes_stay_warm_between_calls() -> None:
    first = set(pickpool.map(pid, range(64), model="processes", workers=2, chunksize=1))
    assert len(warm) == len(first) == 2
    second = set(pickpool.map(pid, range(64), model="processes", workers=2, chunksize=1))
    assert second == first  # the same processes: no start-up paid twice


def set_a_limit(x: int) -> int:
    """Leaves state in its worker process: a limit on open files that later calls inherit."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    return x


def open_files_limit(_: object) -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_fresh_workers_start_from_new_processes_and_are_not_kept() -> None:
    pickpool.map(set_a_limit, range(8), model="processes", workers=2, chunksize=1)
    # Warm workers keep what an earlier call did to them (documented); fresh ones do not.
    assert set(pickpool.map(open_files_limit, range(8), model="processes", workers=2)) == {64}
    kept = set(pickpool.map(pid, range(16), model="processes", workers=2, chunksize=1))
    fresh = pickpool.map(
        open_files_limit, range(8), model="processes", workers=2, fresh_workers=True
    )
    assert set(fresh) != {64}
    new = set(pickpool.map(pid, range(16), model="processes", workers=2, fresh_workers=True))
    assert not new & kept
    assert len(warm) == 2  # the fresh ones were stopped, the warm ones kept
    assert not any(_alive(p) for p in new)


def test_fresh_threads_are_not_kept() -> None:
    from pickpool._backends import _threads

    pickpool.map(double, range(32), model="threads", workers=4, fresh_workers=True)
    assert len(_threads.warm) == 0


def test_a_warm_worker_takes_the_next_calls_function() -> None:
    pickpool.map(pid, range(8), model="processes", workers=2)
    assert pickpool.map(double, range(100), model="processes", workers=2) == [
        2 * x for x in range(100)
    ]
    offset = 7
    assert pickpool.map(lambda x: x + offset, range(5), model="processes") == [7, 8, 9, 10, 11]


def test_a_warm_worker_that_died_is_replaced() -> None:
    pids = set(pickpool.map(pid, range(16), model="processes", workers=2, chunksize=1))
    for p in pids:
        os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pickpool.map(double, range(10), model="processes", workers=2) == [
        2 * x for x in range(10)
    ]


def test_a_run_that_stops_early_keeps_no_workers() -> None:
    results = pickpool.imap(double, range(10_000), model="processes", workers=2, chunksize=1)
    next(results)
    results.close()  # workers may be mid-chunk: they are killed, not kept
    assert len(warm) == 0


def test_warm_workers_stop_when_cleared() -> None:
    pids = set(pickpool.map(pid, range(16), model="processes", workers=2, chunksize=1))
    warm.clear()
    assert len(warm) == 0
    assert not any(_alive(p) for p in pids)


def _alive(p: int) -> bool:
    try:
        with open(f"/proc/{p}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


# Chunks ----------------------------------------------------------------------------------------


def plan(**kw: Any) -> Plan:
    base = Plan(
        model="processes",
        workers=2,
        chunksize=1,
        window=8,
        ordered=True,
        timeout=None,
        retries=0,
        fail_fast=True,
        adaptive=True,
        length=None,
    )
    return dataclasses.replace(base, **kw)


def test_chunks_grow_to_a_few_milliseconds_of_work(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    chunking = Chunking(plan())
    chunking.started()
    sizes = []
    for _ in range(30):
        clock[0] += 0.02  # 10,000 items per second come back: 5 ms is 25 items per worker
        chunking.finished(200)
        sizes.append(chunking.size)
    assert sizes[:3] == [2, 4, 8]  # at most doubling
    assert sizes[-1] == 50 // 2  # rate x 5 ms / workers = 10_000 * 0.005 / 2


def test_chunks_shrink_at_once_when_the_pace_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    chunking = Chunking(plan(chunksize=1000))
    chunking.started()
    clock[0] += 1.0
    chunking.finished(100)  # 100 items per second: 5 ms is under one item
    assert chunking.size == 1


def test_the_tail_is_split_over_every_worker() -> None:
    chunking = Chunking(plan(chunksize=MAX_CHUNK, length=1000))
    chunking.weighed(100)  # small results: the byte cap is not what limits here
    assert chunking.next(taken=0) == 250  # 1000 left, 2 workers, 2 rounds
    assert chunking.next(taken=990) == 3
    assert chunking.next(taken=999) == 1


def test_hops_are_not_split_at_the_tail() -> None:
    # A hop's items wait in one place for the next free coroutine: splitting the tail over
    # the workers (1,024 coroutines) would only make hops of one item.
    chunking = Chunking(plan(model="asyncio", hops=True, workers=1024, chunksize=64, length=1000))
    chunking.weighed(100)
    assert chunking.next(taken=0) == 64
    assert chunking.next(taken=990) == 64  # (the input ends first: take() reads what is left)


def test_chunks_are_of_one_item_until_a_result_is_weighed() -> None:
    # A first chunk of 8 results of 40 MB each would hold 320 MB at once.
    chunking = Chunking(plan(chunksize=64, length=1000))
    assert chunking.next(taken=0) == 1
    chunking.weighed(40 * 1024 * 1024)
    assert chunking.next(taken=1) == 1  # one such result is over the cap already
    chunking.weighed(MAX_CHUNK_BYTES / 8)
    assert chunking.next(taken=2) == 8


def test_a_fixed_chunksize_is_kept() -> None:
    chunking = Chunking(plan(chunksize=7, adaptive=False, length=10))
    chunking.started()
    chunking.finished(10**6)
    assert (chunking.size, chunking.next(taken=9)) == (7, 7)


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(1, 6),
    outcomes=st.lists(st.booleans(), min_size=1, max_size=30),
    blocks=st.booleans(),
)
def test_schedule_hands_out_every_item_once_in_order(
    size: int, outcomes: list[bool], blocks: bool
) -> None:
    # Outcomes come as a worker sends them: a block for each run of successes.
    items = list(range(len(outcomes)))
    # (on_error="collect": a failure stops nothing, so every item must come out.)
    the_plan = plan(chunksize=size, window=100, adaptive=False, fail_fast=False)
    schedule = Schedule(items, the_plan, blocks=blocks)
    caller = Caller(lambda x: x if outcomes[x] else 1 / 0)
    got: list[int] = []
    # Until a result is weighed the window holds a chunk per worker: submit as it has room.
    while not schedule.finished:
        for task in schedule.tasks():
            _, out = schedule.accept(caller.run(task))
            for d in out:
                if type(d) is Block:
                    assert blocks
                    got += range(d.index, d.index + len(d.values))
                    assert d.values == list(range(d.index, d.index + len(d.values)))
                else:
                    assert type(d) is Done
                    assert d.status == (OK if outcomes[d.index] else 1)
                    got.append(d.index)
    assert got == items


def test_a_caller_runs_a_chunk_as_blocks_around_failures() -> None:
    caller = Caller(lambda x: 10 // x)
    out = caller.run_items(5, [1, 2, 0, 5, 10])
    assert [(i, s) for i, s, _, _ in out] == [(5, BLOCK), (7, 1), (8, BLOCK)]
    assert out[0][2] == [10, 5]
    assert out[2][2] == [2, 1]
    assert [o[0] for o in caller.run_items(0, [0, 1, 2], stop=True)] == [0]


def test_a_plain_function_that_returns_coroutines_has_them_awaited() -> None:
    async def half(x: int) -> float:
        return x / 2

    assert pickpool.map(lambda x: half(x), range(4), model="serial") == [0, 0.5, 1, 1.5]
    assert pickpool.map(lambda x: half(x), range(4), model="threads") == [0, 0.5, 1, 1.5]


def test_serial_hands_out_each_result_at_once_with_chunksize_one() -> None:
    seen: list[int] = []

    def note(x: int) -> int:
        seen.append(x)
        return x

    for result in pickpool.imap(note, range(100), model="serial", chunksize=1):
        assert seen[-1] == result  # nothing ran ahead of the consumer


def test_worker_threads_stay_warm_between_calls() -> None:
    import threading

    from pickpool._backends import _threads

    def ident(_: object) -> int:
        return threading.get_ident()

    first = set(pickpool.map(ident, range(32), model="threads", workers=4))
    kept = {parked.thread.ident for parked in _threads.warm._idle}
    assert first <= kept
    assert len(kept) <= 4
    second = set(pickpool.map(ident, range(32), model="threads", workers=4))
    assert second <= kept  # the same threads served the second call


@pytest.mark.leaves_threads
def test_a_thread_abandoned_to_a_timeout_is_not_kept() -> None:
    import threading

    from pickpool._backends import _threads

    release = threading.Event()

    def stuck(x: int) -> int:
        if x == 0:
            release.wait(10)
        return x

    got = pickpool.map(stuck, range(4), model="threads", workers=2, timeout=0.2, on_error="skip")
    assert got == [1, 2, 3]
    kept = len(_threads.warm)
    release.set()
    assert kept <= 2  # the stuck thread was not parked while it ran


# Hill climbing ------------------------------------------------------------------------------


def test_the_climber_climbs_while_throughput_rises(monkeypatch: pytest.MonkeyPatch) -> None:
    from pickpool._limits import Climber

    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    climber = Climber(start=8, cap=64)
    # A far side that serves as many at once as it is sent, up to 40: throughput = limit.
    for _ in range(60):
        clock[0] += 0.1
        climber.completed(int(min(climber.limit, 40) * 100 * 0.1))
    assert 36 <= climber.limit <= 48  # up from 8, and back near the knee at 40
    assert max(limit for limit, _ in climber.history) < 64


def test_the_climber_backs_off_when_more_threads_hurt(monkeypatch: pytest.MonkeyPatch) -> None:
    from pickpool._limits import Climber

    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    climber = Climber(start=32, cap=64)
    # Contention: every thread beyond 8 costs throughput.
    for _ in range(60):
        clock[0] += 0.1
        rate = 1000 - 20 * max(0, climber.limit - 8)
        climber.completed(int(rate * 0.1))
    assert climber.limit == 16  # down to its floor, half the start


def test_a_climbing_pool_adds_threads_for_waits_that_overlap() -> None:
    import dataclasses

    from pickpool._backends import Climb, Setup
    from pickpool._backends._threads import ThreadsBackend
    from pickpool._driver import drive

    backends: list[ThreadsBackend] = []

    def open_backend(setup: Setup) -> ThreadsBackend:
        backends.append(ThreadsBackend(setup))
        return backends[-1]

    def wait(x: int) -> int:
        time.sleep(0.005)
        return x

    setup = Setup(wait, 16, False, None, climb=Climb(2))
    run = dataclasses.replace(plan(model="threads", workers=16, window=64), adaptive=False)
    dones = list(drive(range(600), run, setup, open_backend))
    assert [d.value for d in dones] == list(range(600))
    climber = backends[0].climber
    assert climber is not None
    # Sleeping threads overlap: throughput follows the limit, so it climbed from 2.
    assert max(limit for limit, _ in climber.history) > 2
