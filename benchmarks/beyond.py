"""Past one GIL: pure Python, C that releases the GIL, and shared data, on this interpreter.

    python benchmarks/beyond.py [--quick] [--markdown FILE]

Run it with each interpreter to compare (``make bench-beyond`` runs it on the project's venv,
on CPython 3.14 and on a free-threaded 3.13t where ``make test-pythons`` made their venvs;
each run adds its rows to FILE). In this one run, each workload is timed under a plain loop,
threads, worker processes and sub-interpreters (where this Python has them), each with one
worker per usable core, and under ``model="auto"`` (its probe included): the median of its
repeats, taken in turn. Worker processes and interpreters import the workload once before
anything is timed.

Columns: the interpreter (and whether its GIL is on), the workload, a plain loop's seconds,
each model's speed-up over it, auto's seconds, auto against the best fixed choice, and what
auto ran on. Targets (2 cores): on a free-threaded build, threads at least 1.8x a loop on
pure Python whose threads share nothing CPython counts (on 3.13t, threads that use one large
constant, as lab.crunch does, contend for its reference count: CPython's own thread pool runs
them 0.75-1.7x a loop, and auto is held to the best choice there); on 3.14, sub-interpreters
within 1.25x of processes or better; everywhere, auto within 1.25x of the best fixed choice
(+0.15 s when that is under a second).
Exits 1 if one is missed (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import busy_work
import pickpool
from pickpool import _machine, lab

if TYPE_CHECKING:
    from pickpool._api import Model

VS_BEST = 1.25
SUB_SECOND_SLACK = 0.15
FREE_THREADS_SPEEDUP = 1.8
INTERPRETERS_VS_PROCESSES = 1.25
HEADER = [
    "python",
    "workload",
    "serial (s)",
    "threads",
    "processes",
    "interpreters",
    "auto (s)",
    "auto/best",
    "auto ran",
]


@dataclass(frozen=True)
class Workload:
    name: str
    fn: Callable[[Any], Any]
    items: list[Any]
    # Pure Python whose threads share no object CPython counts: the free-threaded target's
    threads_own_everything: bool = False


def workloads(quick: bool) -> list[Workload]:
    """Sized so that a plain loop takes 1.5-2 s on a 2020s core (a third of that with
    ``quick``): long enough that starting workers is not most of a run."""
    scale = 3 if quick else 1
    return [
        Workload(
            "pure Python, a shared constant (21 ms)",
            lab.crunch,
            list(range(90 // scale)),
        ),
        Workload(
            "pure Python, its own numbers (15 ms)",
            busy_work.collatz,
            list(range(120 // scale)),
            threads_own_everything=True,
        ),
        Workload("hashlib, releases the GIL (5 ms)", busy_work.sha, list(range(360 // scale))),
        Workload("shared dict, read by all (8 ms)", busy_work.shared, list(range(220 // scale))),
    ]


def python_name() -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        version += "t"
    return f"{version} ({'GIL' if _machine.gil_enabled() else 'no GIL'})"


def models() -> list[Model]:
    choices: list[Model] = ["serial", "threads", "processes"]
    if importlib.util.find_spec("concurrent.interpreters") is not None:  # (3.14+)
        choices.append("interpreters")
    return choices


@dataclass
class Row:
    python: str
    workload: Workload
    times: dict[str, list[float]] = field(default_factory=dict)
    auto: list[float] = field(default_factory=list)
    chose: list[str] = field(default_factory=list)

    def median(self, model: str) -> float:
        return statistics.median(self.times[model])

    @property
    def best(self) -> float:
        return min(self.median(m) for m in self.times)

    @property
    def auto_seconds(self) -> float:
        return statistics.median(self.auto)

    def misses(self) -> list[str]:
        """The targets this row misses, in words."""
        out = []
        best = self.best
        if self.auto_seconds > VS_BEST * best + (SUB_SECOND_SLACK if best < 1 else 0.0):
            out.append(f"auto {self.auto_seconds / best:.2f}x the best")
        serial = self.median("serial")
        free = not _machine.gil_enabled()
        if (
            free
            and self.workload.threads_own_everything
            and serial / self.median("threads") < FREE_THREADS_SPEEDUP
        ):
            out.append(f"threads {serial / self.median('threads'):.2f}x a loop")
        if "interpreters" in self.times:
            behind = self.median("interpreters") / self.median("processes")
            if behind > INTERPRETERS_VS_PROCESSES:
                out.append(f"interpreters {behind:.2f}x processes' time")
        return out

    def cells(self) -> list[str]:
        serial = self.median("serial")

        def speedup(model: str) -> str:
            return f"{serial / self.median(model):.2f}x" if model in self.times else "-"

        counts = {c: self.chose.count(c) for c in self.chose}
        ran = "; ".join(
            c if n == len(self.chose) else f"{n}/{len(self.chose)} {c}" for c, n in counts.items()
        )
        misses = self.misses()
        return [
            self.python,
            f"{self.workload.name} x{len(self.workload.items)}",
            f"{serial:.2f}",
            speedup("threads"),
            speedup("processes"),
            speedup("interpreters"),
            f"{self.auto_seconds:.2f}",
            f"{self.auto_seconds / self.best:.2f}" + (" MISSED" if misses else ""),
            ran,
        ]


def run_auto(fn: Callable[[Any], Any], items: list[Any]) -> tuple[float, str]:
    """Seconds of ``map(fn, items)`` under auto, probe included, and what it ran on."""
    start = time.perf_counter()
    results, report = pickpool.map(fn, items, report=True)
    seconds = time.perf_counter() - start
    assert len(results) == len(items)
    runs = [leg for leg in report.legs if not leg.probe and leg.items]
    return seconds, " then ".join(f"{leg.model} x{leg.workers}" for leg in runs) or "(probe)"


def measure(w: Workload, repeat: int) -> Row:
    cores = _machine.cores()
    row = Row(python_name(), w, {m: [] for m in models()})
    for model in row.times:
        if model in ("processes", "interpreters"):
            pickpool.map(w.fn, w.items[:cores], model=model, workers=cores)  # (imports)
    # In turn rather than each model's repeats back to back: the machine's own noise drifts,
    # and should fall on every model alike.
    for _ in range(repeat):
        for model in row.times:
            start = time.perf_counter()
            pickpool.map(w.fn, w.items, model=model, workers=1 if model == "serial" else cores)
            row.times[model].append(time.perf_counter() - start)
        seconds, chose = run_auto(w.fn, w.items)
        row.auto.append(seconds)
        row.chose.append(chose)
    return row


def text_table(cells: list[list[str]]) -> str:
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in cells)


def add_markdown(path: Path, rows: list[Row]) -> None:
    """The rows under the table's header, written first if the file has none yet."""
    lines = (
        []
        if path.exists() and path.read_text().strip()
        else [
            "| " + " | ".join(HEADER) + " |",
            "|" + "---|" * len(HEADER),
        ]
    )
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    with path.open("a") as out:
        out.write("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a third of the items, 1 repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", type=Path, help="add the rows to this Markdown table")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    print(f"{python_name()}, {_machine.cores()} usable cores", file=sys.stderr)
    rows = []
    for w in workloads(args.quick):
        rows.append(measure(w, repeat))
        print(text_table([HEADER, rows[-1].cells()]), file=sys.stderr)
    print(text_table([HEADER] + [r.cells() for r in rows]))
    for row in rows:
        for miss in row.misses():
            print(f"missed: {row.python}, {row.workload.name}: {miss}")
    if args.markdown:
        add_markdown(args.markdown, rows)
    return 1 if not args.quick and any(r.misses() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
