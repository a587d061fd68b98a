"""Calls into numpy, Pillow and pandas under every pickpool model, joblib and a process pool.

    .venv/bin/python benchmarks/native.py [--quick] [--markdown FILE]

numpy's calls run BLAS's own thread pool, one thread per core, inside each call: run side by
side in worker processes, the pools fight over the cores unless they are capped, as joblib's
workers cap them. For each workload of ``native_work.py`` this measures, in one run and as the
median of three, a plain loop; joblib's ``Parallel(n_jobs=cores)`` (its default backend,
loky); ``concurrent.futures.ProcessPoolExecutor.map`` with the chunk size ``multiprocessing``
picks (n / (4 x workers)); ``pickpool.map`` under each fixed model and under ``model="auto"``
(its probe included); and which model ``pickpool.advise`` names, timed from its fixed run.

Targets, on the numpy workloads (Pillow and pandas are reported only):

- ``model="processes"`` within 1.15x of joblib;
- ``model="auto"`` within 1.2x of the best of the loop, joblib and every fixed model;
- the advised model's fixed run within 1.2x of that same best.

Exits 1 if one is missed (not with ``--quick``: a quarter of the items, one run).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import native_work
import pickpool
from pickpool import _machine

if TYPE_CHECKING:
    from pickpool._api import Model

CORES = _machine.cores()
FIXED = ("serial", "threads", "processes", "asyncio")
TARGETED = ("numpy svd", "numpy matmul")
PROCESSES_VS_JOBLIB = 1.15
VS_BEST = 1.2


# The contenders ----------------------------------------------------------------------------------


def loop(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """What every contender must return."""
    return [fn(x) for x in items]


def joblib_(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """joblib's default backend (loky), whose workers cap BLAS's pool to their share."""
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=CORES)(delayed(fn)(x) for x in items))


def futures(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """A standard library process pool, BLAS's pool in each worker left as it is."""
    from concurrent.futures import ProcessPoolExecutor

    chunksize = max(1, math.ceil(len(items) / (4 * CORES)))
    # A pool per call, as the documentation shows it (joblib keeps its own between calls).
    with ProcessPoolExecutor(CORES) as pool:
        return list(pool.map(fn, items, chunksize=chunksize))


def model(name: str) -> Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]:
    """``pickpool.map`` under model ``name`` (a name ``pickpool.advise`` may give, so a str)."""
    chosen = cast("Model", name)

    def run(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return pickpool.map(fn, items, model=chosen)

    return run


# Measuring ---------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    items: int
    seconds: dict[str, float] = field(default_factory=dict)  # contender: median
    advised: str = ""  # the model pickpool.advise named
    advice: str = ""  # its first line

    @property
    def best(self) -> tuple[str, float]:
        """The fastest of the loop, joblib and the fixed models (auto and futures not counted)."""
        pool = {k: v for k, v in self.seconds.items() if k in ("loop", "joblib", *FIXED)}
        return min(pool.items(), key=lambda kv: kv[1])

    @property
    def advised_seconds(self) -> float:
        return self.seconds[f"advised:{self.advised}"]


def timed(call: Callable[[], list[Any]]) -> tuple[float, list[Any]]:
    """Seconds of ``call()``, and what it returned."""
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def measure(w: native_work.Native, count: int, repeat: int) -> Row:
    items = w.items(count)
    expected = loop(w.fn, items)
    advice = pickpool.advise(w.fn, items)
    row = Row(w.name, len(items), advised=advice.model, advice=str(advice).splitlines()[0])
    contenders: dict[str, Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]] = {
        "loop": loop,
        "joblib": joblib_,
        "futures": futures,
        **{m: model(m) for m in FIXED},
        "auto": model("auto"),
    }
    if advice.model not in FIXED:  # a model this table has no column for (interpreters, dask)
        contenders[advice.model] = model(advice.model)
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    # The contenders take turns within each repeat, so that a slow spell of the machine falls on
    # all of them rather than on one.
    for _ in range(repeat):
        for name, run in contenders.items():
            seconds, got = timed(lambda run=run: run(w.fn, items))  # type: ignore[misc]
            if not native_work.same(got, expected):
                raise AssertionError(f"{name} gave other results on {w.name}")
            runs[name].append(seconds)
            print(f"    {w.name:<15} {name:<10} {seconds:7.2f} s", file=sys.stderr, flush=True)
    row.seconds = {name: statistics.median(times) for name, times in runs.items()}
    row.seconds[f"advised:{advice.model}"] = row.seconds[advice.model]
    return row


