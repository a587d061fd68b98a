"""What a run shows: logging, the report, ``imap`` as a context manager, progress, and the
semantics users rely on under processes (their own exceptions, their logging)."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

import pickpool
from pickpool import cli, lab
from pickpool._api import Model
from tests.conftest import MODELS, _children
from tests.helpers import identity


class KeywordOnly(Exception):
    """A common shape in real code: ``__init__`` does not take its ``args``."""

    def __init__(self, *, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


def raise_keyword_only(x: int) -> int:
    raise KeywordOnly(code=x)


def log_and_return(x: int) -> int:
    logging.getLogger("pickpool_tests.worker").warning("item %d from the worker", x)
    return x


def fail_three_once(x: int) -> int:
    if x == 3 and not fail_three_once.__dict__.setdefault("done", False):
        fail_three_once.__dict__["done"] = True
        raise ConnectionError("refused")
    return x


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("pickpool")
    handler = Keep(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.timeout(60)
def test_auto_logs_what_it_measured_and_chose(
    records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab, "WAIT_SECONDS", 0.005)
    pickpool.map(lab.blocking_wait, range(60))
    lines = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert any(line.startswith("probe: ") and "a call alone" in line for line in lines), lines
    chose = [line for line in lines if line.startswith("auto chose ")]
    assert len(chose) == 1
    assert "threads" in chose[0]
    assert "blocking-io" in chose[0]
    assert "predicted" in chose[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["serial", "threads", "asyncio"])  # (the flag is in-process)
def test_each_retry_is_a_warning(records: list[logging.LogRecord], model: Model) -> None:
    fail_three_once.__dict__.pop("done", None)
    got = pickpool.map(fail_three_once, range(6), model=model, retries=1, backoff=0)
    assert got == list(range(6))
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == ["item 3 failed (ConnectionError: refused); retry 1 of 1 at once"]


@pytest.mark.timeout(60)
def test_a_crash_is_a_warning(records: list[logging.LogRecord]) -> None:
    from tests.helpers import crash

    got = pickpool.map(crash, [1, 3, 2], model="processes", on_error="collect")
    assert isinstance(got[1], pickpool.Failure)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("item 1: WorkerCrashed")


def test_the_library_is_silent_unless_logging_is_configured() -> None:
    logger = logging.getLogger("pickpool")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)


@pytest.mark.timeout(60)
def test_map_hands_back_a_report_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "WAIT_SECONDS", 0.005)
    results, report = pickpool.map(lab.blocking_wait, range(40), report=True)
    assert results == list(range(40))
    assert report.model == "threads"
    assert report.advice is not None
    assert report.advice.model == "threads"
    assert report.decisions == [report.advice]
    assert report.done == 40
    assert report.failed == []
    assert report.skipped == []
    assert report.seconds > 0
    assert "40 items" in str(report)
    # The common call is unchanged: a list.
    assert type(pickpool.map(identity, range(3), model="threads")) is list


@pytest.mark.parametrize("model", MODELS)
def test_the_report_counts_failures_retries_and_skips(model: Model) -> None:
    items = [(1, False), (2, True), (3, False), (4, True)]
    from tests.helpers import square_or_fail

    results, report = pickpool.map(
        square_or_fail, items, model=model, on_error="skip", retries=2, backoff=0, report=True
    )
    assert results == [1, 9]
    assert report.model == model
    assert report.advice is None
    assert report.done == 4
    assert report.failed == [1, 3]
    assert report.skipped == [1, 3]
    assert report.retries == 4


@pytest.mark.timeout(60)
def test_with_imap_and_break_leaves_no_worker() -> None:
    before = _children()
    with pickpool.imap(identity, range(10_000), model="processes", fresh_workers=True) as results:
        for value in results:
            if value == 5:
                break
        assert _children() - before  # the workers are running
    assert _children() <= before
    assert results.report.done >= 6
    assert results.report.model == "processes"


@pytest.mark.timeout(60)
def test_imap_carries_auto_s_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "WAIT_SECONDS", 0.005)
    with pickpool.imap(lab.blocking_wait, range(40)) as results:
        before = results.advice
        assert before is None  # nothing has run yet
        assert list(results) == list(range(40))
    assert results.advice is not None
    assert results.report.model == results.advice.model == "threads"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", ["processes", "threads", "serial"])
def test_an_exception_whose_init_is_keyword_only_arrives_as_itself(model: Model) -> None:
    with pytest.raises(KeywordOnly) as caught:
        pickpool.map(raise_keyword_only, [7], model=model)
    assert caught.value.code == 7
    assert str(caught.value) == "code 7"
    (failure,) = pickpool.map(raise_keyword_only, [8], model=model, on_error="collect")
    assert isinstance(failure, pickpool.Failure)
    assert isinstance(failure.exception, KeywordOnly)
    assert failure.exception.code == 8


@pytest.mark.timeout(60)
def test_a_worker_process_s_log_records_reach_the_parent_s_handlers() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(process)d %(message)s"))
    logger = logging.getLogger("pickpool_tests.worker")
    logger.addHandler(handler)
    try:
        assert pickpool.map(log_and_return, range(3), model="processes", workers=2) == [0, 1, 2]
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert sorted(line.split()[-4] for line in lines) == ["0", "1", "2"], lines
    # Logged in the workers, not here.
    assert all(int(line.split()[1]) != psutil.Process().pid for line in lines)


def nested(x: int) -> list[int]:
    return pickpool.map(abs, [-x, x], model="processes", workers=1)


def nested_auto(x: int) -> list[int]:
    return pickpool.map(abs, [-x, x])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("inner", [nested, nested_auto])
def test_map_inside_a_worker_process_works(inner: Callable[[int], list[int]]) -> None:
    assert pickpool.map(inner, [1, 2], model="processes", workers=2) == [[1, 1], [2, 2]]


def test_progress_hooks_take_a_callable_or_a_tqdm_like_bar() -> None:
    counts: list[int] = []
    assert pickpool.map(identity, range(50), model="threads", progress=counts.append) == list(
        range(50)
    )
    assert sum(counts) == 50

    class Bar:
        n = 0

        def update(self, count: int) -> None:
            self.n += count

    bar = Bar()
    pickpool.map(identity, range(30), model="serial", progress=bar)
    assert bar.n == 30
    with pytest.raises(ValueError, match="progress must be"):
        pickpool.map(identity, range(3), progress="sometimes")


def test_progress_always_in_a_log_is_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    pickpool.map(identity, range(20), model="threads", progress="always")
    err = capsys.readouterr().err
    assert "\x1b[" not in err
    assert "20/20 items (100%)" in err
    assert "identity [threads]" in err


@pytest.mark.timeout(60)
def test_cli_run_verbose_shows_the_choice(
    capsys: pytest.CaptureFixture[str], tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab, "WAIT_SECONDS", 0.005)
    code = cli.main(["run", "pickpool.lab:blocking_wait", "--range", "40", "-v"])
    _out, err = capsys.readouterr()
    assert code == 0
    assert "pickpool: auto chose threads" in err
    assert "pickpool: 40 items in" in err
    assert "40 items, 0 failed" in err


def test_cli_run_says_one_item(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "pickpool.lab:blocking_wait", "--range", "1", "--model", "serial"]) == 0
    assert "1 item, 0 failed" in capsys.readouterr().err


def dataclass_result(x: int) -> object:
    import dataclasses

    @dataclasses.dataclass
    class Point:
        x: int
        tags: frozenset[str]

    if x == 1:
        return object()
    return Point(x, frozenset({"b", "a"}))


def test_cli_results_get_their_obvious_json_form_or_fail_their_item(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    code = cli.main(
        ["run", "tests.test_visible:dataclass_result", "--range", "3", "--model", "serial"]
    )
    out, _ = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert lines[0] == {"index": 0, "result": {"x": 0, "tags": ["a", "b"]}}
    assert lines[1]["type"] == "TypeError"
    assert "has no JSON form" in lines[1]["error"]
    assert lines[2]["result"]["x"] == 2


def test_bench_plot_without_matplotlib_fails_before_running(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    began = time.perf_counter()
    code = cli.main(["bench", "pickpool.lab:blocking_wait", "--range", "400", "--plot", "x.png"])
    assert code == 2
    assert "matplotlib" in capsys.readouterr().err
    assert time.perf_counter() - began < 5  # 400 waits under each model would take longer


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", ["processes", "threads", "auto"])
@pytest.mark.parametrize("known_length", [True, False])
def test_the_bar_moves_with_the_first_results(model: Model, known_length: bool) -> None:
    # Chunks start at one item and grow with the pace: the first results reach the bar one
    # by one, not after a chunk of a fraction of the input (50 items of 50 ms: 2.5 s frozen).
    from tests.meaning_helpers import spin_for

    counts: list[int] = []
    items = [0.005] * 120
    source = items if known_length else iter(items)
    pickpool.map(spin_for, source, model=model, workers=2, progress=counts.append)
    assert sum(counts) == 120
    assert counts[0] <= 2, counts[:5]


def _notebook_outputs(code: str) -> list[dict[str, object]]:
    """The outputs of ``code`` run as one cell in a real notebook kernel (ipykernel)."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(code)]
    nbclient.NotebookClient(notebook, timeout=90, kernel_name="python3").execute()
    return list(notebook.cells[0].outputs)


