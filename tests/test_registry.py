"""A model is its module and one registry line: registered at run time, every part of pickpool
that chooses or runs a model considers it (auto, advise, the Executor, the joblib backend)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import joblib  # type: ignore[import-untyped]
import pytest

import pickpool
import pickpool.joblib  # (registers the joblib backend)
from pickpool import _backends
from pickpool._options import all_models
from tests import fake_model


def slow_double(x: int) -> int:
    time.sleep(0.001)
    return 2 * x


@pytest.fixture
def fake() -> Iterator[type[fake_model.FakeModelBackend]]:
    _backends.register("fake", "tests.fake_model")
    fake_model.FakeModelBackend.started = 0
    try:
        yield fake_model.FakeModelBackend
    finally:
        _backends.unregister("fake")
    assert "fake" not in all_models()


def test_a_registered_model_runs_by_name(fake: type[fake_model.FakeModelBackend]) -> None:
    assert "fake" in all_models()
    results = pickpool.map(slow_double, range(20), model="fake")  # type: ignore[arg-type]
    assert results == [2 * x for x in range(20)]
    assert fake.started == 1


def test_auto_and_advise_consider_a_registered_model(
    fake: type[fake_model.FakeModelBackend],
) -> None:
    advice = pickpool.advise(slow_double, range(100), budget=0.2)
    assert advice.model == "fake", str(advice)
    assert "fake" in advice.predicted
    results, report = pickpool.map(slow_double, range(200), report=True)
    assert results == [2 * x for x in range(200)]
    assert report.model == "fake"
    assert fake.started >= 1


def test_the_executor_routes_to_a_registered_model(fake: type[fake_model.FakeModelBackend]) -> None:
    with pickpool.Executor() as ex:
        assert [f.result() for f in [ex.submit(slow_double, x) for x in range(10)]] == [
            2 * x for x in range(10)
        ]
        assert ex.routes[f"{__name__}.slow_double"] == "fake"
    with pickpool.Executor("fake", 2) as ex:
        assert list(ex.map(slow_double, range(5))) == [0, 2, 4, 6, 8]
    assert fake.started >= 2


def test_the_joblib_backend_runs_on_a_registered_model(
    fake: type[fake_model.FakeModelBackend],
) -> None:
    tasks = [joblib.delayed(slow_double)(x) for x in range(20)]
    with joblib.parallel_config(backend="pickpool", model="fake", n_jobs=2):
        assert joblib.Parallel()(tasks) == [2 * x for x in range(20)]
    runs = fake.started
    assert runs >= 1
    with joblib.parallel_config(backend="pickpool", model="auto", n_jobs=2):
        assert joblib.Parallel(batch_size=1)(tasks) == [2 * x for x in range(20)]
    assert fake.started > runs  # auto routed the batches to it
