"""model="auto": the probe's items and the rest make one run, each item computed exactly once.

What auto *chooses* is the cost model's business (test_advise.py); here the choice is forced
onto each model in turn, so that the seams between the probe's phases and the rest are tested
under every backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

import pickpool
from pickpool import _advise, _auto, _machine, lab
from pickpool._advise import Advice
from pickpool._api import OnError
from pickpool._options import Options
from tests.conftest import needs_the_gil
from tests.helpers import Boom, asquare_or_fail, hang_on, square_or_fail
from tests.test_semantics import Items, items_strategy, normalise, serial_loop


@pytest.fixture(params=["serial", "threads", "processes", "asyncio"])
def rest_model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Auto probes as usual, then runs the items left on this model (2 workers, chunks of 3)."""
    forced = str(request.param)
    decide = _advise.decide  # what _auto calls (it imports it from _advise)

    def forced_decide(*args: Any, **kwargs: Any) -> Advice:
        advice = decide(*args, **kwargs)
        options = kwargs.get("options")
        chunk = 1 if options is not None and options.timeout is not None else 3
        return dataclasses.replace(advice, model=forced, workers=2, chunksize=chunk)

    monkeypatch.setattr(_auto, "decide", forced_decide)
    return forced


def auto_run(fn: Any, items: Iterator[Any], *, length: int, workers: int | None = None) -> Any:
    """An auto run of a plain function, to look inside: its pilot, its decisions."""
    options = Options(workers=workers)
    return _auto.AutoRun(fn, items, is_async=False, length=length, options=options)


def record(folder: str, x: int) -> int:
    """Writes one line per call, so calls can be counted whatever process made them."""
    with open(os.path.join(folder, "calls"), "a") as f:
        f.write(f"{x}\n")
    return x * 2


def calls(folder: Path) -> list[int]:
    path = folder / "calls"
    return sorted(int(line) for line in path.read_text().split()) if path.exists() else []


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("on_error", ["raise", "collect", "skip"])
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=items_strategy)
def test_auto_returns_what_the_serial_loop_returns(
    rest_model: str, on_error: OnError, is_async: bool, items: Items
) -> None:
    fn = asquare_or_fail if is_async else square_or_fail
    expected, raised_at = serial_loop(items, on_error)
    if raised_at is not None:
        with pytest.raises(Boom, match=f"item {items[raised_at][0]} fails"):
            pickpool.map(fn, items, on_error=on_error)
        return
    assert normalise(pickpool.map(fn, items, on_error=on_error)) == expected


def test_every_item_is_computed_exactly_once(rest_model: str, tmp_path: Path) -> None:
    n = 300
    results = pickpool.map(functools.partial(record, str(tmp_path)), range(n))
    assert results == [2 * x for x in range(n)]
    assert calls(tmp_path) == list(range(n))


def test_unordered_auto_returns_every_item_once(rest_model: str, tmp_path: Path) -> None:
    got = pickpool.map(functools.partial(record, str(tmp_path)), range(200), ordered=False)
    assert sorted(got) == [2 * x for x in range(200)]
    assert calls(tmp_path) == list(range(200))


def test_a_failure_inside_the_probe_stops_the_run(rest_model: str, tmp_path: Path) -> None:
    # Item 1 fails while auto is still measuring: nothing after it starts once the probe
    # sees it, and the results before it came out.
    def fn(x: int) -> int:
        record(str(tmp_path), x)
        if x == 1:
            raise Boom("item 1 fails")
        return x

    results = pickpool.imap(fn, range(1000))
    assert next(results) == 0
    with pytest.raises(Boom, match="item 1 fails"):
        next(results)
    assert len(calls(tmp_path)) < 1000


def test_retries_under_auto(rest_model: str, tmp_path: Path) -> None:
    from tests.helpers import flaky

    got = pickpool.map(functools.partial(flaky, str(tmp_path)), range(40), retries=2)
    assert got == list(range(40))


@pytest.mark.leaves_threads
def test_timeout_under_auto(rest_model: str) -> None:
    items = [0.0, -30.0, 0.0] + [0.0] * 40 + [-30.0, 0.0]
    got = pickpool.map(hang_on, items, timeout=0.5, on_error="collect")
    failures = [r for r in got if isinstance(r, pickpool.Failure)]
    assert [f.index for f in failures] == [1, 43]
    assert all(isinstance(f.exception, pickpool.TaskTimeout) for f in failures)


