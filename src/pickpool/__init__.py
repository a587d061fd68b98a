"""pickpool: threads, processes or asyncio? One call over every concurrency model.

``pickpool.map(f, xs)`` returns what ``[f(x) for x in xs]`` returns, run serially, on threads,
on processes or on an event loop, with the same ordering and error semantics on each.
"""

from ._api import amap, imap, map
from ._errors import BackendUnavailable, PickpoolError, TaskTimeout, WorkerCrashed
from ._outcome import Failure
from ._star import star

__all__ = [
    "BackendUnavailable",
    "Failure",
    "PickpoolError",
    "TaskTimeout",
    "WorkerCrashed",
    "amap",
    "imap",
    "map",
    "star",
]

__version__ = "0.1.0.dev0"
