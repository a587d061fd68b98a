"""Showing results: rich tables for advice and benchmarks, matplotlib plots.

rich and matplotlib are imported inside the functions, so that ``import pickpool`` stays
light; matplotlib is an optional extra (``pickpool[plot]``) with a clear message when missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._backends import LOOP
from ._text import format_seconds

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ._advise import Advice
    from ._bench import BenchResult


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says how to install it."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra(
            "plotting needs matplotlib: pip install 'pickpool[plot]' (or matplotlib)"
        ) from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def advice_table(advice: Advice) -> RenderableType:
    """The advice as rich renderables: the measurements, each model's prediction, the reasons."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    ev = advice.evidence
    measured = Table(title="what the probe measured", show_header=False, title_justify="left")
    measured.add_column("measure")
    measured.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("calls probed", f"{ev.calls} ({ev.failed} failed)"),
        ("wall time per call", format_seconds(ev.wall)),
        ("CPU time per call", f"{format_seconds(ev.cpu)} ({ev.cpu_share:.0%})"),
    ]
    if ev.child_cpu:
        rows.append(("child processes' CPU per call", format_seconds(ev.child_cpu)))
    if ev.gil_held is not None:
        rows.append(("GIL held while it runs", f"{ev.gil_held:.0%}"))
    if ev.scaling is not None:
        rows.append((f"{ev.threads} threads at once", f"{ev.scaling:.2f}x one"))
    if ev.loop_blocked is not None:
        rows.append((f"{ev.coroutines} coroutines at once: loop blocked", f"{ev.loop_blocked:.0%}"))
    rows.append(
        (
            "pickling item + result",
            f"{format_seconds(ev.item_pickle + ev.result_pickle)}, "
            f"{ev.item_bytes + ev.result_bytes:,} bytes",
        )
    )
    if ev.unpicklable:
        rows.append(("worker processes", "impossible: cannot be pickled"))
    for name, value in rows:
        measured.add_row(name, value)

    predicted = Table(title=f"predicted for {advice.items:,} items", title_justify="left")
    predicted.add_column("model")
    predicted.add_column("workers", justify="right")
    predicted.add_column("chunksize", justify="right")
    predicted.add_column("seconds", justify="right")
    predicted.add_column("vs serial", justify="right")
    serial = advice.predicted.get(LOOP, math.nan)
    for model, seconds in sorted(advice.predicted.items(), key=lambda kv: kv[1]):
        workers, chunk = advice.sizes.get(model, (0, 0))
        style = "bold green" if model == advice.model else ""
        speedup = serial / seconds if seconds and not math.isinf(seconds) else 0.0
        predicted.add_row(
            model, str(workers), str(chunk), format_seconds(seconds), f"{speedup:.1f}x", style=style
        )
    head = Text.assemble(
        ("Use ", ""),
        (f"model={advice.model!r}", "bold green"),
        (f", workers={advice.workers}, chunksize={advice.chunksize}", ""),
        (f"  [{advice.kind}]", "cyan"),
    )
    reasons = Text("\n".join(f"- {r}" for r in advice.reasons))
    return Group(head, reasons, measured, predicted)


def advice_json(advice: Advice) -> str:
    """The advice as one JSON object (for ``pickpool advise --json``)."""
    import dataclasses

    return json.dumps(
        {
            "model": advice.model,
            "workers": advice.workers,
            "chunksize": advice.chunksize,
            "kind": advice.kind,
            "items": advice.items,
            "predicted": {m: (None if math.isinf(s) else s) for m, s in advice.predicted.items()},
            "sizes": {m: list(v) for m, v in advice.sizes.items()},
            "reasons": list(advice.reasons),
            "evidence": dataclasses.asdict(advice.evidence),
        }
    )


def bench_table(result: BenchResult, title: str = "") -> RenderableType:
    from rich.table import Table

    table = Table(title=title or f"{result.items:,} items, speedup vs serial")
    for name, justify in (
        ("model", "left"),
        ("workers", "right"),
        ("chunksize", "right"),
        ("seconds", "right"),
        ("items/s", "right"),
        ("speedup", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    best = result.best
    for r in result.rows:
        table.add_row(
            r.label,
            str(r.workers) if r.workers else "auto",
            str(r.chunksize) if r.chunksize else "auto",
            f"{r.seconds:.3f}",
            f"{r.throughput:,.0f}",
            f"{r.speedup:.2f}x",
            style="bold green" if r is best else "",
        )
    return table


def plot_bench(result: BenchResult, path: Path, *, title: str | None = None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    by_model: dict[str, list[tuple[int, float]]] = {}
    for r in result.rows:
        by_model.setdefault(r.label, []).append((r.workers, r.throughput))
    if any(len(points) > 1 for points in by_model.values()):
        for model, points in by_model.items():
            points.sort()
            xs, ys = zip(*points, strict=True)
            if len(points) == 1:
                ax.axhline(ys[0], linestyle="--", linewidth=1, label=model, color="grey")
            else:
                ax.plot(xs, ys, marker="o", label=model)
        ax.set_xscale("log", base=2)
        counts = sorted({r.workers for r in result.rows})
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("workers")
        ax.set_ylabel("items per second")
    else:
        names = list(by_model)
        speedups = [next(r.speedup for r in result.rows if r.label == m) for m in names]
        ax.bar(names, speedups, color="tab:blue")
        ax.axhline(1.0, linestyle="--", linewidth=1, color="grey")
        ax.set_ylabel("speedup vs serial")
    ax.set_title(title or f"pickpool bench, {result.items:,} items")
    ax.legend() if ax.get_legend_handles_labels()[0] else None
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_demo(
    rows: Sequence[tuple[str, Mapping[str, float]]], path: Path, *, subtitle: str = ""
) -> Path:
    """Grouped bars: per workload, each model's speedup over serial (log scale)."""
    plt = _pyplot()
    models = list(rows[0][1]) if rows else []
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(rows))]
        speedups = [times[LOOP] / times[model] for _, times in rows]
        bars = ax.bar(xs, speedups, width, label=model)
        ax.bar_label(bars, labels=[f"{s:.1f}x" for s in speedups], fontsize=7, padding=1)
    ax.set_xticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.axhline(1.0, linestyle="--", linewidth=1, color="grey")
    ax.set_ylabel("speedup vs serial (log scale)")
    ax.set_title("threads, processes or asyncio? measured on this machine" + subtitle, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