def test_endless_input_under_auto(rest_model: str) -> None:
    results = pickpool.imap(lab.tiny, itertools.count())
    assert [next(results) for _ in range(5000)] == [lab.tiny(x) for x in range(5000)]
    results.close()


def test_amap_auto_keeps_coroutines_on_the_callers_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # The probe's coroutines and the rest (on asyncio) all run on the loop amap was awaited on,
    # so that they may use what it owns.
    seen: set[int] = set()

    async def fn(x: int) -> int:
        seen.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.001)
        return x

    async def main() -> tuple[list[int], int]:
        return await pickpool.amap(fn, range(200)), id(asyncio.get_running_loop())

    results, loop = asyncio.run(main())
    assert results == list(range(200))
    assert seen == {loop}


def test_amap_auto_with_a_blocking_model(rest_model: str) -> None:
    async def main() -> list[Any]:
        return await pickpool.amap(square_or_fail, [(x, False) for x in range(100)])

    assert asyncio.run(main()) == [x * x for x in range(100)]


def test_the_probe_is_a_small_part_of_a_long_run() -> None:
    # ~1 ms items, 3,000 of them: the probe may take at most a tenth of them and about its
    # budget of time; it must have seen enough to decide.
    items = [lab.CRUNCH_N // 25] * 3000
    run = auto_run(_crunch_n, iter(items), length=len(items))
    assert sum(1 for _ in run.dones()) == len(items)
    # (The first probe: on a busy machine the run may drift and probe again later.)
    first = run.decisions[0].evidence
    assert first.calls <= 300
    assert first.seconds < 2 * _auto.AUTO_BUDGET


def test_the_probe_of_tiny_items_takes_milliseconds() -> None:
    run = auto_run(lab.tiny, iter(range(1_000_000)), length=1_000_000)
    dones = run.dones()
    for _ in itertools.islice(dones, 100_000):
        pass
    dones.close()
    assert run.pilot.evidence is not None
    # A few milliseconds of probing, plus slack for a busy machine.
    assert run.pilot.evidence.seconds < 0.1
    assert run.advice is not None
    assert run.advice.model == "serial"


def test_workers_given_with_auto_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Advice] = []
    decide = _advise.decide

    def spy(*args: Any, **kwargs: Any) -> Advice:
        seen.append(decide(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(_auto, "decide", spy)
    assert pickpool.map(lab.blocking_wait, range(60), workers=3) == list(range(60))
    assert seen
    assert seen[0].workers == 3


def _crunch_n(n: int) -> int:
    total = 0
    for i in range(n):
        total = (total * 31 + i) % 1_000_003
    return total


def _not_reached() -> int:
    raise AssertionError("not reached")


def _never() -> Iterator[int]:
    """An input whose first read fails the test."""
    yield _not_reached()


def test_auto_checks_options_before_running_anything() -> None:
    with pytest.raises(ValueError, match="workers"):
        pickpool.map(_crunch_n, _never(), workers=0)
    with pytest.raises(ValueError, match="timeout"):
        pickpool.map(_crunch_n, _never(), timeout=-1)


def test_auto_on_an_empty_input() -> None:
    assert pickpool.map(lab.tiny, []) == []
    assert list(pickpool.imap(lab.tiny, iter([]))) == []


@pytest.mark.skipif(_machine.cores() < 2, reason="needs 2 cores")
@needs_the_gil  # (without it, pure Python computes in parallel on threads, in this process)
def test_auto_runs_processes_for_pure_python_cpu_work() -> None:
    # The end-to-end path: probe, decide processes, run the rest there.
    pids: set[int] = set()
    t0 = time.perf_counter()
    for pid in pickpool.map(_pid_after_crunch, range(60)):
        pids.add(pid)
    assert time.perf_counter() - t0 < 30
    assert len(pids) > 1  # the caller's process for the probe, workers for the rest


def _pid_after_crunch(x: int) -> int:
    lab.crunch(x)
    return os.getpid()


def test_the_watch_judges_pace_over_windows() -> None:
    from pickpool._auto import _Watch
    from pickpool._cursor import Cursor

    steady = _Watch(predicted=0.01)
    for _ in range(200):
        steady.saw(0.012, 1)  # 1.2x the prediction: noise, not drift
    assert steady.drift is None
    cursor = Cursor(iter(range(1000)), 1000)
    slower = _Watch(predicted=0.001)
    items = cursor.gate(slower.steady)
    for taken in range(1, 100):  # noqa: B007 - read after the loop
        assert len(items.take(1)) == 1
        slower.saw(0.03, 1)
        if slower.drift:
            break
    # Judged once it had watched two windows of 0.5 s and 10 items: 34 items of 30 ms.
    assert (slower.drift, taken) == ("slower", 34)
    assert items.take(1) == []  # no more items fed once it drifted
    assert items.ended
    assert cursor.taken == 34
    cursor = Cursor(iter(range(1000)), 1000)
    faster = _Watch(predicted=1.0)
    items = cursor.gate(faster.steady)
    while faster.drift is None and cursor.taken < 100:
        items.take(1)
        faster.saw(0.1, 1)
    assert (faster.drift, cursor.taken) == ("faster", 20)


def test_calls_that_wait_drift_only_when_this_process_computes() -> None:
    # A far side that slowed 10x (a server dropping connections, a quota): the limiter
    # follows it; a re-decision would throw away what it learnt. Only calls seen computing
    # (this process's CPU time rising with the wall clock) may be decided again.
    from pickpool._auto import COMPUTING, _Watch

    cpu = [0.0]
    idle = _Watch(predicted=0.001, waits=True, cpu_clock=lambda: cpu[0])
    for _ in range(500):
        idle.saw(0.01, 1)
    assert idle.drift is None
    busy = _Watch(predicted=0.001, waits=True, cpu_clock=lambda: cpu[0])
    for _ in range(500):
        cpu[0] += 0.01 * (COMPUTING + 0.5)  # more than COMPUTING cores' worth, in (fake) time
        busy.saw(0.01, 1)
        if busy.drift:
            break
    assert busy.drift == "slower"
    faster = _Watch(predicted=1.0, waits=True, cpu_clock=lambda: cpu[0])
    for _ in range(200):
        faster.saw(0.1, 1)
    assert faster.drift is None  # the limiter found more room: nothing to re-decide


def test_one_big_item_among_small_ones_is_not_a_drift() -> None:
    from pickpool._auto import _Watch

    skewed = _Watch(predicted=0.001)
    for n in range(2000):
        skewed.saw(0.6 if n % 500 == 7 else 0.001, 1)  # one item in 500 takes 600x the rest
    assert skewed.drift is None
    changed = _Watch(predicted=0.001)
    for _ in range(2000):
        changed.saw(0.01, 1)
        if changed.drift:
            break
    assert changed.drift == "slower"
    assert changed.pace == pytest.approx(0.01)


def drifting(x: int) -> int:
    """Waits at first, then computes: what suited threads now wants processes."""
    if x < 100:
        time.sleep(0.005)
        return x
    return _crunch_n(lab.CRUNCH_N // 2) * 0 + x  # ~12 ms: 20x the waits' pace on 8 threads


@pytest.mark.skipif(_machine.cores() < 2, reason="needs 2 cores")
@needs_the_gil  # (without it, threads that start computing may rightly stay threads)
def test_auto_re_decides_when_waiting_turns_into_computing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_auto, "DRIFT_WATCH", 0.1)
    run = auto_run(drifting, iter(range(250)), length=250, workers=8)
    assert [done.value for done in run.dones()] == list(range(250))
    models = [advice.model for advice in run.decisions]
    assert models[0] == "threads"
    assert len(models) >= 2
    # The re-decision moves off threads. (What comes after it, if that drifts too on a busy
    # machine, is judged on that machine's figures.)
    assert models[1] in ("processes", "serial"), [str(a) for a in run.decisions]


def test_a_run_out_of_re_decisions_still_runs_every_item(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every window "drifts" (the prediction is made absurd): auto re-decides its allowed
    # number of times, then runs the rest on its last choice. Nothing is lost.
    monkeypatch.setattr(_auto, "DRIFT_WATCH", 0.0)
    monkeypatch.setattr(_auto, "COMPUTING", 0.0)  # (calls that wait drift too, here)
    decide = _advise.decide

    def absurd(*args: Any, **kwargs: Any) -> Advice:
        return dataclasses.replace(decide(*args, **kwargs), pace=_auto.WATCH_MIN_PACE)

    monkeypatch.setattr(_auto, "decide", absurd)
    run = auto_run(lab.blocking_wait, iter(range(400)), length=400, workers=4)
    assert [done.value for done in run.dones()] == list(range(400))
    assert len(run.decisions) == _auto.MAX_REDECISIONS + 1


async def _await_1ms(x: int) -> int:
    import asyncio

    await asyncio.sleep(0.001)
    return x


@pytest.mark.parametrize("is_async", [False, True], ids=["plain", "coroutine"])
def test_amap_watches_and_re_decides_as_map_does(
    monkeypatch: pytest.MonkeyPatch, is_async: bool
) -> None:
    # One auto path: amap's run (the rest in a thread for a plain function, on the caller's
    # loop for a coroutine function) watches its pace and re-decides, as map's does.
    import asyncio

    from pickpool._schedule import Block

    monkeypatch.setattr(_auto, "DRIFT_WATCH", 0.0)
    monkeypatch.setattr(_auto, "COMPUTING", 0.0)  # (calls that wait drift too, here)
    decide = _advise.decide

    def absurd(*args: Any, **kwargs: Any) -> Advice:
        return dataclasses.replace(decide(*args, **kwargs), pace=_auto.WATCH_MIN_PACE)

    monkeypatch.setattr(_auto, "decide", absurd)
    fn = _await_1ms if is_async else lab.blocking_wait
    options = Options(workers=4)
    run = _auto.AutoRun(fn, iter(range(400)), is_async=is_async, length=400, options=options)

    async def main() -> list[Any]:
        out: list[Any] = []
        async for done in run.adones():
            out += done.values if isinstance(done, Block) else [done.value]
        return out

    assert asyncio.run(main()) == list(range(400))
    assert len(run.decisions) == _auto.MAX_REDECISIONS + 1


def test_slow_items_are_probed_with_as_few_calls_as_can_tell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A call alone takes half the budget (the budget made small here): one call alone is all
    # auto makes before it runs calls together, where a second one would cost the run, and
    # the run's limiter takes the calls that wait up from there (no rounds in the probe).
    monkeypatch.setattr(_auto, "AUTO_BUDGET", 0.2)
    monkeypatch.setattr(lab, "WAIT_SECONDS", 0.1)
    run = auto_run(lab.blocking_wait, iter(range(30)), length=30)
    pilot = run.pilot
    assert [done.value for done in run.dones()] == list(range(30))
    assert len(pilot.readings.alone) == 1
    assert pilot.evidence is not None
    assert pilot.evidence.ramp == ()


def test_calls_that_wait_run_under_the_limiter_from_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pickpool import _limits
    from pickpool._backends import _threads

    limiters: list[_limits.Limiter] = []

    class Recorded(_limits.Limiter):
        def __init__(self, start: int, cap: int, baseline: float) -> None:
            super().__init__(start, cap, baseline)
            limiters.append(self)

    monkeypatch.setattr(_threads, "Limiter", Recorded)
    monkeypatch.setattr(lab, "WAIT_SECONDS", 0.01)
    run = auto_run(lab.blocking_wait, iter(range(60)), length=60)
    assert [done.value for done in run.dones()] == list(range(60))
    # One call alone says it waits; the run starts RAMP_START at once, its limit moved by
    # their latency from the no-load latency that one call showed.
    assert len(run.pilot.readings.alone) == 1
    assert len(limiters) == 1
    assert limiters[0].history[0][0] == _auto.RAMP_START
    assert run.pilot.evidence is not None
    assert limiters[0]._floor <= run.pilot.evidence.wall


async def _await_20ms(x: int) -> int:
    import asyncio

    await asyncio.sleep(0.02)
    return x


def test_coroutines_start_the_limit_at_what_the_probe_ran_clean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The probe ran k coroutines at once, overlapping at the no-load latency: the run's limit
    # starts there, not at RAMP_START (a ramp's windows would cost a latency each).
    from pickpool import _limits
    from pickpool._backends import _loop

    starts: list[int] = []

    class Recorded(_limits.Limiter):
        def __init__(self, start: int, cap: int, baseline: float) -> None:
            super().__init__(start, cap, baseline)
            starts.append(start)

    monkeypatch.setattr(_loop, "Limiter", Recorded)
    run = _auto.AutoRun(_await_20ms, iter(range(200)), is_async=True, length=200, options=Options())
    from pickpool._schedule import Done

    assert [d.value for d in run.dones() if isinstance(d, Done)] == list(range(200))
    ev = run.pilot.evidence
    assert ev is not None
    assert ev.coroutines > _auto.RAMP_START
    assert ev.loop_blocked is not None
    assert ev.loop_blocked < 0.1
    assert starts == [ev.coroutines]
