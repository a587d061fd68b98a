"""``model="auto"`` and ``advise`` against every fixed model, on one workload of each kind.

    .venv/bin/python benchmarks/auto.py [--quick] [--markdown]

For each workload: what ``advise`` says, then the seconds of ``pickpool.map`` under each fixed
model with pickpool's defaults and under ``model="auto"`` (its probe included), all measured in
this one run. ``auto/best`` is auto's time over the fastest fixed model's; ``advised/best`` is
the advised model's time (with defaults) over the fastest. The targets: auto within
1.25x of the best, plus 0.15 s for sub-second runs; the advised model within 1.25x.
Exits 1 if a target is missed, so that it can gate a change.

The last workloads call numpy, Pillow and pandas (``native_work.py``); each is left out, with a
note, when what it needs is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pickpool
from pickpool import _machine, lab
from pickpool._backends import MODELS
from pickpool.lab.__main__ import run_auto


@dataclass
class Workload:
    name: str
    # What the advice should call it; None where no one kind is right, and any is accepted.
    kind: str | None
    make: Callable[[], contextlib.AbstractContextManager[tuple[Callable[[Any], Any], list[Any]]]]


def _plain(
    fn: Callable[[Any], Any], items: list[Any]
) -> Callable[[], contextlib.AbstractContextManager[tuple[Callable[[Any], Any], list[Any]]]]:
    @contextlib.contextmanager
    def make() -> Iterator[tuple[Callable[[Any], Any], list[Any]]]:
        yield fn, items

    return make


@contextlib.contextmanager
def _sockets(n: int) -> Iterator[tuple[Callable[[Any], Any], list[Any]]]:
    with lab.server(0.02) as address:
        yield functools.partial(lab.fetch, address), list(range(n))


def _built(
    fn: Callable[[Any], Any], build: Callable[[int], list[Any]], count: int
) -> Callable[[], contextlib.AbstractContextManager[tuple[Callable[[Any], Any], list[Any]]]]:
    """Like :func:`_plain`, the items built on entry: only the workload being measured holds
    its items (150 matrices are 100 MB)."""

    @contextlib.contextmanager
    def make() -> Iterator[tuple[Callable[[Any], Any], list[Any]]]:
        yield fn, build(count)

    return make


# What the advice should call each native workload, as measured beside a thread spinning on the
# GIL: numpy's svd holds the GIL through the whole call (BLAS's threads run inside it), its
# matmul releases it, Pillow releases it while decoding, resizing and encoding. pandas' groupby
# holds it for about half of a call: "cpu" and "cpu-nogil" are both fair, so either goes.
NATIVE_KINDS: dict[str, str | None] = {
    "numpy svd": "cpu",
    "numpy matmul": "cpu-nogil",
    "Pillow JPEG": "cpu-nogil",
    "pandas groupby": None,
}


def native(n: Callable[[int], int]) -> list[Workload]:
    """The native_work workloads whose libraries are installed, with ``n(count)`` items."""
    import native_work

    return [
        Workload(w.name, NATIVE_KINDS[w.name], _built(w.fn, w.items, n(w.count)))
        for w in native_work.installed()
    ]


def workloads(scale: float) -> list[Workload]:
    def n(count: int) -> int:
        return max(8, int(count * scale))

    big = list(range(200_000))
    return [
        Workload("pure-Python CPU (25 ms)", "cpu", _plain(lab.crunch, list(range(n(80))))),
        Workload("hashlib 8 MiB", "cpu-nogil", _plain(lab.digest, list(range(n(200))))),
        Workload("zlib 1 MiB", "cpu-nogil", _plain(lab.squeeze, list(range(n(200))))),
        Workload("sleep 20 ms", "blocking-io", _plain(lab.blocking_wait, list(range(n(150))))),
        Workload("local socket 20 ms", "blocking-io", functools.partial(_sockets, n(150))),
        Workload("child process", "blocking-io", _plain(lab.child, list(range(n(60))))),
        Workload("tiny (1 µs)", "tiny", _plain(lab.tiny, list(range(n(200_000))))),
        Workload("light work, 200k-int list", "cpu", _plain(lab.sample_sum, [big] * n(60))),
        Workload("mixed: 10 ms sleep + CPU", "mixed", _plain(lab.mixed, list(range(n(80))))),
        Workload("async: await 20 ms", "async-io", _plain(lab.async_wait, list(range(n(300))))),
        Workload(
            "async: time.sleep inside",
            "blocking-io",
            _plain(lab.async_blocking, list(range(n(100)))),
        ),
        Workload("async: CPU inside", "cpu", _plain(lab.async_crunch, list(range(n(60))))),
        *native(n),
    ]


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a third of the items")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    scale = 1 / 3 if args.quick else 1.0
    # The fork server starts once per Python process (~70 ms): start it before timing anything,
    # so that no model (nor auto) pays it alone.
    pickpool.map(abs, [1], model="processes")
    header = ["workload", "advice", *MODELS, "auto", "auto chose", "auto/best", "advised/best"]
    rows: list[list[str]] = []
    missed = []
    print(
        f"pickpool auto benchmark: {_machine.cores()} cores, Python {sys.version.split()[0]}",
        file=sys.stderr,
    )
    for w in workloads(scale):
        with w.make() as (fn, items):
            advice = pickpool.advise(fn, items)
            times = {m: timed(lambda m=m: pickpool.map(fn, items, model=m)) for m in MODELS}
            auto, followed = run_auto(fn, items)
        chose = f"{followed.model}x{followed.workers}" if followed else "(all probed)"
        best = min(times.values())
        auto_ratio = auto / best
        advised_ratio = times[advice.model] / best
        allowed = 1.25 * best + (0.15 if best < 1 else 0.0)
        ok = auto <= allowed and advised_ratio <= 1.25
        if not ok:
            missed.append(w.name)
        kind = advice.kind if w.kind in (None, advice.kind) else f"{advice.kind} (!= {w.kind})"
        rows.append(
            [
                f"{w.name} x{len(items)}",
                f"{advice.model}x{advice.workers} {kind}",
                *(f"{times[m]:.2f}" for m in MODELS),
                f"{auto:.2f}",
                chose,
                f"{auto_ratio:.2f}" + ("" if auto <= allowed else " MISS"),
                f"{advised_ratio:.2f}" + ("" if advised_ratio <= 1.25 else " MISS"),
            ]
        )
        print(" | ".join(rows[-1]), file=sys.stderr)
    print()
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
    print(
        f"\nseconds per batch; auto includes its probe. Targets: auto <= 1.25x best "
        f"(+0.15 s under 1 s), advised <= 1.25x best. Missed: {', '.join(missed) or 'none'}"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
