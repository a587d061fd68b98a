"""Built-in workloads that stand for the seeds' cases, for the demo and the benchmarks.

Each is a module-level function of one item, so every model (processes included) can run it.

Example::

    >>> import pickpool
    >>> from pickpool import lab
    >>> len(pickpool.map(lab.digest, range(2), model="threads"))
    2
"""

from __future__ import annotations

import asyncio
import hashlib
import time

# Sized so that one call takes ~20-30 ms on a 2020s core: long enough for any model's
# hand-off to be small beside it.
CRUNCH_N = 400_000
DIGEST_BYTES = b"\x5a" * (8 * 1024 * 1024)
WAIT_SECONDS = 0.02


def crunch(seed: int) -> int:
    """Pure-Python CPU work that holds the GIL: the seeds' case for processes."""
    total = seed
    for i in range(CRUNCH_N):
        total = (total * 31 + i) % 1_000_003
    return total


def digest(seed: int) -> str:
    """CPU work in C that releases the GIL (hashlib on 8 MiB): threads run it in parallel."""
    h = hashlib.sha256(seed.to_bytes(8, "little"))
    h.update(DIGEST_BYTES)
    return h.hexdigest()[:16]


def blocking_wait(seed: int) -> int:
    """A blocking wait of 20 ms that releases the GIL, as the seeds' ``time.sleep`` example."""
    time.sleep(WAIT_SECONDS)
    return seed


async def async_wait(seed: int) -> int:
    """The same wait as a coroutine: the seeds' case for asyncio."""
    await asyncio.sleep(WAIT_SECONDS)
    return seed
