"""A module that imports numpy as it loads: numpy refuses to load in a sub-interpreter (its C
extension has no support for them, as of numpy 2.5), so a function of this module cannot even
be loaded there."""

from __future__ import annotations

import numpy as np


def total(n: int) -> int:
    return int(np.arange(n).sum())
