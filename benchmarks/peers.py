"""pickpool's auto mode against the peers, on a standard set of workloads, measured in one run.

    make bench                     # or: .venv/bin/python benchmarks/peers.py [--repeat 3]
    .venv/bin/python benchmarks/peers.py --quick --markdown docs/peers.md --plot docs/peers.png

Each workload runs as a plain loop, as ``pickpool.map(fn, items)`` (auto: probe included), and
on each peer the way a careful engineer would call it: processes for pure-Python work with the
chunk size ``multiprocessing`` itself picks (n / (4 x workers)), threads for GIL-releasing C
(one per core) and blocking I/O (32), ``asyncio.gather`` for coroutines. numpy's calls, which
run BLAS's own thread pool, go to processes as joblib's default runs them (its workers cap
that pool to their share of the cores; the other peers leave it as it is). Every cell is the
median of ``--repeat`` runs; pools are made per call, as each library's documentation shows
(joblib keeps its loky executor between calls on its own; pickpool keeps its workers warm).
The peers are in the ``bench`` extra: ``pip install -e '.[bench]'``.

It ends by checking its targets on the medians and exits 1 if one is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import operator
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import native_work
from pickpool import _machine, lab
from pickpool._options import check as checked_options
from pickpool._run import Run
from pickpool._schedule import Block

CORES = _machine.cores()
IO_THREADS = 32


# The workloads (module level, so that every peer can send them to its processes) ---------------


def fine(x: int) -> int:
    """~13 µs of pure Python."""
    total = x
    for i in range(330):
        total += i * x
    return total


def coarse(x: int) -> int:
    """~10 ms of pure Python."""
    total = x
    for i in range(250_000):
        total ^= i + x
    return total


def medium(x: int) -> int:
    """~4 ms of pure Python: the long run that the probe's cost is judged on."""
    total = x
    for i in range(100_000):
        total ^= i + x
    return total


COMPRESSIBLE = bytes(range(256)) * 1024  # 256 kB


def squeeze(x: int) -> int:
    """zlib on 256 kB: C code that releases the GIL."""
    return len(zlib.compress(COMPRESSIBLE, 6)) + x


def trivial(x: int) -> int:
    return x + 1


def checksum(data: bytes) -> int:
    """A large argument (4 MB) with little work: what crosses a process boundary dominates."""
    return zlib.crc32(data)


async def await20(x: int) -> int:
    await asyncio.sleep(0.02)
    return x


@dataclass
class Workload:
    name: str
    shape: str
    kind: str  # cpu, nogil, io, async, native: how the peers run it
    make: Callable[[], AbstractContextManager[tuple[Callable[[Any], Any], Sequence[Any]]]]
    peers: bool = True  # False: only the loop and auto (the long run)
    loop_sample: int | None = None  # time the loop on this many items and scale (est.)
    # Whether two runs' results agree: numpy's differ in the last bits with BLAS's thread count.
    same: Callable[[list[Any], list[Any]], bool] = operator.eq


# The kinds the peers run on processes: pure Python, and calls running a native pool of their own.
PROCESS_KINDS = ("cpu", "native")


def _fixed(
    fn: Callable[[Any], Any], items: Sequence[Any]
) -> Callable[[], AbstractContextManager[tuple[Callable[[Any], Any], Sequence[Any]]]]:
    return lambda: nullcontext((fn, items))


def _http() -> AbstractContextManager[tuple[Callable[[Any], Any], Sequence[Any]]]:
    import contextlib

    @contextlib.contextmanager
    def serving() -> Iterator[tuple[Callable[[Any], Any], Sequence[Any]]]:
        with lab.http_server(0.02) as url:
            yield functools.partial(lab.http_get, url), range(300)

    return serving()


def _built(
    build: Callable[[int], list[Any]], fn: Callable[[Any], Any], count: int
) -> Callable[[], AbstractContextManager[tuple[Callable[[Any], Any], Sequence[Any]]]]:
    """The items built when the workload is measured, so that only its own are in memory."""
    import contextlib

    @contextlib.contextmanager
    def building() -> Iterator[tuple[Callable[[Any], Any], Sequence[Any]]]:
        yield fn, build(count)

    return building


# How the peers run each native workload: numpy in processes, where joblib caps BLAS's pool;
# Pillow releases the GIL and runs no pool, so threads; pandas' groupby holds the GIL half the
# time, so processes, as for pure Python.
NATIVE_KINDS = {
    "numpy svd": "native",
    "numpy matmul": "native",
    "Pillow JPEG": "nogil",
    "pandas groupby": "cpu",
}


