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
    small = [dataclasses.replace(w, quick=4) for w in demo.WORKLOADS]
    plot = tmp_path / "demo.png"
    assert demo.main(quick=True, plot=plot, workloads=small) == 0
    out = capsys.readouterr().out
    for model in ("serial", "threads", "processes", "asyncio", "auto"):
        assert model in out
    assert out.count("held") + out.count("did NOT hold") == len(small)
    assert plot.read_bytes().startswith(b"\x89PNG")


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
