"""A far side with a finite capacity: the latency-driven limit, retries that back off, caps.

The limiter is tested on made-up samples (exact); the servers run in processes of their own
(tests/farside.py), so that their threads do not share the client's GIL. Assertions are on
counts and failures, never on timings.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pickpool
from pickpool import _limits, _schedule
from pickpool._api import Model
from pickpool._limits import Limiter
from tests import farside

FLOOR = 0.02  # the calls' latency alone, in these made-up samples


def window(limiter: Limiter, latency: float, failed: int = 0, *, busy: bool = True) -> bool:
    """A window of completions at ``latency`` each (``failed`` of them failed), of calls that
    started after any earlier cut's wait (a cut judges only calls that start a latency later)."""
    items = max(4, limiter.limit // 2)
    if busy:
        limiter.saw(limiter.limit)
    later = time.monotonic() + 60.0
    return limiter.completed(
        [(later, latency, 0, items - failed), (later, latency, failed, failed)]
    )


# The limiter, on made-up samples ------------------------------------------------------------


def test_the_limit_doubles_while_latency_holds_then_stops_at_the_cap() -> None:
    limiter = Limiter(start=2, cap=64, baseline=FLOOR)
    seen = []
    for _ in range(7):
        window(limiter, FLOOR * 1.1)
        seen.append(limiter.limit)
    assert seen == [4, 8, 16, 32, 64, 64, 64]


def test_slow_start_ends_where_latency_begins_to_rise() -> None:
    # Within tolerance, but rising: the knee is near, so it grows by its square root (HyStart).
    limiter = Limiter(start=8, cap=128, baseline=FLOOR)
    window(limiter, FLOOR)
    assert limiter.limit == 16
    window(limiter, 1.5 * FLOOR)
    assert limiter.limit == 20
    window(limiter, FLOOR)
    assert limiter.limit == 24


def test_a_few_late_calls_do_not_end_slow_start() -> None:
    # A window whose least latency holds is no knee, whatever its mean: some calls were late
    # at the caller's end (a busy loop, a run starting up), none queued at the far side.
    limiter = Limiter(start=16, cap=1024, baseline=FLOOR)
    later = time.monotonic() + 60.0
    limiter.saw(16)
    limiter.completed([(later, FLOOR, 0, 4), (later, 2.2 * FLOOR, 0, 4)])  # mean 1.6x
    assert limiter.limit == 32
    limiter.saw(32)
    limiter.completed([(later, 1.3 * FLOOR, 0, 8), (later, 1.9 * FLOOR, 0, 8)])  # all late
    assert limiter.limit == 32 + round(math.sqrt(32))


def test_calls_start_paced_never_in_a_burst() -> None:
    limiter = Limiter(start=8, cap=128, baseline=FLOOR)
    # Twice the rate that keeps the limit running while it grows, 1.25x once it holds.
    assert limiter.pace == pytest.approx(FLOOR / 16)
    window(limiter, 1.5 * FLOOR)
    assert limiter.pace == pytest.approx(FLOOR / (limiter.limit * 1.25))


def test_an_idle_limit_is_not_raised() -> None:
    # The calls never used the room they had: more room would change nothing.
    limiter = Limiter(start=8, cap=64, baseline=FLOOR)
    assert not window(limiter, FLOOR, busy=False)
    assert limiter.limit == 8


def test_latency_past_the_knee_cuts_in_proportion() -> None:
    # A server that serves 8 at once: with 32 in flight each call waits 4 turns.
    limiter = Limiter(start=32, cap=64, baseline=FLOOR)
    window(limiter, 4 * FLOOR)
    assert limiter.limit == 16  # 32 x 2 / 4: back within twice the no-load latency
    window(limiter, 2.5 * FLOOR)
    assert limiter.limit == 13
    # Latency holds: it grows again, by about its square root, no longer doubling.
    window(limiter, 1.2 * FLOOR)
    assert limiter.limit == 17


def test_failures_cut_to_the_calls_that_went_through_at_most_halving() -> None:
    # 16 in flight, 8 refused (a far side that takes 8): 8 went through.
    limiter = Limiter(start=16, cap=64, baseline=FLOOR)
    window(limiter, FLOOR, failed=4)
    assert limiter.limit == 8
    # All but one refused: that is no measure of the far side; halve.
    limiter = Limiter(start=16, cap=64, baseline=FLOOR)
    window(limiter, FLOOR, failed=7)
    assert limiter.limit == 8
    # One in eight refused: just below.
    limiter = Limiter(start=32, cap=64, baseline=FLOOR)
    window(limiter, FLOOR, failed=2)
    assert limiter.limit == 28


def test_failures_set_a_ceiling_below_where_they_began() -> None:
    limiter = Limiter(start=16, cap=64, baseline=FLOOR)
    window(limiter, FLOOR, failed=4)
    assert limiter.limit == 8
    seen = []
    for _ in range(3 + 2 * Limiter.RECOVER):
        window(limiter, FLOOR)
        seen.append(limiter.limit)
    # Up to just below where calls failed, and one more every RECOVER clean windows there: a
    # far side that recovered is found again, slowly.
    assert seen[:3] == [11, 14, 15]
    assert seen[3 : 2 + Limiter.RECOVER] == [15] * (Limiter.RECOVER - 1)
    assert seen[-1] == 17


def test_one_cut_per_latency() -> None:
    # The calls that start right after a cut still meet the far side as the old limit left
    # it: their failures were acted on already.
    limiter = Limiter(start=16, cap=64, baseline=FLOOR)
    now = time.monotonic()  # (before the cut: started within its latency, whatever the clock)
    window(limiter, FLOOR, failed=4)
    assert limiter.limit == 8
    assert not limiter.completed([(now, FLOOR, 4, 4), (now, FLOOR, 4, 4)])
    assert limiter.limit == 8


def test_stuck_calls_cut_once_not_at_every_look() -> None:
    limiter = Limiter(start=32, cap=64, baseline=FLOOR)
    started = time.monotonic() - 1.5  # connections the far side dropped: retried after 1 s
    assert limiter.completed([], [started, started + 0.1])
    assert limiter.limit == 16
    assert not limiter.completed([], [started, started + 0.1])
    assert limiter.limit == 16


def test_one_slow_call_is_a_tail_not_a_dropped_connection() -> None:
    # One call past the stuck time among others that run: a far side's tail latency (a
    # retransmitted packet, a slow query), not its backlog dropping connections.
    limiter = Limiter(start=32, cap=64, baseline=FLOOR)
    now = time.monotonic()
    assert not limiter.completed([], [now - 1.5, now, now])
    assert limiter.limit == 32
    # Alone, it is all there is to judge by.
    assert limiter.completed([], [now - 1.5])
    assert limiter.limit == 16


class LimiterClock:
    """``time.monotonic`` for the limiter, moved by the test (the limiter's clock only)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> LimiterClock:
    """The limiter's clock, moved by the test."""
    moved = LimiterClock()
    monkeypatch.setattr(_limits, "time", moved)
    return moved


@pytest.fixture
def marks(monkeypatch: pytest.MonkeyPatch) -> _limits.Marks:
    """The process's late-connect marks, new for the test."""
    fresh = _limits.Marks()
    monkeypatch.setattr(_limits, "marks", fresh)
    return fresh


def clean(limiter: Limiter, windows: int) -> None:
    """``windows`` windows of calls at the no-load latency, none failed."""
    for _ in range(windows):
        window(limiter, FLOOR)


def test_after_stuck_calls_the_limit_goes_back_to_where_it_last_ran_clean(
    clock: LimiterClock,
) -> None:
    # Connections dropped past a listen backlog cost a second each: back to the limit before
    # the rise that dropped them (its calls all ran clean), the ceiling there, tried again only
    # after 8x what a stuck call cost, and twice as long after each new drop.
    limiter = Limiter(start=8, cap=128, baseline=FLOOR)
    clean(limiter, 2)
    assert limiter.limit == 32
    assert limiter.completed([], [clock.now - 1.5] * 2)  # stuck for 1.5 s: tried after 12 s
    assert limiter.limit == 16
    clean(limiter, 2 * Limiter.RECOVER)
    assert limiter.limit == 16  # clean windows, but not yet the time to try more
    clock.now += 12.5
    clean(limiter, Limiter.RECOVER)
    assert limiter.limit == 17
    rose = clock.now
    clock.now += 1.5
    assert limiter.completed([], [rose + 0.01] * 2)  # calls at 17 dropped: back to 16...
    assert limiter.limit == 16
    clock.now += 12.5  # ... and tried after 24 s, not 12
    clean(limiter, 2 * Limiter.RECOVER)
    assert limiter.limit == 16
    clock.now += 12.5
    clean(limiter, Limiter.RECOVER)
    assert limiter.limit == 17


def test_a_quick_refusal_keeps_its_place_for_a_no_load_latency() -> None:
    # A 429 answered in a millisecond would let its place send the next call at once: a
    # place cycling through refusals fills a window with them.
    limiter = Limiter(start=8, cap=64, baseline=FLOOR)
    assert limiter.hold(0.001, failed=True) == pytest.approx(FLOOR - 0.001)
    assert limiter.hold(0.001, failed=False) == 0.0
    assert limiter.hold(2 * FLOOR, failed=True) == 0.0


def test_a_rise_past_the_ceiling_that_breaks_goes_back_to_the_ceiling() -> None:
    limiter = Limiter(start=16, cap=64, baseline=FLOOR)
    window(limiter, FLOOR, failed=4)  # a ceiling at 15
    for _ in range(4 * Limiter.RECOVER):
        window(limiter, FLOOR)
        if limiter.limit == 16:
            break
    assert limiter.limit == 16  # tried again, one past the ceiling...
    window(limiter, FLOOR, failed=4)  # ... and it broke: back to 15, where calls ran clean
    assert limiter.limit == 15


def test_refusals_cut_no_lower_than_the_goodput_of_late_sustains(clock: LimiterClock) -> None:
    # A far side that takes 100 calls a second refuses every call for up to a second after a
    # burst. 100 calls a second of 20 ms is two at once: windows of refusals halve the limit
    # down to two, not one, and the ceiling stays where they went down to it.
    limiter = Limiter(start=64, cap=128, baseline=FLOOR)
    for _ in range(4):  # 1.28 s of 100 calls a second that succeeded (not a busy limit)
        clock.now += 0.32
        window(limiter, FLOOR, busy=False)
    assert limiter.limit == 64
    for _ in range(70):  # (a long run's many limits, set just now: the horizon is the run's)
        limiter._set(64)
    seen = []
    for _ in range(8):
        clock.now += FLOOR + 0.001
        window(limiter, FLOOR, failed=max(4, limiter.limit // 2))
        seen.append(limiter.limit)
    assert seen == [32, 16, 8, 4, 2, 2, 2, 2]
    # Clean again: back up to the ceiling, just below where refusals last cut (3).
    clock.now += 0.5
    clean(limiter, 2)
    assert limiter.limit == 3


def test_connects_marked_late_end_the_climb_where_they_began_then_cut_by_half_their_share(
    clock: LimiterClock, marks: _limits.Marks
) -> None:
    # A hedged connect marks the far side's full listen queue before any call is stuck (see
    # Marks). A rise waits until its first two rounds' connects could be marked; the first
    # marks end the climb at the limit in force when the first marked connect began; later
    # ones cut by half the share of the window marked (DCTCP), the ceiling left where it is.
    limiter = Limiter(start=8, cap=128, baseline=FLOOR)
    marks.arm(0.05)  # (the run's calls connect through a client that marks)
    clock.now += 2 * FLOOR + marks.horizon + 0.001
    clean(limiter, 1)
    assert limiter.limit == 16
    clean(limiter, 1)
    assert limiter.limit == 16  # (its connects could still be marked late: no rise yet)
    clock.now += 2 * FLOOR + marks.horizon + 0.001
    clean(limiter, 1)
    assert limiter.limit == 32
    clock.now += 0.01
    marks.note(clock.now - 0.02)  # begun under 16, marked now, read in the next window
    assert window(limiter, FLOOR)
    assert limiter.limit == 16
    clock.now += 1.0
    clean(limiter, Limiter.RECOVER)
    assert limiter.limit == 17  # the ceiling is found again, as any ceiling is
    clock.now += 0.05
    for _ in range(4):
        marks.note(clock.now - 0.01)  # 4 of the window's 8 calls: down by a quarter
    assert window(limiter, FLOOR)
    assert limiter.limit == 13
    clock.now += 1.0
    marks.note(clock.now - 5.0)  # begun before the last cut: it tells of the old limit
    clean(limiter, 3)
    assert limiter.limit == 17  # (back up to the ceiling, which later marks left as it was)


def test_marks_of_earlier_runs_reach_no_later_limiter(
    clock: LimiterClock, marks: _limits.Marks
) -> None:
    # A client that marked connects in an earlier run (its marks, its hedging wait) tells
    # nothing of a run whose calls do not connect through it: that run's rises do not wait
    # to be marked, and no old mark cuts them.
    marks.arm(math.inf)  # (a connect never hedged arms nothing)
    assert marks.horizon_since(clock.now) == 0.0
    marks.arm(0.05)
    marks.note(clock.now - 0.01)
    clock.now += 0.01
    limiter = Limiter(start=8, cap=128, baseline=FLOOR)
    clean(limiter, 3)
    assert limiter.limit == 64


def test_a_few_marks_beside_a_long_queue_cut_as_the_queue_does(
    clock: LimiterClock, marks: _limits.Marks
) -> None:
    # One connect in 32 marked cuts by 1/64 of the limit; calls at four times the no-load
    # latency say the far side queues them: the larger cut of the two.
    limiter = Limiter(start=64, cap=128, baseline=FLOOR)
    clock.now += 0.01
    marks.note(clock.now - 0.005)
    assert window(limiter, 4 * FLOOR)
    assert limiter.limit == round(64 * Limiter.TOLERANCE / 4)


def test_stuck_calls_are_judged_past_cuts_of_other_kinds(clock: LimiterClock) -> None:
    # Cuts for queueing (or marks) come every few windows; calls stuck since before them are
    # still a drop, not yet acted on.
    limiter = Limiter(start=32, cap=128, baseline=FLOOR)
    started = clock.now
    window(limiter, 3 * FLOOR)  # queueing: cut
    assert limiter.limit == 21
    clock.now += 1.5
    assert limiter.next_look([started, started]) == 0.0
    assert limiter.completed([], [started, started])
    assert limiter.limit <= 16
    assert limiter.next_look([started, started]) is None  # acted on once


def test_stuck_calls_go_back_below_the_limit_they_started_under(clock: LimiterClock) -> None:
    # A far side that drops past ~12: the limit doubled to 64 before the first dropped calls
    # could show (a dropped connection shows only when its retry is due). Calls stuck that
    # started at 16 send the limit below 16, to 8, in one step, not one step per second of
    # stuck calls (64, then 32, then 16).
    limiter = Limiter(start=8, cap=128, baseline=FLOOR)
    clean(limiter, 1)
    assert limiter.limit == 16
    at_16 = clock.now + 0.01
    clock.now += 0.02
    clean(limiter, 2)
    assert limiter.limit == 64
    clock.now += 1.5
    assert limiter.completed([], [at_16, at_16 + 0.01])
    assert limiter.limit == 8
    # The next drop, of calls started at 8, finds no clean limit below it: half.
    at_8 = clock.now + 0.1
    clock.now += 1.5
    assert limiter.completed([], [at_8, at_8])
    assert limiter.limit == 4


def test_stuck_calls_before_any_clean_rise_halve_the_limit() -> None:
    limiter = Limiter(start=32, cap=64, baseline=FLOOR)
    assert limiter.completed([], [time.monotonic() - 1.5] * 2)
    assert limiter.limit == 16


def test_the_limit_rises_only_once_the_last_rise_is_validated(clock: LimiterClock) -> None:
    limiter = Limiter(start=8, cap=128, baseline=FLOOR)
    window(limiter, FLOOR)
    assert limiter.limit == 16
    clock.now += FLOOR / 2
    before_rise = clock.now - FLOOR  # a call started before the limit rose to 16
    later = time.monotonic() + 60.0
    limiter.saw(16)
    assert not limiter.completed([(later, FLOOR, 0, 8)], [before_rise])
    assert limiter.limit == 16  # a round at 16 has not completed yet
    limiter.saw(16)
    assert limiter.completed([(later, FLOOR, 0, 8)], [clock.now])
    assert limiter.limit == 32
    # A call running past 4x the no-load latency (maybe one the far side dropped): hold.
    clock.now += 5 * FLOOR
    limiter.saw(32)
    assert not limiter.completed([(later, FLOOR, 0, 16)], [clock.now - 4.5 * FLOOR])
    assert limiter.limit == 32


def test_a_few_slow_calls_in_a_window_do_not_cut() -> None:
    # The median decides: three slow calls among eight are a busy moment at this end.
    limiter = Limiter(start=16, cap=16, baseline=FLOOR)
    later = time.monotonic() + 60.0
    limiter.saw(16)
    assert not limiter.completed([(later, FLOOR, 0, 5), (later, 10 * FLOOR, 0, 3)])
    assert limiter.limit == 16


def test_latency_past_the_tolerance_does_not_cut_while_throughput_still_rises() -> None:
    # On a busy machine 64 calls at 2.2x the no-load latency still complete more per second
    # than 32 at 1.2x: hold there; past that, cut.
    limiter = Limiter(start=32, cap=64, baseline=FLOOR)
    window(limiter, 1.2 * FLOOR)
    assert limiter.limit == 64
    window(limiter, 2.2 * FLOOR)  # 29 calls per latency, against 27: rising
    assert limiter.limit == 64
    window(limiter, 2.6 * FLOOR)  # 25: falling
    assert limiter.limit == 49  # 64 x 2 / 2.6


def test_a_call_counts_as_stuck_after_its_time_unless_it_started_before_a_cut() -> None:
    limiter = Limiter(start=8, cap=128, baseline=FLOOR)
    # 8 x 20 ms is too short to tell a slow call from a drop, a quarter of a second too on a
    # busy machine.
    assert limiter.stuck_after == 0.5
    assert limiter.next_look([time.monotonic()]) == pytest.approx(0.5, abs=0.05)
    assert limiter.next_look([time.monotonic() - 1.0]) == 0.0
    # Of several, the second oldest decides: one slow call alone is no signal.
    now = time.monotonic()
    assert limiter.next_look([now - 1.0, now]) == pytest.approx(0.5, abs=0.05)
    assert limiter.next_look([]) is None
    # Oldest first, as callers hand them: only the oldest are read.
    assert limiter.next_look(iter([now - 2.0, now - 1.0, *[now] * 10_000])) == 0.0
    before_cut = time.monotonic()
    assert limiter.completed([], [time.monotonic() - 1.0])  # cut
    assert limiter.next_look([before_cut]) is None  # started before the cut: not judged


def test_the_no_load_latency_follows_a_faster_far_side() -> None:
    limiter = Limiter(start=8, cap=64, baseline=10 * FLOOR)  # the probe met a slow moment
    window(limiter, FLOOR)
    assert limiter.limit == 16
    window(limiter, 3 * FLOOR)  # 3x the latency seen since: queueing
    assert limiter.limit == 11  # 16 x 2 / 3


def test_stuck_calls_are_seen_without_any_completion() -> None:
    # Every call stuck (connections dropped): nothing completes, and the limit must be cut all
    # the same, in the stuck time, not when the kernel's retry lets the calls through.
    from pickpool._backends import Climb, Setup
    from pickpool._backends._threads import ThreadsBackend

    release = threading.Event()
    backend = ThreadsBackend(
        Setup(lambda _: release.wait(30), 8, False, None, climb=Climb(4, 0.001))
    )
    try:
        assert backend.limiter is not None
        for i in range(4):
            backend.submit((i, i, [i]))
        # collect() comes back with nothing done, within the stuck time, until the calls
        # (once running: warm threads may take a moment to pick them up) count as stuck.
        for _ in range(40):
            assert backend.collect(None) == []
            if backend.limiter.limit != 4:
                break
        assert backend.limiter.limit == 2
    finally:
        release.set()
        backend.close(cancel=True)


# Retries back off ------------------------------------------------------------------------------


def test_backoff_doubles_with_full_jitter_and_a_ceiling() -> None:
    random.seed(7)
    firsts = [_schedule.backoff_delay(0.1, 2) for _ in range(2000)]
    thirds = [_schedule.backoff_delay(0.1, 4) for _ in range(2000)]
    assert min(firsts) >= 0
    assert max(firsts) <= 0.1
    assert 0.3 < max(thirds) <= 0.4
    assert sum(firsts) / len(firsts) == pytest.approx(0.05, rel=0.1)
    assert _schedule.backoff_delay(0.1, 60) <= _schedule.MAX_BACKOFF
    assert _schedule.backoff_delay(0.0, 3) == 0.0


class Clock:
    """When each item was tried, per item, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tries: dict[int, list[float]] = {}

    def fail_twice(self, x: int) -> int:
        with self.lock:
            tries = self.tries.setdefault(x, [])
            tries.append(time.monotonic())
            if len(tries) <= 2:
                raise ConnectionError(f"item {x}: try {len(tries)}")
        return x


@pytest.mark.parametrize("model", ["serial", "threads", "asyncio"])
def test_retries_wait_out_their_backoff(model: Model) -> None:
    clock = Clock()
    got = pickpool.map(clock.fail_twice, range(6), model=model, retries=2, backoff=0.05)
    assert got == list(range(6))
    for tries in clock.tries.values():
        assert len(tries) == 3
    # Each wait is drawn from [0, 0.05] then [0, 0.1]: across six items, some wait visibly.
    waits = [b - a for tries in clock.tries.values() for a, b in itertools.pairwise(tries)]
    assert max(waits) > 0.02


@pytest.mark.parametrize("model", ["threads", "processes"])
def test_waiting_out_a_backoff_does_not_burn_the_cpu(
    model: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing in flight but a retry due in 0.6 s: the driver sleeps, it does not poll.
    monkeypatch.setattr(_schedule, "backoff_delay", lambda backoff, attempt: 0.6)
    fn = functools.partial(_fails_once, str(tmp_path))
    cpu = time.process_time()
    got = pickpool.map(fn, [7], model=model, retries=1)
    assert got == [7]
    assert time.process_time() - cpu < 0.25


def _fails_once(folder: str, x: int) -> int:
    import pathlib

    mark = pathlib.Path(folder) / f"tried-{x}"
    if not mark.exists():
        mark.write_text("")
        raise ConnectionError(f"item {x}: first try")
    return x


def test_amap_retries_wait_out_their_backoff() -> None:
    import asyncio

    clock = Clock()

    async def fail_twice(x: int) -> int:
        return clock.fail_twice(x)

    got = asyncio.run(pickpool.amap(fail_twice, range(5), model="asyncio", retries=2))
    assert got == list(range(5))
    assert all(len(tries) == 3 for tries in clock.tries.values())


def test_a_bad_backoff_is_refused() -> None:
    with pytest.raises(ValueError, match="backoff"):
        pickpool.map(abs, [1], backoff=-1)
    with pytest.raises(TypeError, match="backoff"):
        pickpool.map(abs, [1], backoff="1s")  # type: ignore[call-overload]  # on purpose


# max_concurrency ----------------------------------------------------------------------------


class InFlight:
    """How many calls run at once, at most, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def call(self, x: int) -> int:
        self.hold(0.005)  # the workload: a call that waits
        return x

    def hold(self, seconds: float) -> float:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(seconds)
            return seconds
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("model", ["threads", "asyncio", "auto"])
def test_max_concurrency_caps_calls_in_flight(model: Model) -> None:
    seen = InFlight()
    got = pickpool.map(seen.call, range(200), model=model, max_concurrency=3)
    assert got == list(range(200))
    assert 1 <= seen.most <= 3


@pytest.mark.timeout(60)
@pytest.mark.leaves_threads
def test_calls_left_past_their_timeout_still_count_against_max_concurrency() -> None:
    # The far side still serves a call pickpool abandoned: it keeps its place until it returns,
    # and what waits behind three stuck places fails once it has waited a timeout's length.
    gauge = InFlight()
    seconds = [2.0] * 3 + [0.0] * 9
    got = pickpool.map(gauge.hold, seconds, model="threads", max_concurrency=3, timeout=0.3,
                       on_error="collect")  # fmt: skip
    assert gauge.most <= 3
    for index, failure in enumerate(got):
        assert isinstance(failure, pickpool.Failure), (index, failure)
        assert isinstance(failure.exception, pickpool.TaskTimeout)
        said = "ran longer than" if index < 3 else "could not start within"
        assert said in str(failure.exception), (index, str(failure.exception))


@pytest.mark.parametrize("is_async", [False, True], ids=["plain", "async"])
def test_max_concurrency_holds_for_computing_calls_under_auto(is_async: bool) -> None:
    # Calls that compute free of the GIL: the probe would run them together, but not past
    # the cap.
    import hashlib

    def digest(x: int) -> int:
        return hashlib.sha256(b"x" * 200_000).digest()[0] + x

    async def adigest(x: int) -> int:
        return digest(x)

    fn = adigest if is_async else digest
    got = pickpool.map(fn, range(300), max_concurrency=1)
    assert got == [digest(x) for x in range(300)]


def test_max_concurrency_and_more_workers_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="workers=8 is more than max_concurrency=4"):
        pickpool.map(abs, [1], model="threads", workers=8, max_concurrency=4)


# Servers with a finite capacity, in processes of their own -------------------------------------


@pytest.fixture(scope="module")
def quota() -> Iterator[str]:
    with farside.serve("ratelimit", delay=0.01, limit=4) as url:
        yield url


@pytest.mark.timeout(60)
def test_auto_against_a_quota_loses_no_item(quota: str) -> None:
    # 429 past 4 in flight. Retried with backoff, every item gets through, and the limit that
    # auto settles on sheds load instead of hammering.
    fn = functools.partial(farside.get, quota, timeout=10)
    got = pickpool.map(fn, range(200), retries=5, backoff=0.02)
    assert got == list(range(200))


@pytest.mark.timeout(60)
def test_a_knee_shows_in_the_probe() -> None:
    with farside.serve("capacity", delay=0.02, limit=2) as url:
        fn = functools.partial(farside.get, url, timeout=10)
        advice = pickpool.advise(fn, range(200))
    ramp = advice.evidence.ramp
    assert ramp, advice.evidence
    # Two at a time are served: latency grew by the round of 8 at the latest, and the ramp
    # stopped there rather than going on to 32.
    assert ramp[-1][0] <= 8, ramp
    assert ramp[-1][1] > 1.5 * advice.evidence.wall
    assert f"latency grew at {ramp[-1][0]} at once" in str(advice)
    assert advice.workers < 32


# max_rate ------------------------------------------------------------------------------------


class Starts:
    """When each call started (time.monotonic(), the same clock in every process)."""

    @staticmethod
    def call(x: int) -> float:
        return time.monotonic()

    @staticmethod
    async def acall(x: int) -> float:
        return time.monotonic()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["serial", "threads", "processes", "asyncio", "auto"])
def test_max_rate_spaces_out_the_starts(model: Model) -> None:
    rate, n = 50.0, 25
    if model == "processes":
        pickpool.map(Starts.call, range(4), model=model)  # workers up: it paces their calls
    starts = sorted(pickpool.map(Starts.call, range(n), model=model, max_rate=rate))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # A busy machine only delays starts; what pacing rules out is a burst (gaps near 0).
    assert starts[-1] - starts[0] >= (n - 1) / rate * 0.95
    assert min(gaps) > 0.5 / rate, gaps


def _tried(folder: str, x: int) -> int:
    """Notes when item ``x`` was tried (a line per try, from any process); the first two
    tries fail."""
    with open(os.path.join(folder, str(x)), "a") as f:
        f.write(f"{time.monotonic()}\n")
    with open(os.path.join(folder, str(x))) as f:
        if len(f.readlines()) <= 2:
            raise ConnectionError(f"item {x}: try failed")
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["serial", "threads", "processes", "asyncio", "auto"])
def test_retries_with_no_backoff_are_paced_too(model: Model, tmp_path: Path) -> None:
    # Every start counts against max_rate, a retry's as a first try's: 24 tries of 8 items at
    # 20 a second take 1.15 s at least, never a burst.
    rate = 20.0
    if model == "processes":
        # Workers up, this module imported in them: a worker still starting, or importing what
        # its function needs, begins its first calls late, and then together.
        pickpool.map(Starts.call, range(4), model=model)
    fn = functools.partial(_tried, str(tmp_path))
    got = pickpool.map(fn, range(8), model=model, retries=2, backoff=0, max_rate=rate)
    assert got == list(range(8))
    tries = sorted(float(line) for path in tmp_path.iterdir() for line in path.read_text().split())
    assert len(tries) == 24
    assert min(b - a for a, b in itertools.pairwise(tries)) > 0.5 / rate
    assert tries[-1] - tries[0] >= 23 / rate * 0.95


