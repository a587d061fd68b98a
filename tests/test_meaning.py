"""auto never changes what a program means: memory the function writes, the event loop its
coroutines belong to, per-worker state; and the options that say so (``require``,
``worker_state``) hold on every model."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import joblib  # type: ignore[import-untyped]
import pytest

import pickpool
from pickpool import _backends
from pickpool._api import Model
from tests import farside
from tests import meaning_helpers as mh
from tests.test_capacity import InFlight

SHARED = [m for m in _backends.MODELS if _backends.traits(m).shares_memory]


@pytest.fixture
def seen() -> Iterator[list[int]]:
    mh.SEEN.clear()
    yield mh.SEEN
    mh.SEEN.clear()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "numbers.db")
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE numbers (n INTEGER PRIMARY KEY, value INTEGER)")
        connection.executemany("INSERT INTO numbers VALUES (?, ?)", [(n, n * n) for n in range(80)])
    connection.close()
    yield path
    mh.disconnect()  # (a plain initializer's connection, made in this process by a loop)


# Memory the function writes to ----------------------------------------------------------------


@pytest.mark.parametrize("model", ["auto", *SHARED])
def test_require_sharedmem_keeps_every_write_in_the_caller(model: Model, seen: list[int]) -> None:
    # Pure-Python computing: without require, auto would run it in other processes.
    results, report = pickpool.map(
        mh.note_computing, range(60), model=model, require="sharedmem", report=True
    )
    assert results == list(range(60))
    assert sorted(seen) == list(range(60))
    assert _backends.traits(report.model).shares_memory


def test_require_sharedmem_with_a_model_that_does_not_share_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"require='sharedmem'.*model='processes'"):
        pickpool.map(abs, [1], model="processes", require="sharedmem")
    with pytest.raises(ValueError, match="require must be 'sharedmem' or None"):
        pickpool.map(abs, [1], require="shared")  # type: ignore[call-overload]


def test_advise_under_require_sharedmem_keeps_to_models_that_share() -> None:
    advice = pickpool.advise(mh.note_computing, range(200), require="sharedmem")
    assert _backends.traits(advice.model).shares_memory
    # Where its own predictions put a model that does not share memory first, it says why
    # it did not advise that one. (Judged on one probe: two may read a busy machine apart.)
    fastest = min(advice.predicted, key=lambda model: advice.predicted[model])
    if not _backends.traits(fastest).shares_memory:
        assert any("require='sharedmem'" in reason for reason in advice.reasons), str(advice)


def test_the_executor_under_require_sharedmem_routes_to_threads(seen: list[int]) -> None:
    with pickpool.Executor(require="sharedmem") as executor:
        assert list(executor.map(mh.note_computing, range(40))) == list(range(40))
        routes = executor.routes
    assert sorted(seen) == list(range(40))
    assert all(_backends.traits(m).shares_memory for m in routes.values()), routes


def test_joblib_require_sharedmem_under_auto_keeps_writes(seen: list[int]) -> None:
    import pickpool.joblib  # noqa: F401 - registers the backend

    with joblib.parallel_config(backend="pickpool", model="auto", n_jobs=2):
        out = joblib.Parallel(require="sharedmem")(
            joblib.delayed(mh.note_computing)(n) for n in range(40)
        )
    assert out == list(range(40))
    assert sorted(seen) == list(range(40))


# Per-worker state -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["auto", *_backends.MODELS])
def test_worker_state_gives_each_worker_its_own(model: Model, database: str) -> None:
    # A sqlite connection may only be used by the thread that made it: each worker's own.
    results = pickpool.map(
        mh.query,
        range(80),
        model=model,
        initializer=mh.open_connection,
        initargs=(database,),
        worker_state=True,
    )
    assert [value for value, _ in results] == [n * n for n in range(80)]


@pytest.mark.parametrize("model", ["threads", "asyncio"])
def test_worker_state_is_one_per_thread(model: Model) -> None:
    pairs = pickpool.map(
        mh.thread_and_state,
        range(64),
        model=model,
        workers=4,
        initializer=mh.new_state,
        worker_state=True,
    )
    states_of: dict[int, set[int]] = {}
    for thread, state in pairs:
        states_of.setdefault(thread, set()).add(state)
    assert all(len(states) == 1 for states in states_of.values()), states_of
    assert len({s for states in states_of.values() for s in states}) == len(states_of)


def test_worker_state_comes_first_with_several_iterables_and_starmap() -> None:
    got = pickpool.map(
        mh.add, [1, 2], [10, 20], initializer=mh.new_state, worker_state=True, model="threads"
    )
    assert got == [11, 22]
    got = pickpool.starmap(
        mh.add, [(1, 10), (2, 20)], initializer=mh.new_state, worker_state=True, model="threads"
    )
    assert got == [11, 22]


@pytest.mark.parametrize("model", ["asyncio", "threads", "processes", "auto"])
def test_an_async_initializer_makes_the_state_on_the_loop_that_uses_it(model: Model) -> None:
    same = pickpool.map(
        mh.aloop_of_state,
        range(30),
        model=model,
        initializer=mh.anew_state,
        worker_state=True,
    )
    assert same == [True] * 30


def test_a_failing_state_fails_that_worker_s_items_with_a_note() -> None:
    got = pickpool.map(
        mh.use, range(5), model="serial", initializer=mh.refuse, worker_state=True,
        on_error="collect",
    )  # fmt: skip
    assert all(isinstance(g, pickpool.Failure) for g in got)
    error = got[0].exception
    assert isinstance(error, RuntimeError)
    assert any("made a worker's state" in note for note in error.__notes__)


def test_worker_state_needs_an_initializer_and_a_matching_fn() -> None:
    with pytest.raises(ValueError, match="pass initializer="):
        pickpool.map(abs, [1], worker_state=True)
    with pytest.raises(TypeError, match="async def"):
        pickpool.map(mh.use, [1], initializer=mh.anew_state, worker_state=True)


def test_auto_with_a_global_setting_initializer_never_shares_the_global(database: str) -> None:
    # The calls wait (auto's pick would be threads), but the initializer's global connection
    # must be each worker's own: auto keeps to a plain loop or processes.
    for _ in range(3):
        results, report = pickpool.map(
            mh.query_global, range(80), initializer=mh.connect, initargs=(database,),
            report=True,
        )  # fmt: skip
        assert results == [n * n for n in range(80)]
        assert _backends.traits(report.model).worker_globals, report.model
        assert report.advice is not None
        predicted = report.advice.predicted
        fastest = min(predicted, key=lambda m: predicted[m])
        assert any("worker_state=True" in r for r in report.advice.reasons) or (
            report.advice.model == fastest
        )


def test_the_executor_with_a_global_setting_initializer_routes_to_processes(
    database: str,
) -> None:
    with pickpool.Executor(initializer=mh.connect, initargs=(database,)) as executor:
        assert list(executor.map(mh.query_global, range(20))) == [n * n for n in range(20)]
        assert set(executor.routes.values()) <= {"processes"}
    with pytest.raises(ValueError, match="drop one of them"):
        pickpool.Executor(initializer=mh.connect, initargs=(database,), require="sharedmem")


# The caller's event loop ----------------------------------------------------------------------


async def fetch(session: aiohttp.ClientSession, url: str, n: int) -> int:
    async with session.get(f"{url}/{n}") as response:
        return int(await response.text())


@pytest.mark.timeout(120)
def test_amap_runs_coroutines_on_the_caller_s_loop_with_its_session() -> None:
    async def main(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            fn = functools.partial(fetch, session, url)
            for _ in range(4):
                assert await pickpool.amap(fn, range(60)) == list(range(60))
                assert [n async for n in pickpool.aimap(fn, range(30))] == list(range(30))
            with pytest.raises(ValueError, match="belongs to this event loop"):
                await pickpool.amap(fn, range(3), model="threads")
            with pytest.raises(ValueError, match="argument 1 \\(ClientSession"):
                [n async for n in pickpool.aimap(fn, range(3), model="processes")]

    with farside.serve("roomy", delay=0.01) as url:
        asyncio.run(main(url))


def test_map_of_coroutines_that_wait_picks_asyncio() -> None:
    _, report = pickpool.map(mh.await_a_while, range(200), report=True)
    assert report.model == "asyncio"


def test_auto_may_run_calls_elsewhere_and_says_so() -> None:
    # The documentation a user reads first tells them.
    doc = pickpool.map.__doc__ or ""
    assert "other processes" in doc
    assert 'require="sharedmem"' in doc
    assert "worker_state=True" in doc
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert 'require="sharedmem"' in readme
    assert "worker_state=True" in readme


# The report tells what ran ----------------------------------------------------------------------


def test_a_report_lists_every_leg_and_the_workers_that_ran() -> None:
    results, report = pickpool.map(mh.await_a_while, range(150), report=True)
    assert results == list(range(150))
    assert sum(leg.items for leg in report.legs) == 150
    probes = [leg for leg in report.legs if leg.probe]
    runs = [leg for leg in report.legs if not leg.probe]
    assert probes
    assert runs
    assert all(leg.why.startswith("auto's probe") for leg in probes)
    assert runs[0].why.startswith("auto decided")
    assert (report.model, report.workers) == (runs[-1].model, runs[-1].workers)
    assert all(leg.seconds > 0 and leg.workers >= 1 for leg in report.legs)


@pytest.mark.parametrize("model", _backends.MODELS)
def test_a_given_model_reports_one_leg_and_the_most_calls_at_once(model: Model) -> None:
    results, report = pickpool.map(mh.spin_for, [0.002] * 40, model=model, workers=4, report=True)
    assert len(results) == 40
    (leg,) = report.legs
    assert (leg.model, leg.items, leg.probe) == (report.model, 40, False)
    assert leg.why == f"model={model!r} given"
    assert 1 <= report.workers <= (1 if model == "serial" else 4)
    assert leg.first is not None
    assert leg.first <= leg.seconds


def test_auto_reports_the_calls_that_ran_not_the_limiter_s_ceiling() -> None:
    # Calls that wait: auto's limiter may climb to 128 threads; 100 items never run 128 at once.
    tracker = InFlight()
    _, report = pickpool.map(tracker.call, range(100), report=True)
    assert report.model == "threads"
    assert tracker.most <= report.workers <= 100


def test_amap_and_aimap_give_their_report() -> None:
    async def main() -> None:
        results, report = await pickpool.amap(mh.await_a_while, range(40), report=True)
        assert results == list(range(40))
        assert report.done == 40
        assert report.legs
        assert report.seconds > 0
        async with pickpool.aimap(mh.await_a_while, range(30), model="asyncio") as got:
            assert [n async for n in got] == list(range(30))
        assert got.report.done == 30
        assert got.report.legs[0].model == "asyncio"
        with pytest.raises(TypeError, match=r"has \.report"):
            pickpool.aimap(abs, [1], report=True)  # type: ignore[call-overload]

    asyncio.run(main())


# A switch of model must pay -------------------------------------------------------------------


def _after_a_drift(ran: str, ev: Any, pace_seen: float) -> Any:
    """What ``_worth_switching`` reads of an auto run that drifted on ``ran``."""
    from types import SimpleNamespace

    from pickpool._advise import decide
    from pickpool._options import Options

    first = decide(ev, items=200, choices=(ran,))
    return SimpleNamespace(
        decisions=[first],
        pace_seen=pace_seen,
        cursor=SimpleNamespace(remaining=lambda: 200),
        options=Options(),
        observed={ran: pace_seen},
    )


def test_a_switch_is_taken_when_it_saves_enough_and_kept_when_not() -> None:
    from pickpool._advise import decide
    from pickpool._auto import SWITCH_SAVING, _worth_switching
    from tests.test_advise import evidence

    computing = evidence(gil_held=0.97)  # pure Python, now; threads ran it before
    to_processes = decide(computing, items=200, choices=("processes",))

    def predicted(staying: float, going: float) -> Any:
        return dataclasses.replace(to_processes, predicted={"threads": staying, "processes": going})

    # Staying is seen to cost 10 s, processes predict 2 s: switch.
    slow = _after_a_drift("threads", computing, pace_seen=10 / 200)
    assert _worth_switching(slow, computing, predicted(10.0, 2.0)).model == "processes"
    # Processes predict a saving of less than SWITCH_SAVING: keep threads, and say why.
    near = 10.0 * (1 - SWITCH_SAVING / 2)
    kept = _worth_switching(slow, computing, predicted(10.0, near))
    assert kept.model == "threads"
    assert "a switch must save a fifth" in kept.reasons[-1]
    # The pace seen counts even where the prediction for staying is better.
    assert _worth_switching(slow, computing, predicted(1.0, 2.0)).model == "processes"


def test_calls_that_wait_keep_their_model_when_the_far_side_slows() -> None:
    from pickpool._advise import decide
    from pickpool._auto import _worth_switching
    from tests.test_advise import evidence

    waiting = evidence(cpu=0.0005, wall=0.025)
    to_processes = decide(waiting, items=200, choices=("processes",))
    slow = _after_a_drift("threads", waiting, pace_seen=0.5)
    kept = _worth_switching(slow, waiting, to_processes)
    assert kept.model == "threads"
    assert "far side" in kept.reasons[-1]


def test_worker_state_lifts_the_models_a_plain_initializer_cannot_use() -> None:
    # dask and sub-interpreters run no initializer; under worker_state fn makes its state.
    from pickpool._options import check, worker_options

    with pytest.raises(ValueError, match="pass worker_state=True"):
        worker_options("dask", mh.new_state, (), None)
    assert worker_options("dask", mh.new_state, (), None, worker_state=True)[0] is mh.new_state
    options = check(model="processes", initializer=mh.new_state, worker_state=True)
    setup = options.setup(abs, options.plan("processes", is_async=False), is_async=False)
    assert setup.initializer is None
    assert not options.fresh_workers


@pytest.mark.parametrize("model", ["auto", *_backends.MODELS])
@pytest.mark.parametrize("is_async", [False, True])
def test_each_worker_s_state_is_closed_when_it_is_done(
    model: Model, is_async: bool, tmp_path: Path
) -> None:
    fn, make = (mh.ause_marked, mh.amarked) if is_async else (mh.use_marked, mh.marked)
    got = pickpool.map(
        fn, range(40), model=model, initializer=make, initargs=(str(tmp_path),),
        worker_state=True, fresh_workers=True,
    )  # fmt: skip
    assert got == list(range(40))
    states = list(tmp_path.iterdir())
    assert states
    assert {p.read_text() for p in states} == {"closed"}, [p.read_text() for p in states]


class _HasAReleaseMethod:
    """A user's callable that happens to have a method pickpool's own wrappers have a
    likeness of: pickpool never calls it."""

    def __init__(self) -> None:
        self.released = 0

    def __call__(self, x: int) -> int:
        return x

    def release_state(self) -> None:
        self.released += 1


@pytest.mark.parametrize("model", ["serial", "threads", "asyncio"])
def test_a_user_s_own_release_method_is_left_alone(model: Model) -> None:
    fn = _HasAReleaseMethod()
    assert pickpool.map(fn, range(5), model=model) == list(range(5))
    assert fn.released == 0
