"""What only processes have to get right: pickling, start methods, crashes, stuck items."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import pickpool
from pickpool._api import Model
from tests.helpers import crash, hang_on, identity, square_or_fail


def test_lambdas_and_closures_reach_processes(start_method: str) -> None:
    offset = 10
    assert pickpool.map(lambda x: x + offset, range(5), model="processes") == list(range(10, 15))


def test_every_start_method_gives_the_same_results(start_method: str) -> None:
    items = [(i, False) for i in range(30)]
    assert pickpool.map(square_or_fail, items, model="processes") == [i * i for i in range(30)]


def test_a_script_without_main_guard_works(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            """
            import pickpool

            class Point:
                def __init__(self, x):
                    self.x = x

            def norm(p):
                return Point(abs(p.x))

            out = pickpool.map(norm, [Point(-1), Point(2)], model="processes")
            print([p.x for p in out])
            print(pickpool.map(lambda x: x * 2, range(3), model="processes"))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[1, 2]", "[0, 2, 4]"]


def test_an_unpicklable_function_fails_at_once_with_advice() -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(TypeError, match=r"cannot send function .*uses_lock.*model='threads'"):
        pickpool.map(uses_lock, range(3), model="processes")
    with pytest.raises(TypeError, match=r"cannot send function .*uses_lock"):
        pickpool.imap(uses_lock, range(3), model="processes")  # at the call, not at next()


def test_an_unpicklable_item_is_named() -> None:
    items = [1, 2, threading.Lock()]
    with pytest.raises(TypeError, match=r"cannot send item 2 \(<unlocked _thread.lock.*threads"):
        pickpool.map(identity, items, model="processes", chunksize=1)


def test_an_unpicklable_result_fails_only_its_item() -> None:
    results = pickpool.map(
        lambda x: threading.Lock() if x == 1 else x, range(3), model="processes", on_error="collect"
    )
    assert (results[0], results[2]) == (0, 2)
    failure = results[1]
    assert isinstance(failure, pickpool.Failure)
    assert isinstance(failure.exception, TypeError)
    assert "cannot be sent back" in str(failure.exception)


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


def raise_awkward(x: int) -> int:
    raise NeedsTwoArgs(x, x)


def test_an_exception_whose_init_wants_other_args_arrives_as_itself() -> None:
    # Rebuilt from its state, without calling its __init__: `except NeedsTwoArgs` works.
    results = pickpool.map(raise_awkward, [1], model="processes", on_error="collect")
    failure = results[0]
    assert isinstance(failure, pickpool.Failure)
    assert isinstance(failure.exception, NeedsTwoArgs)
    assert str(failure.exception) == "1-1"


def test_a_crashing_worker_fails_only_its_item() -> None:
    results = pickpool.map(crash, range(8), model="processes", chunksize=4, on_error="collect")
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    failure = results[3]
    assert isinstance(failure, pickpool.Failure)
    assert isinstance(failure.exception, pickpool.WorkerCrashed)
    assert "exit code 7" in str(failure.exception)


def test_a_stuck_item_is_killed_and_the_rest_go_on() -> None:
    results = pickpool.map(
        hang_on, [1.0, -60.0, 2.0, 3.0], model="processes", timeout=1.0, on_error="collect"
    )
    assert [results[0], *results[2:]] == [1.0, 2.0, 3.0]
    assert isinstance(results[1], pickpool.Failure)
    assert isinstance(results[1].exception, pickpool.TaskTimeout)


@pytest.mark.leaves_threads
@pytest.mark.parametrize("model", ["threads", "asyncio", "serial"])
def test_timeouts_under_other_models(model: Model) -> None:
    results = pickpool.map(
        hang_on,
        # A thread cannot be killed: the abandoned one sleeps on a little after the test.
        [1.0, -3.0, 2.0],
        model=model,
        timeout=0.5,
        workers=2,
        on_error="collect",
    )
    assert (results[0], results[2]) == (1.0, 2.0)
    assert isinstance(results[1], pickpool.Failure)
    assert isinstance(results[1].exception, pickpool.TaskTimeout)


def test_an_async_timeout_cancels_the_await() -> None:
    import asyncio

    async def slow(x: float) -> float:
        await asyncio.sleep(x)
        return x

    results = pickpool.map(slow, [0.0, 30.0], model="asyncio", timeout=0.3, on_error="collect")
    assert results[0] == 0.0
    assert isinstance(results[1], pickpool.Failure)
    assert isinstance(results[1].exception, pickpool.TaskTimeout)


def test_in_a_daemonic_process_processes_are_refused_and_auto_does_without(
    tmp_path: Path,
) -> None:
    # A multiprocessing.Pool's worker may not start processes of its own: model="processes"
    # says so at once, auto picks another model, and the joblib backend runs the call in the
    # worker, with the warning joblib's own process backends give.
    script = tmp_path / "daemonic.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, warnings
            import joblib, pickpool, pickpool.joblib

            def crunch(x):
                return sum(i * x for i in range(20_000))

            def inside(_):
                try:
                    pickpool.map(crunch, range(4), model="processes")
                    refused = "ran"
                except pickpool.BackendUnavailable as exc:
                    refused = str(exc)
                auto = pickpool.map(crunch, range(40)) == [crunch(x) for x in range(40)]
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    with joblib.parallel_config(backend="pickpool"):
                        out = joblib.Parallel(n_jobs=2)(joblib.delayed(crunch)(x) for x in range(4))
                said = [str(w.message) for w in seen]
                return refused, auto, out == [crunch(x) for x in range(4)], said

            if __name__ == "__main__":
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    for line in pool.map(inside, [0])[0]:
                        print(line)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240, check=True
    )
    refused, auto, joblib_ran, said = done.stdout.splitlines()
    assert "daemonic process" in refused
    assert "model='threads'" in refused
    assert (auto, joblib_ran) == ("True", "True")
    assert "cannot start worker processes in a daemonic process" in said, done.stdout


def test_a_result_whose_pickling_exits_fails_alone_and_says_so() -> None:
    from tests.helpers import exits_when_pickled

    out = pickpool.map(exits_when_pickled, range(3), model="processes", on_error="collect")
    assert out[0] == 0
    assert out[2] == 2
    assert isinstance(out[1], pickpool.Failure)
    assert isinstance(out[1].exception, pickle.PicklingError)
    assert "SystemExit" in str(out[1].exception)
    with pickpool.Executor("processes", 1) as executor:
        with pytest.raises(pickle.PicklingError, match=r"the call .*cannot be sent back"):
            executor.submit(exits_when_pickled, 1).result()
        assert executor.submit(exits_when_pickled, 5).result() == 5