@pytest.mark.timeout(60)
def test_amap_paces_coroutines_and_their_retries() -> None:
    import asyncio

    rate = 50.0
    clock = Clock()

    async def fail_twice(x: int) -> float:
        clock.fail_twice(x)
        return time.monotonic()

    got = asyncio.run(pickpool.amap(fail_twice, range(6), retries=2, backoff=0.001, max_rate=rate))
    assert len(got) == 6
    tries = sorted(t for times in clock.tries.values() for t in times)
    assert len(tries) == 18  # three tries of each: every one of them paced
    assert min(b - a for a, b in itertools.pairwise(tries)) > 0.5 / rate


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["threads", "auto"])
def test_under_the_far_sides_rate_no_call_is_refused(model: Model) -> None:
    # 100 requests a second allowed; 90 a second asked: not one 429, where 8 threads unpaced
    # are refused.
    with farside.serve("rate", delay=0.01, rate=100) as url:
        fn = functools.partial(farside.get, url, timeout=10)
        got = pickpool.map(fn, range(120), model=model, max_rate=90, on_error="collect")
    assert got == list(range(120))


@pytest.mark.timeout(60)
def test_auto_against_a_rate_limit_loses_no_item() -> None:
    with farside.serve("rate", delay=0.01, rate=100) as url:
        fn = functools.partial(farside.get, url, timeout=10)
        got = pickpool.map(fn, range(200), retries=5, backoff=0.05)
    assert got == list(range(200))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["threads", "processes", "asyncio"])
