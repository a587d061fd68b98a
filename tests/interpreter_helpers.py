"""Functions whose module loads in a sub-interpreter: it imports only the standard library.
(The test modules themselves import extensions that refuse sub-interpreters, such as psutil;
a function of theirs runs on worker processes instead.)"""

from __future__ import annotations

import time


def square(x: int) -> int:
    return x * x


def interpreter_id(_: int) -> int:
    """The id of the interpreter the call runs in (0: a process's main interpreter)."""
    from concurrent import interpreters  # type: ignore[attr-defined,unused-ignore]

    return int(interpreters.get_current().id)


def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def numpy_total(n: int) -> int:
    """Imports numpy in the call: numpy refuses to load in a sub-interpreter (as of 2.5)."""
    import numpy as np

    return int(np.arange(n).sum())