# Reporting ---------------------------------------------------------------------------------------


COLUMNS = ("loop", "joblib", "futures", *FIXED, "auto")


def table(rows: Sequence[Row], machine: str) -> str:
    head = ["workload", "items", *COLUMNS, "advised", "advised s", "best"]
    lines = [
        f"Seconds, median of the runs ({machine}). futures: ProcessPoolExecutor; "
        "auto includes its probe; best: of the loop, joblib and the fixed models.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---:"] + ["---:"] * len(COLUMNS) + ["---", "---:", "---"]) + "|",
    ]
    for r in rows:
        best_name, _ = r.best
        cells = [r.name, str(r.items)]
        cells += [f"{r.seconds[c]:.2f}" for c in COLUMNS]
        cells += [r.advised, f"{r.advised_seconds:.2f}", best_name]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check(rows: Sequence[Row]) -> list[str]:
    """The targets, on the numpy rows; lines starting with MISS fail the run."""
    out = []

    def verdict(ok: bool, text: str) -> None:
        out.append(f"{'ok  ' if ok else 'MISS'} {text}")

    for r in rows:
        if r.name not in TARGETED:
            continue
        processes, joblib_time = r.seconds["processes"], r.seconds["joblib"]
        best_name, best = r.best
        verdict(
            processes <= PROCESSES_VS_JOBLIB * joblib_time,
            f"{r.name}: processes {processes:.2f} s = {processes / joblib_time:.2f}x joblib's "
            f"{joblib_time:.2f} s (<= {PROCESSES_VS_JOBLIB})",
        )
        auto = r.seconds["auto"]
        verdict(
            auto <= VS_BEST * best,
            f"{r.name}: auto {auto:.2f} s = {auto / best:.2f}x the best, {best_name} "
            f"{best:.2f} s (<= {VS_BEST})",
        )
        verdict(
            r.advised_seconds <= VS_BEST * best,
            f"{r.name}: advised {r.advised} {r.advised_seconds:.2f} s = "
            f"{r.advised_seconds / best:.2f}x the best (<= {VS_BEST})",
        )
    return out


def describe_machine() -> str:
    import numpy as np
    from threadpoolctl import threadpool_info

    blas = ", ".join(f"{p['internal_api']} {p['num_threads']} threads" for p in threadpool_info())
    return (
        f"{CORES} cores, Python {sys.version.split()[0]}, {_machine.start_method()}, "
        f"numpy {np.__version__} ({blas or 'no BLAS pool found'})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a quarter of the items, one run, no targets"
    )
    parser.add_argument("--markdown", type=Path, help="write the table and verdicts here too")
    args = parser.parse_args()
    repeat = 1 if args.quick else 3
    missing = [m for m in ("numpy", "joblib", "threadpoolctl") if not _importable(m)]
    if missing:
        print(f"not installed: {', '.join(missing)}; pip install -e '.[bench]'", file=sys.stderr)
        return 2
    machine = describe_machine()
    print(f"pickpool on native libraries: {machine}, {repeat} run(s) each", flush=True)
    # The fork server starts once per Python process (~70 ms): start it before timing anything,
    # so that no model (nor auto) pays it alone.
    pickpool.map(abs, [1], model="processes")
    rows = []
    for w in native_work.installed():
        count = max(8, w.count // 4) if args.quick else w.count
        start = time.perf_counter()
        row = measure(w, count, repeat)
        rows.append(row)
        print(
            f"  {w.name:<15} advise: {row.advice}   [{time.perf_counter() - start:.0f} s]",
            flush=True,
        )
        print("  " + " " * 15 + "  ".join(f"{k} {row.seconds[k]:.2f}" for k in COLUMNS), flush=True)
    text = table(rows, machine)
    verdicts = check(rows)
    if args.quick:
        verdicts = [f"{v}   (not enforced with --quick)" for v in verdicts]
    print()
    print(text)
    print("\n".join(verdicts))
    if args.markdown:
        args.markdown.write_text(text + "\n" + "\n".join(f"    {v}" for v in verdicts) + "\n")
    missed = [v for v in verdicts if v.startswith("MISS")]
    if missed and not args.quick:
        print(f"\n{len(missed)} target(s) missed.")
        return 1
    return 0


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
