"""Per-item cost of each model against a plain loop, measured in one run.

    .venv/bin/python benchmarks/overhead.py [N]

Prints, for N trivial items and for N/100 items of ~1 ms of pure-Python work, each model's
time and its ratio to the plain loop; then what starting 1, 2, 4 and 8 workers adds to a run
of worker processes and of sub-interpreters (where this Python has them), against the same
run on workers kept from the last one. Ratios, not absolute times, are what to compare across
machines. (Timing claims live here, never in unit tests.)
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pickpool
from pickpool._backends import MODELS, _interpreters, _processes


def trivial(x: int) -> int:
    return x + 1


def millisecond(x: int) -> int:
    total = x
    for i in range(15_000):
        total = (total * 31 + i) % 1_000_003
    return total


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    for name, fn, count in (("trivial", trivial, n), ("~1 ms CPU", millisecond, n // 100)):
        items = range(count)
        loop = timed(lambda fn=fn, items=items: [fn(x) for x in items])  # type: ignore[misc]
        print(f"\n{name} x{count}: plain loop {loop:.3f} s")
        print(f"{'model':<10} {'seconds':>8} {'vs loop':>8} {'us/item over loop':>18}")
        for model in MODELS:
            t = timed(lambda fn=fn, items=items, model=model: pickpool.map(fn, items, model=model))  # type: ignore[misc]
            extra = (t - loop) / count * 1e6
            print(f"{model:<10} {t:8.3f} {t / loop:7.2f}x {extra:18.1f}")
        # A loop fixed at chunks of one item: what advising chunksize=1 for a loop would cost.
        t = timed(lambda fn=fn, items=items: pickpool.map(fn, items, model="serial", chunksize=1))  # type: ignore[misc]
        extra = (t - loop) / count * 1e6
        print(f"{'serial, chunks of 1':<10} {t:8.3f} {t / loop:7.2f}x {extra:18.1f}")
        # What advise predicts for the loop, against the loop's measured time.
        advice = pickpool.advise(fn, items)
        ratio = advice.predicted["serial"] / advice.items * count / loop
        print(
            f"advise: {advice.model}; a loop predicted {advice.predicted['serial']:.3f} s for "
            f"{advice.items} items, {ratio:.2f}x the loop measured"
        )
    starts()


def starts() -> None:
    """A cold run (its workers started for it) minus a warm one (workers kept from the last
    run of the same size), the median of five."""
    print(f"\nstarting workers (ms a run): {'workers':>7} {'cold':>7} {'warm':>7} {'start':>7}")
    pools = {"processes": _processes.warm, "interpreters": _interpreters.warm}
    for model, pool in pools.items():
        if model == "interpreters" and not _interpreters.available():
            continue
        for k in (1, 2, 4, 8):
            cold, warm = [], []
            for _ in range(5):
                pool.clear()
                cold.append(timed_run(model, k))
                warm.append(timed_run(model, k))
            c, w = statistics.median(cold) * 1e3, statistics.median(warm) * 1e3
            print(f"{model:<27} {k:>7} {c:7.1f} {w:7.1f} {c - w:7.1f}")


def timed_run(model: str, workers: int) -> float:
    """One item a worker, on ``workers`` workers of ``model``."""
    return timed(lambda: pickpool.map(trivial, range(workers), model=model, workers=workers))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
