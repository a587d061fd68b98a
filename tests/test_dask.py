"""``model="dask"`` on a real dask.distributed ``LocalCluster``: worker processes on loopback."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pickpool

if TYPE_CHECKING:
    from distributed import Client

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

# The cluster restarts its worker processes (conftest also leaves dask's threads to dask).
pytestmark = pytest.mark.foreign_processes("Dask Worker")


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    # A task may kill one worker and be tried again, not three (a task that kills its workers
    # is reported after two deaths); a worker runs one task at a time, so that a dying task
    # takes no innocent one with it. (LocalCluster sets OMP_NUM_THREADS and the like in this
    # process for its workers, and leaves them: later tests' native pools would start at one.)
    environ = dict(os.environ)
    with (
        dask.config.set(
            {
                "distributed.scheduler.allowed-failures": 1,
                "distributed.scheduler.worker-saturation": 1.0,
            }
        ),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c
    os.environ.clear()
    os.environ.update(environ)


def square(x: int) -> int:
    return x * x


def fails_on_three(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(f"bad {x}")
    return x


def slow(x: int) -> int:
    time.sleep(0.05)
    return x


def dies_on_two(x: int) -> int:
    if x == 2:
        os._exit(13)
    return x


def worker_pid(_: object) -> int:
    return os.getpid()


@settings(max_examples=15, deadline=None)
@given(items=st.lists(st.integers(-1000, 1000), max_size=40), chunksize=st.integers(1, 8))
def test_dask_returns_what_the_loop_returns(
    client: Client, items: list[int], chunksize: int
) -> None:
    assert pickpool.map(square, items, model="dask", chunksize=chunksize) == [
        square(x) for x in items
    ]


def test_the_default_client_and_workers(client: Client) -> None:
    # No client= given: the active one; workers default to its threads (2).
    assert pickpool.map(square, range(50), model="dask") == [x * x for x in range(50)]
    assert pickpool.map(square, [3], model="dask", client=client) == [9]


def test_errors_are_those_of_every_model(client: Client) -> None:
    with pytest.raises(ValueError, match="bad 3"):
        pickpool.map(fails_on_three, range(20), model="dask")
    got = pickpool.map(fails_on_three, range(12), model="dask", on_error="collect")
    failures = [g for g in got if isinstance(g, pickpool.Failure)]
    assert [f.index for f in failures] == [3, 10]
    assert pickpool.map(fails_on_three, range(12), model="dask", on_error="skip") == [
        x for x in range(12) if x % 7 != 3
    ]


def test_unordered_and_streaming(client: Client) -> None:
    assert sorted(pickpool.imap(square, range(300), model="dask", ordered=False)) == sorted(
        x * x for x in range(300)
    )
    stream = pickpool.imap(square, iter(range(10**9)), model="dask")  # endless input
    assert [next(stream) for _ in range(5)] == [0, 1, 4, 9, 16]
    stream.close()


def test_a_timeout_fails_the_item_and_the_run_goes_on(client: Client) -> None:
    def sometimes_stuck(x: int) -> int:
        time.sleep(10 if x == 1 else 0)
        return x

    # (Unordered: a timed-out task's worker thread stays busy until its call returns, so items
    # sent after the timeout could queue behind it. A timeout of seconds: on a busy machine a
    # task of no time at all took over one.)
    got = pickpool.map(
        sometimes_stuck, range(4), model="dask", timeout=4, on_error="collect", ordered=False
    )
    failures = [g for g in got if isinstance(g, pickpool.Failure)]
    assert [(f.index, type(f.exception)) for f in failures] == [(1, pickpool.TaskTimeout)]
    assert sorted(g for g in got if not isinstance(g, pickpool.Failure)) == [0, 2, 3]


def test_a_worker_killed_mid_run_loses_nothing(client: Client) -> None:
    pids = set(client.run(os.getpid).values())
    results = pickpool.imap(slow, range(60), model="dask", chunksize=1)
    got = [next(results) for _ in range(5)]
    os.kill(min(pids), signal.SIGKILL)  # the nanny starts another; dask re-runs its tasks
    got += list(results)
    assert got == list(range(60))
    # (A new worker imports distributed: seconds of CPU, many more with other jobs on the cores.)
    client.wait_for_workers(2, timeout=90)


def test_an_item_that_kills_its_worker_fails_alone(client: Client) -> None:
    # A dying worker can take a task queued behind the culprit with it; retries (which cover
    # crashes, as under processes) run such an innocent item again.
    got = pickpool.map(
        dies_on_two, range(6), model="dask", chunksize=3, on_error="collect", retries=2
    )
    assert [g for i, g in enumerate(got) if i != 2] == [0, 1, 3, 4, 5]
    assert isinstance(got[2], pickpool.Failure)
    assert isinstance(got[2].exception, pickpool.WorkerCrashed)
    # (A new worker imports distributed: seconds of CPU, many more with other jobs on the cores.)
    client.wait_for_workers(2, timeout=90)


def test_client_is_only_for_dask() -> None:
    with pytest.raises(ValueError, match="client= is for model='dask'"):
        pickpool.map(square, range(3), model="threads", client=object())


def test_advise_weighs_the_active_cluster(client: Client) -> None:
    advice = pickpool.advise(slow, range(100))
    assert "dask" in advice.predicted
    assert advice.sizes["dask"][0] == 2  # the cluster's threads


def test_amap_runs_dask_from_inside_an_event_loop(client: Client) -> None:
    import asyncio

    async def main() -> list[int]:
        return await pickpool.amap(square, range(20), model="dask")

    assert asyncio.run(main()) == [x * x for x in range(20)]
