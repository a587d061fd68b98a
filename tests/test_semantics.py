"""Every model returns what the serial loop returns, for any input and any failing positions."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pickpool
from pickpool._api import Model, OnError
from tests.helpers import Boom, asquare_or_fail, flaky, square_or_fail

Items = list[tuple[int, bool]]
items_strategy = st.lists(st.tuples(st.integers(-1000, 1000), st.booleans()), max_size=40).map(
    lambda xs: [(v, fail and i % 3 == 0) for i, (v, fail) in enumerate(xs)]
)

# Processes start a pool per call: fewer examples keep the suite quick on 2 cores.
EXAMPLES = {"serial": 60, "threads": 60, "asyncio": 60, "processes": 15}


def serial_loop(items: Items, on_error: OnError) -> tuple[list[Any], int | None]:
    """What a plain loop gives: the results, and the index of the exception it would raise."""
    out: list[Any] = []
    for index, item in enumerate(items):
        try:
            out.append(square_or_fail(item))
        except Boom:
            if on_error == "raise":
                return out, index
            if on_error == "collect":
                out.append(("failed", index))
    return out, None


def normalise(results: list[Any]) -> list[Any]:
    return [("failed", r.index) if isinstance(r, pickpool.Failure) else r for r in results]


def check(
    model: Model, fn: Callable[..., Any], items: Items, on_error: OnError, ordered: bool
) -> None:
    expected, raised_at = serial_loop(items, on_error)
    if raised_at is not None:
        with pytest.raises(Boom) as info:
            pickpool.map(fn, items, model=model, on_error=on_error, ordered=ordered)
        if ordered:
            assert str(info.value) == f"item {items[raised_at][0]} fails"
        return
    got = normalise(pickpool.map(fn, items, model=model, on_error=on_error, ordered=ordered))
    if ordered:
        assert got == expected
    else:
        assert sorted(got, key=repr) == sorted(expected, key=repr)


@pytest.mark.parametrize("on_error", ["raise", "collect", "skip"])
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("fn", [square_or_fail, asquare_or_fail], ids=["sync", "async"])
def test_every_model_matches_the_serial_loop(
    model: Model, on_error: OnError, ordered: bool, fn: Callable[..., Any]
) -> None:
    @settings(
        max_examples=EXAMPLES[model],
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(items=items_strategy)
    def prop(items: Items) -> None:
        check(model, fn, items, on_error, ordered)

    prop()


@settings(max_examples=25, deadline=None)
@given(items=items_strategy, chunksize=st.integers(1, 7), workers=st.integers(1, 4))
def test_chunking_never_changes_results(items: Items, chunksize: int, workers: int) -> None:
    for model in ("threads", "asyncio"):
        expected, _ = serial_loop(items, "collect")
        got = pickpool.map(
            square_or_fail,
            items,
            model=model,
            chunksize=chunksize,
            workers=workers,
            on_error="collect",
        )
        assert normalise(got) == expected


@pytest.mark.parametrize("chunksize", [1, 3, 50])
def test_process_chunks_give_the_same_results(chunksize: int) -> None:
    items = [(i, i % 7 == 0) for i in range(100)]
    expected, _ = serial_loop(items, "collect")
    got = pickpool.map(
        square_or_fail, items, model="processes", chunksize=chunksize, on_error="collect"
    )
    assert normalise(got) == expected


def test_failure_carries_index_item_exception_and_traceback(model: Model) -> None:
    items = [(1, False), (2, True), (3, False)]
    results = pickpool.map(square_or_fail, items, model=model, on_error="collect")
    failure = results[1]
    assert isinstance(failure, pickpool.Failure)
    assert (failure.index, failure.item, failure.attempts) == (1, (2, True), 1)
    assert isinstance(failure.exception, Boom)
    assert "square_or_fail" in failure.traceback
    assert "Boom: item 2 fails" in failure.traceback
    with pytest.raises(Boom):
        failure.unwrap()


def test_raise_keeps_the_exception_type_and_chains_the_worker_traceback() -> None:
    with pytest.raises(Boom) as info:
        pickpool.map(square_or_fail, [(1, False), (2, True)], model="processes")
    cause = info.value.__cause__
    assert cause is not None
    assert "square_or_fail" in str(cause)  # where it happened, in the worker


@pytest.mark.parametrize("model", ["auto", "serial", "threads", "processes", "asyncio"])
def test_a_raised_failure_names_its_item_and_index(model: Model) -> None:
    items = [(1, False), (2, False), (3, True), (4, False)]
    with pytest.raises(Boom) as info:
        pickpool.map(square_or_fail, items, model=model)
    assert "pickpool: raised by item 2: (3, True)" in info.value.__notes__


def test_raise_stops_starting_work_after_the_failure() -> None:
    started: list[int] = []

    def record(x: int) -> int:
        started.append(x)
        if x == 2:
            raise Boom("stop here")
        return x

    with pytest.raises(Boom):
        pickpool.map(record, range(1000), model="serial")
    assert started == [0, 1, 2]
    started.clear()
    with pytest.raises(Boom):
        pickpool.map(record, range(10_000), model="threads", workers=2)
    assert len(started) < 100  # a bounded window, not the whole input


def test_retries_try_again_and_count_attempts(model: Model, tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path / "a"))
    (tmp_path / "a").mkdir()
    assert pickpool.map(fn, range(6), model=model, retries=2) == list(range(6))
    (tmp_path / "b").mkdir()
    fn = functools.partial(flaky, str(tmp_path / "b"))
    results = pickpool.map(fn, range(4), model=model, retries=1, on_error="collect")
    failures = [r for r in results if isinstance(r, pickpool.Failure)]
    assert [(f.index, f.attempts) for f in failures] == [(1, 2), (3, 2)]
    assert [(tmp_path / "b" / str(i)).read_text() for i in range(4)] == [".", "..", ".", ".."]


def test_async_functions_run_under_every_model(model: Model) -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0.001)
        return 2 * x

    assert pickpool.map(double, range(20), model=model) == [2 * x for x in range(20)]
