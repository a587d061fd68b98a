"""A module that takes ~0.6 s to import: a worker's first item waits for it."""

from __future__ import annotations

import time

time.sleep(0.6)  # stands for a heavy import (numpy, torch...), paid once per worker process


def quick(x: int) -> int:
    time.sleep(0.01)
    return 3 * x