def native(scale: int) -> list[Workload]:
    """The native_work workloads whose libraries are installed; a note for each left out."""
    found = []
    for w in native_work.installed():
        count = w.count // scale
        found.append(
            Workload(
                w.name,
                f"{count} x {w.shape}",
                NATIVE_KINDS[w.name],
                _built(w.items, w.fn, count),
                same=native_work.same,
            )
        )
    return found


def workloads(quick: bool) -> list[Workload]:
    scale = 4 if quick else 1
    big = [bytes([i]) * (4 * 1024 * 1024) for i in range(40 // scale)]
    return [
        Workload(
            "fine-grained CPU",
            f"{100_000 // scale:,} x ~13 µs",
            "cpu",
            _fixed(fine, range(100_000 // scale)),
        ),
        Workload(
            "coarse CPU", f"{200 // scale} x ~10 ms", "cpu", _fixed(coarse, range(200 // scale))
        ),
        Workload(
            "GIL-releasing C",
            f"{400 // scale} x zlib 256 kB",
            "nogil",
            _fixed(squeeze, range(400 // scale)),
        ),
        Workload("blocking I/O", "300 x HTTP GET, 20 ms, loopback", "io", _http),
        Workload(
            "async I/O",
            "20,000 x await 20 ms",
            "async",
            _fixed(await20, range(20_000)),
            loop_sample=50,
        ),
        Workload("trivial items", "200,000 x x + 1", "cpu", _fixed(trivial, range(200_000))),
        Workload(
            "large arguments", f"{len(big)} x 4 MB bytes, crc32", "cpu", _fixed(checksum, big)
        ),
        Workload(
            "long CPU (probe cost)",
            f"{3000 // scale:,} x ~4 ms",
            "cpu",
            _fixed(medium, range(3000 // scale)),
            peers=False,
        ),
        *native(scale),
    ]


# The contenders ------------------------------------------------------------------------------


def loop(fn: Callable[[Any], Any], items: Sequence[Any], kind: str) -> list[Any]:
    if kind == "async":
        return asyncio.run(_sequential(fn, items))
    return [fn(x) for x in items]


async def _sequential(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [await fn(x) for x in items]


def gather(fn: Callable[[Any], Any], items: Sequence[Any], kind: str) -> list[Any] | None:
    if kind != "async":
        return None

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(fn(x) for x in items)))

    return asyncio.run(run())


def _chunk(items: Sequence[Any]) -> int:
    return max(1, math.ceil(len(items) / (4 * CORES)))


def futures(fn: Callable[[Any], Any], items: Sequence[Any], kind: str) -> list[Any] | None:
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    if kind == "async":
        return None
    if kind in PROCESS_KINDS:
        with ProcessPoolExecutor(CORES) as pool:
            return list(pool.map(fn, items, chunksize=_chunk(items)))
    with ThreadPoolExecutor(CORES if kind == "nogil" else IO_THREADS) as threads:
        return list(threads.map(fn, items))


def joblib_(fn: Callable[[Any], Any], items: Sequence[Any], kind: str) -> list[Any] | None:
    from joblib import Parallel, delayed

    if kind == "async":
        return None
    if kind in PROCESS_KINDS:
        return list(Parallel(n_jobs=CORES)(delayed(fn)(x) for x in items))
    jobs = CORES if kind == "nogil" else IO_THREADS
    return list(Parallel(n_jobs=jobs, prefer="threads")(delayed(fn)(x) for x in items))


def mpire_(fn: Callable[[Any], Any], items: Sequence[Any], kind: str) -> list[Any] | None:
    from mpire import WorkerPool

    if kind == "async":
        return None
    # mpire unpacks an item that is iterable (a DataFrame: into its column names) unless each is
    # wrapped in a tuple of one, as its documentation says (mpire.utils.make_single_arguments).
    if items and isinstance(items[0], Iterable) and not isinstance(items[0], (str, bytes)):
        items = [(x,) for x in items]
    if kind in PROCESS_KINDS:
        with WorkerPool(n_jobs=CORES) as pool:
            return list(pool.map(fn, items, progress_bar=False))
    jobs = CORES if kind == "nogil" else IO_THREADS
    with WorkerPool(n_jobs=jobs, start_method="threading") as pool:
        return list(pool.map(fn, items, progress_bar=False))


def pebble_(fn: Callable[[Any], Any], items: Sequence[Any], kind: str) -> list[Any] | None:
    from pebble import ProcessPool, ThreadPool

    if kind == "async":
        return None
    if kind in PROCESS_KINDS:
        with ProcessPool(max_workers=CORES) as pool:
            return list(pool.map(fn, items, chunksize=_chunk(items)).result())
    with ThreadPool(max_workers=CORES if kind == "nogil" else IO_THREADS) as threads:
        return list(threads.map(fn, items).result())


@dataclass
class AutoTiming:
    seconds: float
    probe: float  # until the decision, the probe's own items included
    probed: int  # items the probe ran
    model: str


def auto(fn: Callable[[Any], Any], items: Sequence[Any]) -> tuple[list[Any], AutoTiming]:
    """``pickpool.map(fn, items)``, noting when the probe ended (read off the run's state)."""
    start = time.perf_counter()
    run = Run(fn, items, (), checked_options(model="auto"))
    assert run.auto is not None
    results: list[Any] = []
    probed = 0
    for done in run.dones():
        if not probed and run.auto.advice is not None:
            probed = len(results)
        if type(done) is Block:
            results += done.values
        else:
            results.append(run.output(done)[1])
    seconds = time.perf_counter() - start
    advice = run.auto.advice
    return results, AutoTiming(
        seconds, run.auto.probe_seconds, probed, advice.model if advice else "(probe only)"
    )


PEERS: dict[str, Callable[[Callable[[Any], Any], Sequence[Any], str], list[Any] | None]] = {
    "concurrent.futures": futures,
    "joblib": joblib_,
    "mpire": mpire_,
    "pebble": pebble_,
    "asyncio.gather": gather,
}


@dataclass
class Row:
    workload: Workload
    loop: float = 0.0
    auto: float = 0.0
    timing: AutoTiming | None = None
    peers: dict[str, float] = field(default_factory=dict)

    @property
    def best_peer(self) -> tuple[str, float] | None:
        if not self.peers:
            return None
        return min(self.peers.items(), key=lambda kv: kv[1])

    @property
    def probe_overhead(self) -> float:
        """What probing cost beyond its own items' share of the run: wall time lost to it."""
        assert self.timing is not None
        t = self.timing
        n = len(self._items) if self._items is not None else 0
        if n <= t.probed or t.seconds <= t.probe:
            return t.probe
        pace = (t.seconds - t.probe) / (n - t.probed)
        return max(0.0, t.probe - t.probed * pace)

    _items: Sequence[Any] | None = None


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def measure(w: Workload, repeat: int, peers: Sequence[str], *, verbose: bool = False) -> Row:
    row = Row(w)
    with w.make() as (fn, items):
        row._items = items
        # A loop of 20,000 awaits of 20 ms would take 400 s: time a sample, scale it (await20
        # returns its item).
        expected = loop(fn, items, w.kind) if w.loop_sample is None else list(items)
        loops, autos, timings = [], [], []
        per_peer: dict[str, list[float]] = {}
        for _ in range(repeat):
            if w.loop_sample is None:
                loops.append(_timed(lambda: loop(fn, items, w.kind))[0])
            else:
                sample = items[: w.loop_sample]
                seconds = _timed(lambda sample=sample: loop(fn, sample, w.kind))[0]  # type: ignore[misc]
                loops.append(seconds * len(items) / len(sample))
            results, timing = auto(fn, items)
            assert w.same(results, expected), f"auto gave other results on {w.name}"
            if verbose:
                print(f"    auto {timing}", flush=True)
            autos.append(timing.seconds)
            timings.append(timing)
            if not w.peers:
                continue
            for name in peers:
                seconds, got = _timed(lambda name=name: PEERS[name](fn, items, w.kind))  # type: ignore[misc]
                if got is None:
                    continue
                assert w.same(list(got), expected), f"{name} gave other results on {w.name}"
                per_peer.setdefault(name, []).append(seconds)
    row.loop = statistics.median(loops)
    row.auto = statistics.median(autos)
    row.timing = sorted(timings, key=lambda t: t.seconds)[len(timings) // 2]
    row.peers = {name: statistics.median(times) for name, times in per_peer.items()}
    return row


# Reporting -----------------------------------------------------------------------------------


def markdown(rows: Sequence[Row], peers: Sequence[str], machine: str) -> str:
    head = [
        "workload",
        "shape",
        "plain loop",
        "pickpool auto",
        *peers,
        "auto vs best peer",
        "probe",
    ]
    lines = [
        f"Seconds, median of the repeats ({machine}); in brackets, speed-up over the plain loop.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|",
    ]
    for r in rows:
        assert r.timing is not None
        estimated = " (est.)" if r.workload.loop_sample else ""
        cells = [r.workload.name, r.workload.shape, f"{r.loop:.2f}{estimated}"]
        cells.append(f"**{r.auto:.2f}** ({r.loop / r.auto:.1f}x, {r.timing.model})")
        for name in peers:
            t = r.peers.get(name)
            cells.append("—" if t is None else f"{t:.2f} ({r.loop / t:.1f}x)")
        best = r.best_peer
        cells.append("—" if best is None else _versus(best[1] / r.auto))
        cells.append(f"{r.timing.probe:.2f} s ({r.probe_overhead / r.auto:.0%} cost)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _versus(ratio: float) -> str:
    """'1.54x slower', never '0.65x faster': a reader should not have to invert a ratio."""
    if ratio >= 1:
        return f"{ratio:.2f}x faster"
    return f"{1 / ratio:.2f}x slower"


def plot(rows: Sequence[Row], peers: Sequence[str], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["pickpool auto", *peers]
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(names)
    shown = [r for r in rows if r.workload.peers]
    for k, name in enumerate(names):
        speedups = []
        for r in shown:
            t = r.auto if name == "pickpool auto" else r.peers.get(name)
            speedups.append(0.0 if t is None else r.loop / t)
        ax.bar([i + k * width for i in range(len(shown))], speedups, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shown))])
    ax.set_xticklabels([r.workload.name for r in shown], rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up over the plain loop (log)")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_title(f"pickpool auto vs peers, {machine}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def check(rows: Sequence[Row]) -> list[str]:
    """The targets, on the medians; returns the lines to print (FAIL lines fail the run)."""
    by = {r.workload.name: r for r in rows}
    out = []

    def verdict(ok: bool, text: str) -> None:
        out.append(f"{'ok  ' if ok else 'FAIL'} {text}")

    r = by["fine-grained CPU"]
    joblib_time = r.peers.get("joblib")
    verdict(
        r.loop / r.auto >= 1.4, f"fine-grained CPU: auto {r.loop / r.auto:.2f}x the loop (>= 1.4)"
    )
    if joblib_time is not None:
        verdict(
            joblib_time / r.auto >= 1.3,
            f"fine-grained CPU: auto {joblib_time / r.auto:.2f}x joblib (>= 1.3)",
        )
    r = by["coarse CPU"]
    verdict(
        r.loop / r.auto >= 0.85 * CORES,
        f"coarse CPU: auto {r.loop / r.auto:.2f}x the loop (>= 0.85 x {CORES} cores)",
    )
    r = by["trivial items"]
    verdict(
        r.auto <= 2 * r.loop, f"trivial items: auto {r.auto / r.loop:.2f}x the loop's time (<= 2)"
    )
    r = by["async I/O"]
    g = r.peers.get("asyncio.gather")
    if g is not None:
        verdict(
            r.auto <= 1.5 * g, f"async I/O: auto {r.auto / g:.2f}x asyncio.gather's time (<= 1.5)"
        )
    for r in rows:
        if r.auto > 5.0:
            share = r.probe_overhead / r.auto
            verdict(
                share < 0.05,
                f"{r.workload.name}: the probe cost {share:.1%} of a {r.auto:.1f} s run (< 5%)",
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller CPU workloads, 1 repeat")
    parser.add_argument("--markdown", type=Path, help="write the table here too")
    parser.add_argument("--plot", type=Path, help="draw speed-ups here (PNG, needs matplotlib)")
    parser.add_argument("--only", help="comma-separated workload names (substrings)")
    parser.add_argument("--verbose", action="store_true", help="print every auto run")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    missing = [m for m in ("joblib", "mpire", "pebble") if not _importable(m)]
    if missing:
        print(
            f"peers not installed: {', '.join(missing)}; pip install -e '.[bench]'", file=sys.stderr
        )
        return 2
    peers = list(PEERS)
    # pebble's thread pool logs a harmless "Future ... in unexpected state" on some runs.
    logging.disable(logging.ERROR)
    machine = (
        f"{CORES} cores, Python {sys.version.split()[0]}, {_machine.start_method()}, {sys.platform}"
    )
    print(f"pickpool vs peers: {machine}, {repeat} repeat(s)", flush=True)
    rows = []
    for w in workloads(args.quick):
        if args.only and not any(s in w.name for s in args.only.split(",")):
            continue
        start = time.perf_counter()
        row = measure(w, repeat, peers, verbose=args.verbose)
        rows.append(row)
        print(
            f"  {w.name:<24} loop {row.loop:6.2f}  auto {row.auto:6.2f} "
            f"({row.timing and row.timing.model})  "
            + "  ".join(f"{k} {v:.2f}" for k, v in row.peers.items())
            + f"   [{time.perf_counter() - start:.0f} s]",
            flush=True,
        )
    table = markdown(rows, peers, machine)
    print()
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.plot:
        plot(rows, peers, args.plot, machine)
    verdicts = check(rows) if not args.only else []
    print("\n".join(verdicts))
    return 1 if any(v.startswith("FAIL") for v in verdicts) else 0


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
