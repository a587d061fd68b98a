"""Is ``model="auto"`` fooled by a busy machine? Auto and ``advise``, quiet and beside spinners.

    .venv/bin/python benchmarks/busy.py [--quick] [--markdown FILE]

Each workload runs twice: on the machine as it is ("quiet") and beside two processes that
spin ``while True: pass`` ("busy": on 2 cores, every core already taken). Under each
condition, in this one run: the seconds of ``pickpool.map`` under a small grid of fixed
choices (serial; threads with 2, 8 and 32 workers; processes with 2), and under
``model="auto"`` (its probe included), each the median of its repeats, taken in turn; then
``pickpool.advise`` seven times, to see whether its advice holds still.

A probe that reads the time a call spent waiting for a core as time spent waiting on I/O
would call CPU work "blocking" on a busy machine, and advise threads where they cannot help.
Columns: how many other tasks wanted a core just before the row ("runnable", the spinners
included: "quiet" is the machine as it is, which may be loaded already), the fastest fixed
choice, auto's seconds and their ratio, what auto ran on (each model, with the most calls
that ran at once there; each repeat's), and the advice's stability ("6/7 threads x8-16":
six of seven advised threads, with 8 to 16 workers; "+1 processes": the others) and kinds.
The target, as ``auto.py``'s: auto within 1.25x of the best fixed choice, plus 0.15 s when
that is under a second.
Exits 1 if one is missed (not with ``--quick``).

The spinners are killed when the busy half of a workload ends, however it ends (Ctrl-C,
SIGTERM); on Linux, the kernel kills them too if this process dies without cleaning up.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import busy_work
import pickpool
from pickpool import _machine, lab

if TYPE_CHECKING:
    from types import FrameType

    from pickpool._api import Model

SPINNERS = 2
ADVISE_TIMES = 7
VS_BEST = 1.25
SUB_SECOND_SLACK = 0.15
# (label, model, workers): few enough to run each a few times, spread enough that one of
# them is near the best for every workload here.
GRID: tuple[tuple[str, Model, int], ...] = (
    ("serial", "serial", 1),
    ("threads x2", "threads", 2),
    ("threads x8", "threads", 8),
    ("threads x32", "threads", 32),
    ("processes x2", "processes", 2),
)


@dataclass(frozen=True)
class Workload:
    name: str
    fn: Callable[[Any], Any]
    items: list[Any]
    quick: bool  # in the --quick subset


def workloads() -> list[Workload]:
    """Sized so that a plain loop takes 0.5-1 s on a 2020s core, quiet."""
    return [
        Workload("pure-Python CPU (21 ms)", lab.crunch, list(range(40)), quick=True),
        Workload("hashlib, releases GIL (5 ms)", busy_work.sha, list(range(160)), quick=True),
        Workload("re, holds GIL (15 ms)", busy_work.scan, list(range(50)), quick=False),
        Workload(
            "5 ms CPU + 20 ms sleep", busy_work.compute_then_sleep, list(range(40)), quick=True
        ),
        Workload("sleep 10 ms", busy_work.wait, list(range(80)), quick=True),
        Workload("child process", busy_work.spawn, list(range(50)), quick=False),
        Workload("skewed: 1/25 items 100x", busy_work.loop, busy_work.skewed(1500), quick=True),
        Workload("tiny: abs", abs, list(range(-100_000, 100_000)), quick=False),
    ]


@dataclass
class Row:
    condition: str
    background: float | None  # other tasks wanting a core just before (spinners included)
    workload: str
    items: int
    fixed: dict[str, list[float]] = field(default_factory=dict)
    auto: list[float] = field(default_factory=list)
    chose: list[str] = field(default_factory=list)  # auto's latest decision, per repeat
    advised: list[tuple[str, int, str]] = field(default_factory=list)  # model, workers, kind

    @property
    def best(self) -> tuple[str, float]:
        times = {label: statistics.median(s) for label, s in self.fixed.items()}
        label = min(times, key=lambda k: times[k])
        return label, times[label]

    @property
    def auto_seconds(self) -> float:
        return statistics.median(self.auto)

    @property
    def missed(self) -> bool:
        best = self.best[1]
        return self.auto_seconds > VS_BEST * best + (SUB_SECOND_SLACK if best < 1 else 0.0)

    def stability(self) -> str:
        models = Counter(model for model, _, _ in self.advised)
        top, count = models.most_common(1)[0]
        workers = [w for model, w, _ in self.advised if model == top]
        size = f"x{min(workers)}" + (f"-{max(workers)}" if max(workers) > min(workers) else "")
        others = ", ".join(f"+{n} {m}" for m, n in models.most_common()[1:])
        return f"{count}/{len(self.advised)} {top} {size}" + (f" ({others})" if others else "")

    def kinds(self) -> str:
        return ", ".join(f"{k} {n}" for k, n in Counter(k for _, _, k in self.advised).items())

    def chosen(self) -> str:
        counts = Counter(self.chose)
        if len(counts) == 1:
            return self.chose[0]
        return "; ".join(f"{n}/{len(self.chose)} {c}" for c, n in counts.most_common())

    def cells(self) -> list[str]:
        label, best = self.best
        ratio = self.auto_seconds / best
        return [
            self.condition,
            "?" if self.background is None else f"{self.background:.1f}",
            f"{self.workload} x{self.items}",
            f"{label} {best:.2f}",
            f"{self.auto_seconds:.2f}",
            f"{ratio:.2f}" + (" SLOW" if self.missed else ""),
            self.chosen(),
            self.stability(),
            self.kinds(),
        ]


HEADER = [
    "condition",
    "runnable",
    "workload",
    "best fixed (s)",
    "auto (s)",
    "auto/best",
    "auto ran",
    "advise x7",
    "advised kinds",
]


def run_auto(fn: Callable[[Any], Any], items: Sequence[Any]) -> tuple[float, str]:
    """Seconds of ``map(fn, items)`` under auto, probe included, and what it ran on."""
    start = time.perf_counter()
    results, report = pickpool.map(fn, items, report=True)
    seconds = time.perf_counter() - start
    assert len(results) == len(items)
    if not report.decisions:
        return seconds, "(all probed)"
    # Each model it ran on, with the most calls that ran at once there.
    runs = [leg for leg in report.legs if not leg.probe and leg.items]
    chose = " then ".join(f"{leg.model} x{leg.workers}" for leg in runs) or report.model
    if len(report.decisions) > len(runs):
        chose += f" ({len(report.decisions)} decisions)"
    return seconds, chose


def measure(condition: str, w: Workload, repeat: int) -> Row:
    background = busy_work.runnable()
    row = Row(condition, background, w.name, len(w.items), {label: [] for label, _, _ in GRID})
    # The worker processes import the workload's module once, outside the timings.
    pickpool.map(w.fn, w.items[:2], model="processes", workers=2)
    # In turn rather than each choice's repeats back to back: the machine's own noise drifts,
    # and should fall on every choice alike.
    for _ in range(repeat):
        for label, model, workers in GRID:
            start = time.perf_counter()
            pickpool.map(w.fn, w.items, model=model, workers=workers)
            row.fixed[label].append(time.perf_counter() - start)
        seconds, chose = run_auto(w.fn, w.items)
        row.auto.append(seconds)
        row.chose.append(chose)
    for _ in range(ADVISE_TIMES):
        advice = pickpool.advise(w.fn, w.items)
        row.advised.append((advice.model, advice.workers, advice.kind))
    return row


def text_table(cells: list[list[str]]) -> str:
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in cells)


def grid_table(rows: list[Row]) -> list[list[str]]:
    """Every choice's seconds, for reading the summary's "best fixed" against the rest."""
    head = ["condition", "workload", *(label for label, _, _ in GRID), "auto"]
    return [head] + [
        [
            row.condition,
            row.workload,
            *(f"{statistics.median(row.fixed[label]):.2f}" for label, _, _ in GRID),
            f"{row.auto_seconds:.2f}",
        ]
        for row in rows
    ]


def markdown(rows: list[Row], machine: str, repeat: int) -> str:
    lines = [
        f"Seconds per batch ({machine}), each the median of {repeat} run(s); busy: beside "
        f"{SPINNERS} processes spinning `while True: pass`; runnable: the other tasks that "
        "wanted a core just before the row (the spinners included), on average. Auto includes "
        "its probe.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    grid = grid_table(rows)
    lines += ["", "Every choice's seconds:", "", "| " + " | ".join(grid[0]) + " |"]
    lines.append("|" + "---|" * len(grid[0]))
    lines += ["| " + " | ".join(r) + " |" for r in grid[1:]]
    return "\n".join(lines)


def notes(rows: list[Row]) -> list[str]:
    """What to look at: auto past its target, advice that flipped, choices the load changed."""
    out = []
    for row in rows:
        label, best = row.best
        if row.missed:
            out.append(
                f"SLOW {row.condition} {row.workload}: auto {row.auto_seconds:.2f} s = "
                f"{row.auto_seconds / best:.2f}x {label} ({best:.2f} s), ran {row.chosen()}"
            )
        if len({m for m, _, _ in row.advised}) > 1:
            out.append(f"FLIP {row.condition} {row.workload}: advise gave {row.stability()}")
    by_workload: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_workload.setdefault(row.workload, {})[row.condition] = row
    for name, pair in by_workload.items():
        if len(pair) == 2:
            quiet, busy = (
                Counter((m, k) for m, _, k in pair[c].advised).most_common(1)[0][0]
                for c in ("quiet", "busy")
            )
            if quiet != busy:
                out.append(
                    f"LOAD {name}: mostly advised {quiet[0]} ({quiet[1]}) quiet, "
                    f"{busy[0]} ({busy[1]}) busy"
                )
    return out


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Raised here, the exit unwinds through the spinners' finally, which kills them.
    sys.exit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="five workloads, one run each, no targets"
    )
    parser.add_argument("--markdown", type=Path, help="write the table here too")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    repeat = 1 if args.quick else 3
    chosen = [w for w in workloads() if w.quick or not args.quick]
    machine = f"{_machine.cores()} cores, Python {sys.version.split()[0]}"
    print(f"is auto fooled by a busy machine? {machine}", flush=True)
    before = busy_work.runnable(1.0)
    if before is not None and before > 0.5:
        # Someone else's load is not ours to stop: each row says what it ran beside instead.
        print(
            f"  the machine is not quiet: {before:.1f} other tasks runnable at the start; "
            '"quiet" is the machine as it is, "busy" that plus the spinners',
            flush=True,
        )
    # The fork server starts once per Python process (~70 ms): before anything is timed.
    pickpool.map(abs, [1], model="processes", workers=2)
    rows = []
    # Quiet then busy per workload, not all quiet then all busy: a pair measured minutes
    # apart would compare the machine's drift as much as the load.
    for w in chosen:
        start = time.perf_counter()
        rows.append(measure("quiet", w, repeat))
        with busy_work.spinners(SPINNERS):
            rows.append(measure("busy", w, repeat))
        print(f"  {w.name}: {time.perf_counter() - start:.0f} s", flush=True)
    print("\n" + text_table(grid_table(rows)) + "\n")
    print(text_table([HEADER, *(r.cells() for r in rows)]) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(rows, machine, repeat) + "\n")
    found = notes(rows)
    print("\n".join(found) if found else "auto within its target everywhere; advice steady")
    missed = any(row.missed for row in rows)
    return 1 if missed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
