"""Workloads whose calls run in native libraries: numpy (BLAS, LAPACK), Pillow and pandas.

Each workload is a top-level function of one item (so that every pool can send it to its
processes by name) and a function that builds its items, deterministically from a fixed seed.
numpy's calls run OpenBLAS's own thread pool, one thread per core, inside every call; Pillow
and pandas release the GIL in their C loops but run on the calling thread.

Nothing is built at import: a worker process that imports this module to find a function
pays for numpy, Pillow or pandas only when it calls one, and never for the inputs.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

SEED = 20_240_601
MATRIX = 300  # side of the square matrices
MATMUL_STEPS = 10
IMAGE = (1600, 1000)  # width x height: 1.6 Mpixel
DISTINCT_IMAGES = 4
JPEG_QUALITY = 90
FRAME_ROWS = 200_000
FRAME_GROUPS = 1000
DISTINCT_FRAMES = 4


# numpy -------------------------------------------------------------------------------------------


def matrices(count: int, seed: int = SEED) -> list[np.ndarray]:
    """``count`` distinct MATRIX x MATRIX float64 matrices of standard normal entries."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.standard_normal((MATRIX, MATRIX)) for _ in range(count)]


def svd_items(count: int = 150) -> list[np.ndarray]:
    """The items of :func:`svd_top`."""
    return matrices(count, SEED)


def svd_top(m: np.ndarray) -> float:
    """The largest singular value (LAPACK's gesdd).

    numpy's wrapper holds the GIL for the whole call (numpy 2.4), BLAS's threads running inside.
    """
    import numpy as np

    return float(np.linalg.svd(m, compute_uv=False)[0])


def matmul_items(count: int = 150) -> list[np.ndarray]:
    """The items of :func:`matmul_chain` (other matrices than :func:`svd_items`')."""
    return matrices(count, SEED + 1)


def matmul_chain(m: np.ndarray) -> float:
    """MATMUL_STEPS products by ``m`` (BLAS gemm), rescaled after each so none overflows.

    Releases the GIL in every product and rescaling.
    """
    import numpy as np

    x = m
    for _ in range(MATMUL_STEPS):
        x = x @ m
        x /= np.abs(x).max()
    return float(x.sum())


# Pillow ------------------------------------------------------------------------------------------


def _jpeg(index: int) -> bytes:
    """A photo-like JPEG: smooth gradients (cheap to code) under noise (what makes it work)."""
    import numpy as np
    from PIL import Image

    width, height = IMAGE
    rng = np.random.default_rng(SEED + 10 + index)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = index * 0.7
    base = np.stack(
        [
            128 + 100 * np.sin(x / (90 + 10 * index) + phase),
            128 + 100 * np.cos(y / (70 + 5 * index) - phase),
            255 * (x + y) / (width + height),
        ],
        axis=-1,
    )
    pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def jpeg_items(count: int = 100) -> list[bytes]:
    """``count`` JPEG files as bytes, DISTINCT_IMAGES different ones in turn (the same objects).

    Repeating a few images keeps building them cheap; every item is still decoded in full.
    """
    images = [_jpeg(i) for i in range(DISTINCT_IMAGES)]
    return [images[i % DISTINCT_IMAGES] for i in range(count)]


def jpeg_halve(data: bytes) -> int:
    """Decode a JPEG, resize it to half its width and height, encode it again: the new size."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        half = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    half.save(out, "JPEG", quality=JPEG_QUALITY)
    return len(out.getvalue())


# pandas ------------------------------------------------------------------------------------------


def _frame(index: int) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(SEED + 20 + index)
    return pd.DataFrame(
        {
            "k": rng.integers(0, FRAME_GROUPS, FRAME_ROWS),
            "x": rng.standard_normal(FRAME_ROWS),
            "y": rng.uniform(0, 100, FRAME_ROWS),
        }
    )


def frame_items(count: int = 60) -> list[pd.DataFrame]:
    """``count`` frames of FRAME_ROWS rows, DISTINCT_FRAMES different ones in turn."""
    frames = [_frame(i) for i in range(DISTINCT_FRAMES)]
    return [frames[i % DISTINCT_FRAMES] for i in range(count)]


def groupby_stats(df: pd.DataFrame) -> float:
    """Per-key mean, standard deviation and maximum, folded into one float."""
    stats = df.groupby("k").agg(
        x_mean=("x", "mean"), x_std=("x", "std"), y_max=("y", "max"), n=("y", "size")
    )
    return float((stats["x_mean"] * stats["n"]).sum() + stats["x_std"].sum() + stats["y_max"].sum())


# The table the benchmarks read -------------------------------------------------------------------


@dataclass(frozen=True)
class Native:
    """One workload: its function, how to build ``count`` items, what it needs installed."""

    name: str
    shape: str
    fn: Callable[[Any], Any]
    items: Callable[[int], list[Any]]
    count: int
    needs: tuple[str, ...]

    def missing(self) -> list[str]:
        """The modules it needs that are not installed (found without importing them)."""
        return [m for m in self.needs if importlib.util.find_spec(m) is None]


WORKLOADS: tuple[Native, ...] = (
    Native(
        "numpy svd",
        f"{MATRIX}x{MATRIX} float64, singular values",
        svd_top,
        svd_items,
        150,
        ("numpy",),
    ),
    Native(
        "numpy matmul",
        f"{MATRIX}x{MATRIX} float64, {MATMUL_STEPS} products",
        matmul_chain,
        matmul_items,
        150,
        ("numpy",),
    ),
    Native(
        "Pillow JPEG",
        f"{IMAGE[0]}x{IMAGE[1]} JPEG, decode, halve, encode",
        jpeg_halve,
        jpeg_items,
        100,
        ("numpy", "PIL"),
    ),
    Native(
        "pandas groupby",
        f"{FRAME_ROWS // 1000}k rows, {FRAME_GROUPS} keys, agg",
        groupby_stats,
        frame_items,
        60,
        ("numpy", "pandas"),
    ),
)


def same(got: list[Any], expected: list[Any]) -> bool:
    """Results equal, floats to 1e-9: BLAS sums in another order with another thread count."""
    import math

    return len(got) == len(expected) and all(
        math.isclose(a, b, rel_tol=1e-9) if isinstance(a, float) else a == b
        for a, b in zip(got, expected, strict=True)
    )


def installed() -> list[Native]:
    """The workloads whose libraries are installed, with a note for each one left out."""
    found = []
    for w in WORKLOADS:
        lacking = w.missing()
        if lacking:
            print(f"  left out {w.name}: {', '.join(lacking)} not installed", flush=True)
        else:
            found.append(w)
    return found
