"""Numbers in words for people: seconds, counts with their noun, sizes in bytes.

A leaf: the advice's sentences, the log lines, the tables and the error messages all say
numbers the same way, and none of them needs anything else of pickpool to do it.
"""

from __future__ import annotations

import math


def format_seconds(s: float) -> str:
    """Seconds for people: 1.23 s, 45.6 ms, 789 µs, 150 ns.

    Example::

        >>> format_seconds(0.0456)
        '45.6 ms'
    """
    if math.isinf(s):
        return "impossible"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    if s >= 1e-6 or s <= 0:
        return f"{s * 1e6:.0f} µs"
    return f"{s * 1e9:.0f} ns"


def plural(n: int, word: str) -> str:
    """``n`` and ``word``, plural unless ``n`` is 1: ``plural(3, "worker")`` is "3 workers"."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def format_bytes(n: int) -> str:
    """A size for people: 512 bytes, 1.5 KiB, 2.0 MiB."""
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"