def test_the_wait_for_a_start_is_not_part_of_the_timeout(model: Model) -> None:
    # 12 items at 20 a second: the last starts 0.55 s after the first, each runs ~0 s; a
    # 0.2 s timeout counted from when the item was handed over would fail most of them.
    got = pickpool.map(abs, range(12), model=model, max_rate=20, timeout=0.2, workers=4)
    assert got == list(range(12))


def test_a_bad_max_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="max_rate must be a positive"):
        pickpool.map(abs, [1], max_rate=0)
    with pytest.raises(TypeError, match="max_rate must be calls per second"):
        pickpool.map(abs, [1], max_rate="10/s")  # type: ignore[call-overload]  # on purpose
    with pytest.raises(ValueError, match="max_rate spaces out each call's start"):
        pickpool.map(abs, [1], model="threads", chunksize=4, max_rate=10)


class AsyncFarSide:
    """Coroutines against a far side that serves 2 at once: each answer takes longer the
    more are in flight (5 ms alone, 20 ms with 8 in flight)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    async def call(self, x: int) -> int:
        import asyncio

        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.005 * max(1.0, self.now / 2))  # the workload: a wait
            return x
        finally:
            self.now -= 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["map", "amap"])
def test_auto_holds_coroutines_near_the_far_sides_knee(how: str) -> None:
    # Unlimited, asyncio would start hundreds at once; the latency-driven limit keeps them
    # near the knee, well under that.
    import asyncio

    far = AsyncFarSide()
    if how == "map":
        got = pickpool.map(far.call, range(400))
    else:
        got = asyncio.run(pickpool.amap(far.call, range(400)))
    assert got == list(range(400))
    assert far.most <= 32, far.most


def test_stuck_coroutines_are_seen_without_any_completion() -> None:
    # The same under asyncio: coroutines whose connections were dropped complete nothing.
    import asyncio

    from pickpool._backends import Climb, Setup
    from pickpool._backends._loop import ItemRunner

    async def hang(_: object) -> None:
        await asyncio.Event().wait()

    async def main() -> int:
        runner = ItemRunner(Setup(hang, 8, True, None, climb=Climb(4, 0.001)), lambda _: None)
        assert runner.limiter is not None
        cut = asyncio.Event()
        limiter = runner.limiter
        judged = limiter.completed

        def completed(
            samples: list[tuple[float, float, int, int]], running: Iterable[float] = ()
        ) -> bool:
            moved = judged(samples, running)
            if moved:
                cut.set()
            return moved

        limiter.completed = completed  # type: ignore[method-assign]
        runner.start((0, 0, list(range(4))))
        try:
            await asyncio.wait_for(cut.wait(), 10)
        finally:
            await runner.cancel()
        return limiter.limit

    assert asyncio.run(main()) == 2


def ceiling_rises(limiter: Limiter, ceiling: int) -> list[int]:
    """Of 6 x RECOVER clean windows, those after which the limit rose from ``ceiling`` or
    above (the ceiling's own rises, once the limit has climbed back to it)."""
    rises = []
    for step in range(6 * Limiter.RECOVER):
        before = limiter.limit
        window(limiter, FLOOR)
        if limiter.limit > before >= ceiling:
            rises.append(step)
    return rises


def test_a_ceiling_that_breaks_again_is_tried_half_as_often() -> None:
    limiter = Limiter(start=16, cap=64, baseline=FLOOR)
    window(limiter, FLOOR, failed=4)  # the first failures: a ceiling at 15
    for _ in range(4 * Limiter.RECOVER):
        window(limiter, FLOOR)
        if limiter.limit == 16:
            break
    assert limiter.limit == 16  # the ceiling was tried again...
    window(limiter, FLOOR, failed=4)  # ... and broke again: back to 8, the ceiling at 15
    rises = ceiling_rises(limiter, 15)
    # Up to 15, then one more every 2 x RECOVER clean windows, not every RECOVER.
    assert len(rises) >= 2
    assert rises[1] - rises[0] == 2 * Limiter.RECOVER


def test_failures_below_the_ceiling_do_not_slow_its_recovery() -> None:
    # Failures that are not a rise past the ceiling (a far side's bad moment): the ceiling is
    # still tried every RECOVER clean windows.
    limiter = Limiter(start=16, cap=64, baseline=FLOOR)
    window(limiter, FLOOR, failed=4)  # a ceiling at 15
    window(limiter, FLOOR, failed=4)  # 8 -> 4, the ceiling at 7
    rises = ceiling_rises(limiter, 7)
    assert len(rises) >= 2
    assert rises[1] - rises[0] == Limiter.RECOVER


def test_paced_coroutines_fill_a_limit_past_a_start_a_millisecond() -> None:
    # A loop's timers fire to the millisecond: a timer per paced start would cap the starts at
    # ~1000 a second, and so the coroutines in flight at latency / 1 ms (20 here), whatever
    # the limit.
    import asyncio

    from pickpool._backends import Climb, Setup
    from pickpool._backends._loop import ItemRunner

    async def call(_: object) -> None:
        await asyncio.sleep(0.02)

    async def main() -> int:
        done = asyncio.Event()
        finished = 0

        def emit(outcomes: list[Any]) -> None:
            nonlocal finished
            finished += sum(len(o[2]) if o[1] == 3 else 1 for o in outcomes)
            if finished == 256:
                done.set()

        runner = ItemRunner(Setup(call, 512, True, None, climb=Climb(64, 0.02)), emit)
        assert runner.limiter is not None
        most = 0
        saw = runner.limiter.saw

        def seen(running: int) -> None:
            nonlocal most
            most = max(most, running)
            saw(running)

        runner.limiter.saw = seen  # type: ignore[method-assign]
        runner.start((0, 0, list(range(256))))
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            await runner.cancel()
        return most

    assert asyncio.run(main()) >= 48
