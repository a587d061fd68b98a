"""The public surface: names, argument checks, helpful errors, import cost."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pickpool
from pickpool import _machine
from pickpool._api import Model
from tests.helpers import identity, where


def test_all_is_exactly_the_public_api() -> None:
    assert sorted(pickpool.__all__) == sorted(
        [
            "Advice",
            "AsyncResults",
            "BackendUnavailable",
            "BenchResult",
            "BenchRow",
            "Executor",
            "Failure",
            "Leg",
            "PickpoolError",
            "Report",
            "Results",
            "TaskTimeout",
            "WorkerCrashed",
            "advise",
            "aimap",
            "amap",
            "bench",
            "imap",
            "map",
            "star",
            "starmap",
        ]
    )
    for name in pickpool.__all__:
        assert getattr(pickpool, name).__doc__, f"{name} has no docstring"


def test_importing_pickpool_loads_only_what_is_used() -> None:
    # A worker (a process, a sub-interpreter) imports pickpool to run calls: the probe and
    # the cost model load on first use of a name that needs them, and every public name
    # finds its module.
    code = (
        "import sys, pickpool\n"
        "assert 'pickpool._advise' not in sys.modules, sorted(sys.modules)\n"
        "assert set(pickpool._HOMES) == set(pickpool.__all__)\n"
        "from pickpool import *\n"
        "assert 'pickpool._advise' in sys.modules\n"
        "assert pickpool.map is map and 'map' in dir(pickpool)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["map", "advise", "Executor", "bench"])
def test_help_names_every_parameter(name: str) -> None:
    """help() is where users look first; the others (imap, amap...) take map's options and
    say so."""
    obj = getattr(pickpool, name)
    doc = inspect.getdoc(obj) or ""
    params = inspect.signature(obj).parameters
    missing = [p for p in params if p != "self" and not re.search(rf"\b{p}\b", doc)]
    assert not missing, f"help(pickpool.{name}) does not explain {missing}"


def test_import_is_light() -> None:
    code = (
        "import sys, pickpool; "
        "heavy = {'multiprocessing', 'asyncio', 'rich', 'cloudpickle'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_inherit_the_nearest_builtin() -> None:
    assert issubclass(pickpool.TaskTimeout, TimeoutError)
    assert issubclass(pickpool.WorkerCrashed, RuntimeError)
    assert issubclass(pickpool.BackendUnavailable, LookupError)
    for cls in (pickpool.TaskTimeout, pickpool.WorkerCrashed, pickpool.BackendUnavailable):
        assert issubclass(cls, pickpool.PickpoolError)


def test_unknown_model_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'serial'.*'threads'.*'processes'.*'asyncio'"):
        pickpool.map(abs, [1], model="gpu")  # type: ignore[arg-type]  # on purpose


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"workers": 0}, ValueError, "workers must be at least 1"),
        ({"workers": 2.5}, TypeError, "workers must be a whole number"),
        ({"workers": True}, TypeError, "workers must be a whole number"),
        ({"chunksize": -1}, ValueError, "chunksize must be at least 1"),
        ({"timeout": 0}, ValueError, "timeout must be a positive number"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a positive number"),
        ({"timeout": "5"}, TypeError, "timeout must be seconds"),
        ({"timeout": 1, "chunksize": 4}, ValueError, "needs chunksize=1"),
        ({"retries": -1}, ValueError, "retries must be 0 or more"),
        ({"retries": 1.5}, TypeError, "retries must be a whole number"),
        ({"on_error": "ignore"}, ValueError, "on_error must be one of"),
        ({"ordered": "yes"}, TypeError, "ordered must be True or False"),
        ({"progress": "sometimes"}, ValueError, "progress must be"),
        ({"model": 3}, TypeError, "model must be a string"),
    ],
)
def test_bad_options_fail_before_any_work(kwargs: dict[str, Any], error: type, match: str) -> None:
    consumed: list[int] = []

    def items() -> Any:
        for i in range(3):
            consumed.append(i)
            yield i

    with pytest.raises(error, match=match):
        pickpool.map(identity, items(), **kwargs)
    with pytest.raises(error, match=match):
        pickpool.imap(identity, items(), **kwargs)  # checked at the call, not at first next()
    assert consumed == []


def test_non_callable_and_non_iterable() -> None:
    # Wrong types on purpose (hence the ignores): the checks at run time are under test.
    with pytest.raises(TypeError, match="fn must be a callable"):
        pickpool.map(42, [1])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="items must be an iterable"):
        pickpool.map(abs, 42)  # type: ignore[call-overload]


def test_star_unpacks_arguments(model: Model) -> None:
    assert pickpool.map(pickpool.star(pow), [(2, 3), (3, 2)], model=model) == [8, 9]

    async def add(a: int, b: int) -> int:
        return a + b

    assert pickpool.map(pickpool.star(add), [(1, 2), (3, 4)], model=model) == [3, 7]


def test_work_really_runs_elsewhere() -> None:
    import os
    import threading

    me = (os.getpid(), threading.get_ident())
    on_threads = pickpool.map(where, range(8), model="threads", workers=4)
    assert {pid for pid, _ in on_threads} == {me[0]}
    assert len({tid for _, tid in on_threads}) > 1
    assert me[1] not in {t for _, t in on_threads}
    on_processes = pickpool.map(where, range(8), model="processes", workers=2, chunksize=1)
    assert len({pid for pid, _ in on_processes}) == 2
    assert me[0] not in {p for p, _ in on_processes}
    serially = pickpool.map(where, range(3), model="serial")
    assert set(serially) == {me}


def test_default_workers_follow_usable_cores() -> None:
    from pickpool._options import default_workers

    cores = _machine.cores()
    assert default_workers("processes", is_async=False) == cores
    assert default_workers("threads", is_async=False) == min(64, 8 * cores)
    assert default_workers("asyncio", is_async=True) == 1024
    assert default_workers("serial", is_async=False) == 1


def test_usable_cores_honours_a_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _machine.usable_cores(cgroup_root=tmp_path) == min(2, _machine._affinity_count())
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert _machine.usable_cores(cgroup_root=tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _machine.usable_cores(cgroup_root=tmp_path) == _machine._affinity_count()
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _machine.usable_cores(cgroup_root=v1) == 1


def test_progress_bar_when_forced(capsys: pytest.CaptureFixture[str]) -> None:
    assert pickpool.map(identity, range(5), model="threads", progress="always") == list(range(5))
    err = capsys.readouterr().err
    assert "5/5" in err
