"""The demo's workloads give the same answers under every model, and the demo runs."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pickpool
from pickpool import lab
from pickpool._api import Model
from pickpool.lab import __main__ as demo


@pytest.mark.parametrize(
    "fn",
    [
        lab.crunch, lab.digest, lab.squeeze, lab.blocking_wait, lab.async_wait, lab.tiny,
        lab.mixed, lab.child, lab.async_blocking, lab.async_crunch,
    ],
)  # fmt: skip
def test_workloads_agree_across_models(model: Model, fn: Callable[[int], object]) -> None:
    expected = pickpool.map(fn, range(4), model="serial")
    assert pickpool.map(fn, range(4), model=model) == expected


def test_demo_prints_the_table_a_verdict_per_workload_and_the_plot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs the demo extra (matplotlib)")
    small = [dataclasses.replace(w, quick=4) for w in demo.WORKLOADS]
    plot = tmp_path / "demo.png"
    assert demo.main(quick=True, plot=plot, workloads=small) == 0
    out = capsys.readouterr().out
    for model in ("serial", "threads", "processes", "asyncio", "auto"):
        assert model in out
    verdicts = ("held:", "did NOT hold:", "too close to tell on this busy machine:")
    assert sum(out.count(v) for v in verdicts) == len(small)
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_the_demo_says_when_the_machine_is_too_busy_to_judge(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # (The machine's busyness read as a computing thread waiting for a core half the time.)
    monkeypatch.setattr(demo, "waiting_for_a_core", lambda: 0.5)
    small = [dataclasses.replace(w, quick=4) for w in demo.WORKLOADS[:1]]
    assert demo.main(quick=True, workloads=small) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "The machine was busy: a computing thread waited for a core 50% of the time" in out


@pytest.mark.parametrize(
    ("busy", "said"), [(0.5, "too close to tell on this busy machine"), (0.0, "did NOT hold")]
)
def test_a_near_miss_on_a_busy_machine_is_too_close_to_tell(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, busy: float, said: str
) -> None:
    # The advised model took 1.3x the fastest, timed twice: a miss on a quiet machine, within
    # what a busy one's load can make of it.
    seconds = {"serial": 1.0, "threads": 2.0, "processes": 1.3, "asyncio": 2.0}
    monkeypatch.setattr(demo, "_time", lambda fn, n, model: seconds[model])
    monkeypatch.setattr(demo, "waiting_for_a_core", lambda: busy)
    pure_python = [dataclasses.replace(demo.WORKLOADS[0], quick=4)]
    assert demo.main(quick=True, workloads=pure_python) == 0
    assert f"{said}: pure-Python CPU" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("model", ["serial", "threads", "processes", "asyncio"])
@pytest.mark.parametrize("client", [lab.http_get, lab.ahttp_get], ids=["blocking", "async"])
def test_the_http_lab_answers_every_model(model: Model, client: Any) -> None:
    with lab.http_server(0.001) as url:
        fetch = functools.partial(client, url)
        assert pickpool.map(fetch, range(20), model=model) == list(range(20))


def test_the_async_client_works_without_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import fails: the streams client
    with lab.http_server(0.001) as url:
        assert asyncio.run(lab.ahttp_get(url, 7)) == 7


def test_the_local_server_answers_every_model(model: Model) -> None:
    with lab.server(0.001) as address:
        fetch = functools.partial(lab.fetch, address)
        assert pickpool.map(fetch, range(20), model=model) == list(range(20))


def test_sample_sum_reads_a_large_list() -> None:
    assert lab.sample_sum(list(range(31))) == 0 + 10 + 20 + 30
