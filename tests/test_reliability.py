"""Exactly once, nothing dropped at exit, no hang, limits that hold: one test per broken
promise a hostile review found, each under every model it touches."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pickpool
from pickpool._api import Model
from tests import reliability_helpers as rh

ROOT = Path(__file__).resolve().parent.parent


def _python(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` run by a Python of its own, from the project's root; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


# An exception that comes back as something else --------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["processes", "threads", "serial"])
def test_an_exception_that_loads_as_something_else_fails_its_item(model: Model) -> None:
    fn = functools.partial(rh.raise_rebuilt_at, 3)
    got = pickpool.map(fn, range(6), model=model, on_error="collect")
    failure = got[3]
    assert isinstance(failure, pickpool.Failure)
    assert isinstance(failure.exception, BaseException)
    if model == "processes":  # (threads and serial never pickle it: it is itself)
        assert isinstance(failure.exception, pickpool.PickpoolError)
        assert "not an exception" in str(failure.exception)
        assert "__reduce__" in str(failure.exception)
    assert [r for i, r in enumerate(got) if i != 3] == [0, 1, 2, 4, 5]
    with pytest.raises(BaseException) as raised:
        pickpool.map(fn, range(6), model=model)
    assert isinstance(raised.value, Exception)


@pytest.mark.timeout(60)
def test_the_executor_resolves_a_call_whose_exception_loads_as_something_else() -> None:
    with pickpool.Executor("processes", 2) as ex:
        future = ex.submit(rh.raise_rebuilt_at, 3, 3)
        assert isinstance(future.exception(timeout=30), pickpool.PickpoolError)
        assert ex.submit(rh.raise_rebuilt_at, 3, 4).result(timeout=30) == 4


# The Executor ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_auto_never_makes_submitted_calls_wait_on_each_other() -> None:
    # Two calls that meet at a barrier: the first is auto's probe, the second would be held
    # behind it until it returned, which it never would. ThreadPoolExecutor runs both.
    barrier = threading.Barrier(2)
    with pickpool.Executor() as ex:
        futures = [ex.submit(rh.meet, barrier, x) for x in range(2)]
        assert [f.result(timeout=30) for f in futures] == [0, 1]
        assert ex.routes[f"{rh.__name__}.meet"] == "threads"


@pytest.mark.timeout(60)
def test_auto_still_holds_the_calls_of_a_function_that_computes() -> None:
    # Held while its first call computes (on a busy machine too, waiting for a core): they then
    # go where the decision says, all of them; not released to threads as if it waited.
    name = f"{rh.__name__}.spin"
    with pickpool.Executor() as ex:
        futures = [ex.submit(rh.spin, 0.05) for _ in range(6)]
        assert [f.result(timeout=30) for f in futures] == [0.05] * 6
        assert name in ex.advice, "released before its probe decided"
        assert ex.routes[name] == ex.advice[name].model


@pytest.mark.timeout(60)
@pytest.mark.leaves_threads
def test_a_serial_executor_honours_its_timeout() -> None:
    # One call at a time, as serial is; a call past the timeout fails with TaskTimeout (its
    # thread is left to finish in the background) and the next ones run.
    with pickpool.Executor("serial", timeout=0.5) as ex:
        stuck = ex.submit(rh.spin_then, 30.0, 1)
        after = [ex.submit(rh.spin_then, 0.0, x) for x in range(3)]
        assert isinstance(stuck.exception(timeout=20), pickpool.TaskTimeout)
        assert [f.result(timeout=20) for f in after] == [0, 1, 2]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", ["auto", "processes", "threads"])
def test_every_submitted_call_runs_before_the_interpreter_exits(model: str, tmp_path: Path) -> None:
    # As with the standard executors: a script that submits and ends without shutdown() (or
    # result()) still runs every call. Under auto the first call is timed alone and the others
    # go to processes while the interpreter is already exiting.
    script = (
        "import pickpool\n"
        "from tests import reliability_helpers as rh\n"
        f"ex = pickpool.Executor({model!r})\n"
        "for i in range(6):\n"
        f"    ex.submit(rh.spin_note, {str(tmp_path)!r}, 0.1, i)\n"
    )
    done = _python(script)
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == list(range(6)), done.stderr
    assert all(rh.runs(str(tmp_path), x) == 1 for x in range(6))


# Limits that hold ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("most", [1, 3])
def test_max_tasks_per_child_is_a_count_of_items(most: int) -> None:
    # A worker is replaced after that many items, however the items are chunked.
    pids = pickpool.map(rh.pid, range(24), model="processes", max_tasks_per_child=most)
    assert max(pids.count(p) for p in set(pids)) <= most
    assert len(set(pids)) >= 24 // most


# What the errors say ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_executor_names_the_call_not_an_item() -> None:
    with pickpool.Executor("processes", 2) as ex:
        [ex.submit(rh.pid, x).result() for x in range(5)]  # (internal counters move on)
        result_error = ex.submit(rh.a_lock, 7).exception(timeout=30)
        send_error = ex.submit(rh.pid, threading.Lock()).exception(timeout=30)
    for error in (result_error, send_error):
        assert error is not None
        assert "item" not in str(error), str(error)
    assert "the call reliability_helpers.a_lock(7)" in str(result_error).replace("tests.", "")
    assert "reliability_helpers.pid(<unlocked _thread.lock" in str(send_error).replace("tests.", "")
    assert isinstance(send_error, pickle.PicklingError)
    assert isinstance(send_error, TypeError)


# A fork's child -----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_forked_child_runs_on_workers_of_its_own() -> None:
    # The parent's fork server and executor lanes are the parent's: the child starts its own
    # (the standard executors fail there).
    script = (
        "import os, sys, pickpool\n"
        "from tests import reliability_helpers as rh\n"
        "assert pickpool.map(abs, range(-3, 0), model='processes') == [3, 2, 1]\n"
        "ex = pickpool.Executor('processes', 2)\n"
        "assert ex.submit(abs, -5).result() == 5\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        got = pickpool.map(abs, range(-3, 0), model='processes')\n"
        "        res = ex.submit(abs, -7).result(timeout=30)\n"
        "        auto = pickpool.map(rh.pid, range(4), model='processes')\n"
        "        print('child', got, res, len(auto), flush=True)\n"
        "        ex.shutdown()\n"
        "    finally:\n"
        "        os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "ex.shutdown()\n"
        "print('parent', status, flush=True)\n"
    )
    done = _python(script)
    assert "child [3, 2, 1] 7 4" in done.stdout, done.stdout + done.stderr
    assert "parent 0" in done.stdout, done.stdout + done.stderr


def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``pickpool ARGS`` in a process of its own (stdout and stderr captured unless given)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "pickpool.cli", *args],
        cwd=ROOT,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


@pytest.mark.timeout(120)
def test_the_cli_says_in_one_line_that_standard_input_is_closed() -> None:
    done = _cli("run", "pickpool.lab:tiny", "-", "--model", "serial", stdin=None,
                preexec_fn=lambda: os.close(0))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "pickpool: error: standard input is closed: give the items with --range, --items or --lines"
    ]


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("to", ["stdout", "--out"])
def test_the_cli_says_in_one_line_that_results_cannot_be_written(to: str) -> None:
    args = ["run", "pickpool.lab:tiny", "--range", "5", "--model", "serial"]
    if to == "--out":
        done = _cli(*args, "--out", "/dev/full")
    else:
        with open("/dev/full", "w") as full:
            done = _cli(*args, stdout=full)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pickpool: error: cannot write the results to "), done.stderr
    assert "No space left on device" in last


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_while_workers_start_prints_no_traceback(attempt: int) -> None:
    # Ctrl-C reaches the whole process group: a worker process, or the fork server, still
    # importing when it comes printed a KeyboardInterrupt traceback of its own. (Three
    # attempts: starting multiprocessing's resource tracker unblocked Ctrl-C for the fork
    # server started after it, about 1 start in 10, and a Ctrl-C then could be lost.)
    import psutil

    cli = subprocess.Popen(
        [sys.executable, "-m", "pickpool.cli", "run", "pickpool.lab:crunch", "--range", "400",
         "--model", "processes"],
        cwd=ROOT,
        env={**os.environ, "PICKPOOL_START_METHOD": "forkserver"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # (a process group of its own, as a terminal's job)
    )  # fmt: skip
    try:
        parent = psutil.Process(cli.pid)
        deadline = time.monotonic() + 30

        def fork_server_started() -> bool:
            # (multiprocessing's resource tracker, started first, is not it.)
            for child in parent.children():
                with contextlib.suppress(psutil.Error):
                    if "forkserver" in " ".join(child.cmdline()):
                        return True
            return False

        # As soon as the fork server exists: it is importing then.
        while not fork_server_started() and time.monotonic() < deadline and cli.poll() is None:
            time.sleep(0.001)
        os.killpg(cli.pid, signal.SIGINT)
        _, stderr = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
        if cli.stderr is not None:
            cli.stderr.close()  # (communicate() that timed out leaves it open)
    assert "Traceback" not in stderr, stderr
    if cli.returncode == 0:
        # Known and open: inside the whole suite of a fresh clone, the Ctrl-C is sometimes not
        # seen at all (the run finishes); never outside it so far.
        pytest.xfail(f"the Ctrl-C was not seen: {stderr.strip()[-200:]}")
    assert cli.returncode == 130, stderr


# The interpreter's exit ---------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attempt", range(3))
def test_a_daemon_thread_mid_run_at_exit_is_quiet(attempt: int) -> None:
    # The interpreter exits while a daemon thread runs map on worker processes: multiprocessing
    # terminates them; neither a "worker crashed" traceback nor one of multiprocessing's own.
    script = (
        "import threading, pickpool\n"
        "from tests import reliability_helpers as rh\n"
        "running = threading.Event()\n"
        "def work():\n"
        "    for _ in pickpool.imap(rh.spin, [0.02] * 400, model='processes'):\n"
        "        running.set()\n"
        "threading.Thread(target=work, daemon=True).start()\n"
        "assert running.wait(60)\n"
    )
    done = _python(script)
    assert done.stderr == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["map", "amap"])
def test_a_late_pacer_does_not_burst_to_catch_up(how: str) -> None:
    # A coroutine blocks the loop for 0.6 s: the calls whose starts fell due meanwhile start
    # one interval apart afterwards, not all at once.
    import asyncio

    rate = 20.0
    # Each call notes when it first ran, after the pacer let it start: a collection of this
    # test process's large heap, tens of milliseconds with the GIL held, would delay one
    # call's first step and bunch two notes (seen once in about a dozen runs of the suite).
    enabled = gc.isenabled()
    gc.disable()
    try:
        if how == "map":
            starts = pickpool.map(
                rh.block_loop_then_time, range(16), model="asyncio", max_rate=rate
            )
        else:
            starts = asyncio.run(
                pickpool.amap(rh.block_loop_then_time, range(16), model="asyncio", max_rate=rate)
            )
    finally:
        if enabled:
            gc.enable()
    gaps = [b - a for a, b in itertools.pairwise(sorted(starts))]
    assert min(gaps) > 0.5 / rate, [f"{g:.3f}" for g in gaps]


# Initializers -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.leaves_threads
@pytest.mark.parametrize("model", ["threads", "processes"])
def test_an_initializer_that_never_returns_fails_its_items_in_time(model: Model) -> None:
    started = time.monotonic()
    got = pickpool.map(abs, range(4), model=model, workers=2, timeout=1,
                       initializer=rh.hang_a_while, on_error="collect")  # fmt: skip
    assert time.monotonic() - started < 20
    for failure in got:
        assert isinstance(failure, pickpool.Failure)
        assert isinstance(failure.exception, pickpool.TaskTimeout)
        assert "initializer=hang_a_while" in str(failure.exception), failure.exception


@pytest.mark.timeout(60)
def test_an_initializer_that_ends_its_worker_is_named() -> None:
    got = pickpool.map(abs, range(3), model="processes", workers=1, chunksize=3,
                       initializer=rh.exit_3, on_error="collect")  # fmt: skip
    for failure in got:
        assert isinstance(failure, pickpool.Failure)
        assert isinstance(failure.exception, pickpool.WorkerCrashed)
        text = str(failure.exception)
        assert "initializer=exit_3" in text, text
        assert "exit code 3" in text, text
        assert "before any item started" in text, text


# max_concurrency with timeout ---------------------------------------------------------------


# Exactly once -------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("retries", [0, 2])
@pytest.mark.parametrize("chunksize", [None, 64])
def test_a_worker_crash_runs_no_finished_item_again(
    tmp_path: Path, retries: int, chunksize: int | None
) -> None:
    # Item 1000 ends its worker process mid-chunk: the items of its chunk that finished are
    # not run again, those after it run once, and it ran once, a try (plus the retries asked).
    folder = str(tmp_path)
    pickpool.map(rh.pid, range(8), model="processes")  # (workers warm, as after a warm-up)
    fn = functools.partial(rh.note_or_die_at, folder, 1000)
    got = pickpool.map(fn, range(5000), model="processes", chunksize=chunksize,
                       retries=retries, on_error="collect")  # fmt: skip
    failure = got[1000]
    assert isinstance(failure, pickpool.Failure)
    assert isinstance(failure.exception, pickpool.WorkerCrashed)
    assert failure.attempts == retries + 1
    assert [x for i, x in enumerate(got) if i != 1000] == [i for i in range(5000) if i != 1000]
    twice = [x for x in range(5000) if x != 1000 and rh.runs(folder, x) != 1]
    assert not twice, f"{len(twice)} items ran other than once, e.g. {twice[:5]}"
    assert rh.runs(folder, 1000) == retries + 1


@pytest.mark.timeout(60)
def test_what_a_dead_worker_sent_counts_when_a_send_finds_it_dead() -> None:
    # Item 0 fails (its failure goes to the parent at once, out of the worker's journal), then
    # item 1 ends the worker. A chunk sent to it before any collect read that failure finds it
    # dead: the failure is still read, not lost (the run used to wait for it for ever).
    from pickpool._backends import Setup, load
    from pickpool._task import ERROR, OK, expand

    backend = load("processes")(Setup(rh.fails_then_dies, 1, False, None, fresh=True))
    try:
        backend.submit((1, 0, [0, 1, 2]))
        (worker,) = backend._workers  # type: ignore[attr-defined]
        worker.process.join(30)  # dead, its messages unread
        assert worker.process.exitcode == 7
        backend.submit((2, 3, [3]))  # pipelined to the dead worker: the send fails
        got: dict[int, Any] = {}
        deadline = time.monotonic() + 30
        while len(got) < 4 and time.monotonic() < deadline:
            for outcome in backend.collect(1.0):
                for single in expand(outcome):
                    got.setdefault(single[0], single)
        assert sorted(got) == [0, 1, 2, 3]
        assert (got[0][1], type(got[0][2])) == (ERROR, ValueError)
        assert (got[1][1], type(got[1][2])) == (ERROR, pickpool.WorkerCrashed)
        assert got[3][1:3] == (OK, 3)
    finally:
        backend.close(cancel=True)


# imap one by one over an input fed from its results ----------------------------------------


class _Site:
    """A crawler's frontier: the pages to fetch, each queued as the result that links to it
    comes back; the input waits for them, and ends once every page is fetched."""

    def __init__(self) -> None:
        self._frontier: queue.Queue[int | None] = queue.Queue()
        self._frontier.put(0)
        self._pending = 1
        self.fetched: list[int] = []

    def pages(self) -> Iterator[int]:
        while (page := self._frontier.get()) is not None:
            yield page

    def saw(self, result: tuple[int, list[int]]) -> None:
        page, children = result
        self.fetched.append(page)
        self._pending += len(children) - 1
        for child in children:
            self._frontier.put(child)
        if not self._pending:
            self._frontier.put(None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("model", "fn"),
    [(m, rh.links) for m in ("threads", "processes", "asyncio", "auto", "serial")]
    + [(m, rh.alinks) for m in ("asyncio", "auto")],
)
def test_imap_one_by_one_hands_out_results_while_the_input_waits(model: Model, fn: Any) -> None:
    site = _Site()
    for result in pickpool.imap(fn, site.pages(), model=model, chunksize=1):
        site.saw(result)
    assert sorted(site.fetched) == list(range(31))


@pytest.mark.timeout(60)
def test_amap_one_by_one_hands_out_results_while_the_input_waits() -> None:
    site = _Site()

    async def crawl() -> None:
        async for result in pickpool.aimap(rh.alinks, site.pages(), chunksize=1):
            site.saw(result)

    asyncio.run(crawl())
    assert sorted(site.fetched) == list(range(31))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["threads", "processes"])
def test_an_input_read_in_a_helper_thread_raises_in_the_caller_after_its_items(
    model: Model,
) -> None:
    def pages() -> Iterator[int]:
        yield from range(5)
        raise ValueError("the input broke")

    got: list[int] = []

    def consume() -> None:
        got.extend(pickpool.imap(abs, pages(), model=model, chunksize=1))

    with pytest.raises(ValueError, match="the input broke"):
        consume()
    assert got == list(range(5))


@pytest.mark.timeout(60)
def test_a_consumer_that_stops_early_leaves_no_reader_behind() -> None:
    # The input is read no further than the run asks, and its thread ends with the run.
    read = []

    def pages() -> Iterator[int]:
        for x in itertools.count():
            read.append(x)
            yield x

    for x in pickpool.imap(abs, pages(), model="threads", workers=2, chunksize=1):
        if x == 3:
            break
    assert len(read) < 50
    assert not [t for t in threading.enumerate() if t.name == "pickpool-input"]


@pytest.mark.parametrize("chunksize", [1, 5])
def test_a_result_that_exits_as_it_loads_fails_only_its_item(chunksize: int) -> None:
    # Its __reduce__ calls sys.exit(1) in the parent: that item fails, nothing else does,
    # and the program goes on.
    fn = functools.partial(rh.exits_when_loaded_at, 2)
    got = pickpool.map(fn, range(5), model="processes", chunksize=chunksize, on_error="collect")
    assert [g for i, g in enumerate(got) if i != 2] == [0, 1, 3, 4]
    failure = got[2]
    assert isinstance(failure, pickpool.Failure)
    assert "cannot be rebuilt here" in str(failure.exception)
    assert "SystemExit(1)" in str(failure.exception)
    with pickpool.Executor(model="processes", max_workers=1) as executor:
        futures = [executor.submit(fn, x) for x in range(5)]
        assert [f.result() for i, f in enumerate(futures) if i != 2] == [0, 1, 3, 4]
        with pytest.raises(TypeError, match="SystemExit"):
            futures[2].result()


def test_a_worker_exception_with_a_cause_keeps_the_worker_s_traceback() -> None:
    with pytest.raises(rh.KeepsItsCause, match="outer 3") as info:
        pickpool.map(rh.raise_from, [3], model="processes")
    cause = info.value.__cause__
    assert cause is not None
    text = str(cause)
    assert "raise_from" in text  # where it was raised, in the worker
    assert "KeyError: 'inner 3'" in text  # and the cause it had there


def test_a_start_is_taken_in_one_step() -> None:
    # A look at the pacer and then a reservation, from two threads, let both start at once;
    # take() either takes the start due within the margin or tells how long until it is.
    from pickpool._pace import Pacer

    pacer = Pacer(0.05)
    assert pacer.take(0.001) == 0.0  # free now: taken
    later = pacer.take(0.001)  # the next is (up to) 50 ms away: not taken
    assert 0.0 < later <= 0.05
    assert pacer.take(0.001) <= later  # (the look before took nothing)
    assert pacer.take(0.06) == 0.0  # due within the margin: taken, the one after pushed on
    assert pacer.take(0.001) > later
