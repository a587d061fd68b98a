"""The command line: ``pickpool advise | run | bench | demo | doctor``.

Exit codes: 0 ok, 1 some items failed (``run``), 2 a usage error, said in one line on stderr
(no such module or function, a malformed target, unreadable or closed input, a bad JSON
line), 3 the results could not be written (a full disk, a closed pipe), said likewise.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

import click

from ._backends import MODELS
from ._errors import BackendUnavailable
from ._options import all_models
from ._text import plural
from ._timing import BUSY_SHARE, waiting_for_a_core

TARGET_HELP = "MODULE:FUNCTION, or path/to/file.py:FUNCTION"
EXAMPLES = {
    "advise": """\b
Examples:
  pickpool advise mymodule:work --range 1000
  pickpool advise scripts/jobs.py:resize --lines images.txt --json
  seq 100 | pickpool advise pickpool.lab:crunch -""",
    "run": """\b
Examples:
  pickpool run mymodule:work --items inputs.jsonl --out results.jsonl
  pickpool run pickpool.lab:crunch --range 100 --model processes --workers 2""",
    "bench": """\b
Examples:
  pickpool bench pickpool.lab:crunch --range 40
  pickpool bench pickpool.lab:digest --range 40 --workers 1,2,4,8 --plot digest.png""",
}


class Usage(click.ClickException):
    """A usage error: printed as one line, exit code 2."""

    exit_code = 2


class CannotWrite(click.ClickException):
    """The results could not be written: printed as one line, exit code 3."""

    exit_code = 3


def fail(message: str) -> NoReturn:
    raise Usage(message)


# The target -----------------------------------------------------------------------------------


# What follows ``--`` on pickpool's command line: the target's own (its ``sys.argv[1:]``).
_TARGET_ARGV: list[str] = []


def load_target(spec: str) -> Callable[[Any], Any]:
    """The function ``spec`` names: ``module:function`` or ``path/to/file.py:function``.

    The target is imported with a command line of its own, as ``python FILE ARGS`` would run
    it: ``sys.argv`` is its path (or module) and what followed ``--``, not pickpool's."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        fail(f"target {spec!r} must be {TARGET_HELP}")
    sys.argv = [where, *_TARGET_ARGV]
    if where.endswith(".py") or os.sep in where:
        module = _load_file(Path(where))
    else:
        # A console script does not have the current folder on sys.path: add it, as `python -m`.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            fail(f"no module named {exc.name!r} (importing {where!r} for target {spec!r})")
        except Exception as exc:
            fail(f"importing {where!r} failed: {type(exc).__name__}: {exc}")
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            fail(f"{where!r} has no function {name!r}")
    if not callable(obj):
        fail(f"{spec!r} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def _load_file(path: Path) -> Any:
    if not path.is_file():
        fail(f"no such file: {path}")
    # Its folder goes on sys.path, so that its own imports work here and in worker processes.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = f"pickpool_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        fail(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        fail(f"running {path} failed: {type(exc).__name__}: {exc}")
    # Workers cannot import a module loaded from a path under a made-up name: send it by value.
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    return module


# The inputs -----------------------------------------------------------------------------------


def _json_lines(stream: TextIO, origin: str) -> list[Any]:
    items = []
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            fail(f"{origin}, line {number}: not JSON ({exc.msg}): {line.strip()[:60]!r}")
    return items


def read_inputs(
    stdin: str | None, count: int | None, items: str | None, lines: str | None
) -> list[Any]:
    """The items, from exactly one of ``-``, ``--range``, ``--items`` or ``--lines``."""
    given = [name for name, v in (("-", stdin), ("--range", count), ("--items", items),
                                  ("--lines", lines)) if v is not None]  # fmt: skip
    if len(given) != 1:
        fail(
            "give the items one way: --range N, --items FILE.jsonl, --lines FILE, or - for "
            f"JSON lines on standard input (got {', '.join(given) or 'none'})"
        )
    if stdin is not None:
        if stdin != "-":
            fail(f"unexpected argument {stdin!r}: use - for standard input")
        if sys.stdin is None:
            fail("standard input is closed: give the items with --range, --items or --lines")
        return _json_lines(sys.stdin, "standard input")
    if count is not None:
        return list(range(count))
    path = items if items is not None else lines
    assert path is not None
    try:
        with open(path, encoding="utf-8") as f:
            if items is not None:
                return _json_lines(f, path)
            return [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}")


def _inputs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that runs a target takes."""
    for decorator in reversed(
        [
            click.argument("target"),
            click.argument("stdin", required=False, metavar="[-]"),
            click.option(
                "--range",
                "count",
                type=click.IntRange(min=0),
                metavar="N",
                help="the items 0, 1, ..., N-1",
            ),
            click.option(
                "--items",
                type=str,
                metavar="FILE.jsonl",
                help="one JSON value per line, each the function's argument",
            ),
            click.option("--lines", type=str, metavar="FILE", help="each line, as a string"),
        ]
    ):
        fn = decorator(fn)
    return fn


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, width=None if sys.stdout.isatty() else 120)


# The commands ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pickpool")
def cli() -> None:
    """Threads, processes or asyncio? Measure a function, get the answer, run it.

    TARGET is MODULE:FUNCTION or path/to/file.py:FUNCTION; the items come from --range N,
    --items FILE.jsonl, --lines FILE, or - (JSON lines on standard input).
    """


@cli.command(epilog=EXAMPLES["advise"])
@_inputs
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="about how many seconds measuring may take")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for machines")
def advise(
    target: str,
    stdin: str | None,
    count: int | None,
    items: str | None,
    lines: str | None,
    budget: float,
    as_json: bool,
) -> None:
    """Measure TARGET on the first items; say which model to run them on, and why."""
    import pickpool

    from ._show import advice_json, advice_table

    fn = load_target(target)
    data = read_inputs(stdin, count, items, lines)
    if not data:
        fail("no items to measure")
    try:
        advice = pickpool.advise(fn, data, budget=budget)
    except ValueError as exc:
        fail(str(exc).splitlines()[0])
    if as_json:
        click.echo(advice_json(advice))
    else:
        _console().print(advice_table(advice))


@cli.command(epilog=EXAMPLES["run"])
@_inputs
@click.option("--model", default="auto", show_default=True, type=click.Choice(all_models()))
@click.option("--workers", type=click.IntRange(min=1), help="how many at once")
@click.option("--chunksize", type=click.IntRange(min=1), help="items per hand-off")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="seconds per item")
@click.option("--retries", type=click.IntRange(min=0), default=0, help="tries after a failure")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), help="default: stdout")
@click.option("-v", "--verbose", is_flag=True,
              help="what auto measured and chose, retries and crashes, on stderr")  # fmt: skip
def run(
    target: str,
    stdin: str | None,
    count: int | None,
    items: str | None,
    lines: str | None,
    model: str,
    workers: int | None,
    chunksize: int | None,
    timeout: float | None,
    retries: int,
    out: str | None,
    verbose: bool,
) -> None:
    """Run TARGET on every item; write JSON lines in input order.

    Each line is {"index": i, "result": ...}, or, for an item that failed,
    {"index": i, "item": ..., "error": "Type: message", "type": "Type", "attempts": n}.
    Results with an obvious JSON form are written in it (tuples and sets as lists, dataclasses
    as objects, dates as ISO text, numpy values as numbers and lists, UTF-8 bytes as text);
    any other result fails its item with a line that says so. Exit code 1 if any item failed.
    """
    import pickpool

    from ._api import Model

    fn = load_target(target)
    data = read_inputs(stdin, count, items, lines)
    try:
        results = pickpool.imap(
            fn,
            data,
            model=cast("Model", model),  # a click.Choice of the model names
            workers=workers,
            chunksize=chunksize,
            timeout=timeout,
            retries=retries,
            on_error="collect",
            progress=True,
        )
    except (TypeError, ValueError) as exc:
        fail(str(exc))
    failed = 0
    with _verbose(verbose), results, _output(out) as sink:
        for index, result in enumerate(results):
            if isinstance(result, pickpool.Failure):
                failed += 1
                line = _failure_line(index, result.item, result.exception, result.attempts)
            else:
                try:
                    line = json.dumps({"index": index, "result": result}, default=_to_json)
                except (TypeError, ValueError) as exc:
                    failed += 1
                    line = _failure_line(index, data[index], exc, 1)
            sink.write(line + "\n")
        sink.flush()
    if verbose:
        click.echo(f"pickpool: {results.report}", err=True)
    click.echo(f"{plural(len(data), 'item')}, {failed} failed", err=True)
    if failed:
        sys.exit(1)


def _failure_line(index: int, item: Any, exc: BaseException, attempts: int) -> str:
    record = {
        "index": index,
        "item": item,
        "error": f"{type(exc).__name__}: {exc}",
        "type": type(exc).__name__,
        "attempts": attempts,
    }
    try:
        return json.dumps(record, default=_to_json)
    except (TypeError, ValueError):
        record["item"] = repr(item)  # (the items came from JSON or text: rarely needed)
        return json.dumps(record, default=repr)


def _to_json(value: Any) -> Any:
    """The obvious JSON form of a value json cannot write, or TypeError saying there is none."""
    import dataclasses
    import datetime
    import decimal
    import enum
    import fractions
    import pathlib
    import uuid

    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (decimal.Decimal, fractions.Fraction, pathlib.PurePath, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise TypeError(
                "a result of bytes that are not UTF-8 text has no JSON form; return "
                "base64.b64encode(data).decode() or a str"
            ) from None
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    raise TypeError(
        f"a result of type {type(value).__name__} has no JSON form; return a dict, list, str, "
        "number, bool or None (or a dataclass) from the function"
    )


@contextlib.contextmanager
def _verbose(on: bool) -> Iterator[None]:
    """With ``-v``: the ``pickpool`` logger's INFO lines on stderr for the run."""
    if not on:
        yield
        return
    import logging

    logger = logging.getLogger("pickpool")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pickpool: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _output:
    """Standard output or a file, for the results; what fails to write them (a full disk, a
    pipe closed by its reader) is said in one line, exit code 3."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._file: TextIO | None = None

    def __enter__(self) -> TextIO:
        if self._path is None:
            return sys.stdout
        try:
            self._file = open(self._path, "w", encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {self._path}: {exc.strerror}")
        return self._file

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        failure = exc if isinstance(exc, OSError) else None
        if self._file is not None:
            try:
                self._file.close()
            except OSError as closing:
                failure = failure or closing
        if failure is None:
            return
        where = self._path or "standard output"
        if self._path is None:
            # What stdout still holds would fail again as the interpreter exits: it goes
            # nowhere instead.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
        raise CannotWrite(f"cannot write the results to {where}: {failure.strerror}") from None


@cli.command(epilog=EXAMPLES["bench"])
@_inputs
@click.option("--models", default=",".join(MODELS), show_default=True,
              help="comma-separated; may include auto")  # fmt: skip
@click.option("--workers", "counts", help="comma-separated worker counts, e.g. 1,2,4,8")
@click.option("--plot", type=click.Path(dir_okay=False), help="draw a PNG here")
@click.option("--markdown", is_flag=True, help="a Markdown table instead of a rich one")
def bench(
    target: str,
    stdin: str | None,
    count: int | None,
    items: str | None,
    lines: str | None,
    models: str,
    counts: str | None,
    plot: str | None,
    markdown: bool,
) -> None:
    """Time TARGET on the same items under each model (and worker count), side by side.

    With several worker counts, --plot draws throughput against workers per model: the GIL
    at work (pure Python flat on threads, rising on processes).
    """
    import pickpool

    from ._show import MissingExtra, bench_table

    if plot:
        from ._show import _pyplot

        try:
            _pyplot()  # before anything runs: a missing extra is not worth a benchmark
        except MissingExtra as exc:
            fail(str(exc))
    fn = load_target(target)
    data = read_inputs(stdin, count, items, lines)
    chosen = [m.strip() for m in models.split(",") if m.strip()]
    try:
        numbers = [int(c) for c in counts.split(",")] if counts else None
    except ValueError:
        fail(f"--workers must be whole numbers separated by commas, not {counts!r}")
    try:
        result = pickpool.bench(fn, data, models=chosen, workers=numbers)
    except (TypeError, ValueError) as exc:
        fail(str(exc))
    if markdown:
        click.echo(result.to_markdown())
    else:
        _console().print(bench_table(result, f"{target}, {len(data):,} items"))
    if plot:
        try:
            click.echo(f"plot: {result.plot(plot, title=f'{target}, {len(data):,} items')}")
        except MissingExtra as exc:
            fail(str(exc))


@cli.command()
@click.option("--quick", is_flag=True, help="fewer items: well under a minute on 2 cores")
@click.option("--plot", type=click.Path(dir_okay=False), help="draw the speedups into a PNG")
def demo(quick: bool, plot: str | None) -> None:
    """The usual advice measured on this machine: each built-in workload under each model.

    \b
    Examples:
      pickpool demo --quick --plot demo.png
    """
    from ._show import MissingExtra
    from .lab.__main__ import main as run_demo

    try:
        run_demo(quick=quick, plot=plot)
    except MissingExtra as exc:
        fail(str(exc))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for machines")
def doctor(as_json: bool) -> None:
    """What this machine offers: cores, Python build, GIL, process start method and cost."""
    facts = machine_facts()
    if as_json:
        click.echo(json.dumps(facts))
        return
    from rich.table import Table

    table = Table(title="pickpool doctor", show_header=False)
    table.add_column("fact")
    table.add_column("value")
    for key, value in facts.items():
        default = f"model={key[: -len('_model')]!r} available" if key.endswith("_model") else ""
        label = DOCTOR_LABELS.get(key) or default or key.replace("_", " ")
        if key == "waiting_for_a_core" and isinstance(value, float):
            table.add_row(label, f"{value:.0%}")
            continue
        table.add_row(label, _in_words(value, seconds=key.endswith("_s")))
    _console().print(table)
    waiting = facts.get("waiting_for_a_core")
    if waiting is not None and waiting > BUSY_SHARE:
        _console().print(
            f"Other programs keep the cores busy: a computing thread here waited for a core "
            f"{waiting:.0%} of the time. pickpool takes that wait off the calls it times, but "
            "calls side by side still share what is left: advice and auto's choices can vary "
            "from run to run (advise says when two options are close)."
        )


DOCTOR_LABELS = {
    "usable_cores": "cores pickpool uses",
    "cpu_count": "CPUs in the machine",
    "affinity_cores": "CPUs this process may run on",
    "cgroup_cpu_quota": "container CPU quota (cores)",
    "python": "Python",
    "implementation": "implementation",
    "free_threaded_build": "free-threaded build",
    "gil_enabled": "GIL enabled",
    "start_method": "process start method",
    "process_pool_first_start_s": "first process pool start",
    "process_pool_start_s": "process pool start, warm",
    "subinterpreters": "sub-interpreters in this Python",
    "dask_installed": "dask.distributed installed",
    "matplotlib": "matplotlib installed (plots)",
    "aiohttp": "aiohttp installed",
    "load_average": "load average, last minute",
    "waiting_for_a_core": "a computing thread's time spent waiting for a core",
}


def _in_words(value: Any, *, seconds: bool = False) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None:
        return "none"
    if seconds and isinstance(value, float):
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return str(value)


def machine_facts() -> dict[str, Any]:
    """The facts ``doctor`` reports, measured now."""
    import platform
    import sysconfig
    import time

    import pickpool

    from . import _backends, _machine

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    quota = _machine._cgroup_cpu_limit()
    start = time.perf_counter()
    pickpool.map(abs, [1], model=_backends.PROCESSES, workers=1)
    first = time.perf_counter() - start
    start = time.perf_counter()
    pickpool.map(abs, [1], model=_backends.PROCESSES, workers=1)
    warm = time.perf_counter() - start
    return {
        "usable_cores": _machine.cores(),
        "cpu_count": os.cpu_count(),
        "affinity_cores": affinity,
        "cgroup_cpu_quota": quota,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "free_threaded_build": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "gil_enabled": _machine.gil_enabled(),
        "start_method": _machine.start_method(),
        "process_pool_first_start_s": round(first, 4),
        "process_pool_start_s": round(warm, 4),
        "subinterpreters": any(
            importlib.util.find_spec(name) is not None
            for name in ("concurrent.interpreters", "interpreters")  # (modules)
        ),
        "dask_installed": importlib.util.find_spec("distributed") is not None,
        "matplotlib": importlib.util.find_spec("matplotlib") is not None,
        "aiohttp": importlib.util.find_spec("aiohttp") is not None,
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "waiting_for_a_core": waiting_for_a_core(),
        # Each model, and whether it can run here now.
        **{f"{name}_model": _available(name) for name in _backends.names()},
    }


def _available(name: str) -> bool:
    from . import _backends

    unavailable = _backends.model(name).unavailable
    return unavailable is None or unavailable() is None


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pickpool`` console script. Returns the exit code.

    ``--`` ends pickpool's own arguments: what follows is the target's command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        at = args.index("--")
        args, _TARGET_ARGV[:] = args[:at], args[at + 1 :]
    else:
        _TARGET_ARGV.clear()
    own_argv = sys.argv  # (the target's replaces it while it runs: see load_target)
    try:
        result = cli.main(
            args=args,
            prog_name="pickpool",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        click.echo("pickpool: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        # One line, never a traceback: click's own usage errors included.
        message = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
        click.echo(f"pickpool: error: {message}", err=True)
        return 2 if isinstance(exc, (Usage, click.UsageError)) else exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except BackendUnavailable as exc:
        # The environment's, not a usage mistake in the code: one line that says what to do.
        click.echo(f"pickpool: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("pickpool: interrupted", err=True)
        return 130
    finally:
        sys.argv = own_argv
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