@pytest.mark.timeout(180)
def test_a_notebook_without_widgets_gets_a_text_bar_that_stays() -> None:
    outputs = _notebook_outputs(
        "import sys\n"
        "sys.modules['ipywidgets'] = None  # (as where it is not installed)\n"
        "import pickpool\n"
        "print(len(pickpool.map(abs, range(50), model='threads', progress=True)))"
    )
    err = "".join(str(o.get("text", "")) for o in outputs if o.get("name") == "stderr")
    shown = "".join(str(o.get("data", "")) for o in outputs)
    assert "ipywidgets" not in shown + err  # (rich would warn, and draw nothing)
    last = err.rsplit("\r", 1)[-1]
    assert last.startswith("abs [threads] |" + "#" * 30 + "| 50/50 items (100%)"), err
    assert last.endswith("\n")  # the finished bar stays on its own line
    assert any(o.get("text") == "50\n" for o in outputs)


@pytest.mark.timeout(180)
def test_a_notebook_with_tqdm_and_widgets_gets_tqdm_s_widget() -> None:
    pytest.importorskip("tqdm")
    pytest.importorskip("ipywidgets")
    outputs = _notebook_outputs(
        "import pickpool\nprint(len(pickpool.map(abs, range(50), model='threads', progress=True)))"
    )
    widgets = [o for o in outputs if "jupyter.widget-view" in str(o.get("data"))]
    assert len(widgets) == 1, outputs
    assert any(o.get("text") == "50\n" for o in outputs)
