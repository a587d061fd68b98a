"""The demo's workloads give the same answers under every model, and the demo runs."""

from __future__ import annotations

import functools

import pytest

import pickpool
from pickpool import lab
from pickpool.lab import __main__ as demo


@pytest.mark.parametrize(
    "fn",
    [
        lab.crunch, lab.digest, lab.squeeze, lab.blocking_wait, lab.async_wait, lab.tiny,
        lab.mixed, lab.child, lab.async_blocking, lab.async_crunch,
    ],
)  # fmt: skip
def test_workloads_agree_across_models(model: str, fn: object) -> None:
    expected = pickpool.map(fn, range(4), model="serial")  # type: ignore[call-overload]
    assert pickpool.map(fn, range(4), model=model) == expected  # type: ignore[call-overload]


def test_demo_prints_the_table_and_a_verdict_per_workload(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    small = [(name, fn, 4, advised, why) for name, fn, _, advised, why in demo.WORKLOADS]
    monkeypatch.setattr(demo, "WORKLOADS", small)
    assert demo.main() == 0
    out = capsys.readouterr().out
    for model in ("serial", "threads", "processes", "asyncio", "auto"):
        assert model in out
    assert out.count("held") + out.count("did NOT hold") >= len(small)


def test_the_local_server_answers_every_model(model: str) -> None:
    with lab.server(0.001) as address:
        fetch = functools.partial(lab.fetch, address)
        assert pickpool.map(fetch, range(20), model=model) == list(range(20))


def test_sample_sum_reads_a_large_list() -> None:
    assert lab.sample_sum(list(range(31))) == 0 + 10 + 20 + 30
