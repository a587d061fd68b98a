"""Large numpy arrays sent to worker processes as memory maps, as joblib's loky backend sends them.

joblib dumps an array argument larger than ``max_nbytes`` to a file (in ``/dev/shm`` where it
has room) once, and each worker maps that file (``mmap_mode``) instead of unpickling a copy:
eight workers on one 1 GB array then share one copy in the page cache, and the parent pickles
nothing but the file's name. This module uses joblib's own reducers for that, on a batch of
joblib tasks only as it is pickled for a worker process: on threads the batch runs as it is.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import Any

from joblib._memmapping_reducer import (  # type: ignore[import-untyped]
    TemporaryResourcesManager,
    get_memmapping_reducers,
)

from ._pickling import dumps_with

_Reducers = Mapping[type, Callable[[Any], Any]]


class Memmapping:
    """The memory-mapped arguments of one ``Parallel`` call: :meth:`wrap` each batch, and
    :meth:`clean` when the call's tasks have all ended (its files are then deleted)."""

    def __init__(
        self, max_nbytes: int, mmap_mode: str | None, temp_folder: str | None, context: str
    ) -> None:
        self._files = TemporaryResourcesManager(temp_folder, context_id=context)
        # (Workers never unlink a file: the parent deletes them all as the call ends, so
        # that no worker has to reach joblib's resource tracker process.)
        self._forward, self._backward = get_memmapping_reducers(
            temp_folder_resolver=self._files.resolve_temp_folder_name,
            max_nbytes=max_nbytes,
            mmap_mode=mmap_mode,
            unlink_on_gc_collect=False,
        )

    @property
    def active(self) -> bool:
        """Whether there is anything to map (numpy is installed)."""
        return bool(self._forward)

    def wrap(self, batch: Callable[[], Any]) -> Callable[[], Any]:
        return _Batch(batch, self._forward, self._backward)

    def clean(self) -> None:
        self._files._clean_temporary_resources(force=True)


class _Batch:
    """A batch as the parent holds it: run in this process, it is the batch itself; pickled,
    its large arrays become memory maps, and the worker sends its results back with joblib's
    reducers for that direction (an array backed by a file of the caller's returns as a map
    of that file)."""

    __slots__ = ("backward", "batch", "forward")

    def __init__(self, batch: Callable[[], Any], forward: _Reducers, backward: _Reducers) -> None:
        self.batch, self.forward, self.backward = batch, forward, backward

    def __call__(self) -> Any:
        return self.batch()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_in_worker, (dumps_with((self.batch, self.backward), self.forward),))

    def __repr__(self) -> str:
        return repr(self.batch)


def _in_worker(data: bytes) -> _WorkerBatch:
    return _WorkerBatch(*pickle.loads(data))


class _WorkerBatch:
    __slots__ = ("backward", "batch")

    def __init__(self, batch: Callable[[], Any], backward: _Reducers) -> None:
        self.batch, self.backward = batch, backward

    def __call__(self) -> _Results:
        return _Results(self.batch(), self.backward)

    def __repr__(self) -> str:
        return repr(self.batch)


class _Results:
    """A worker's results, which unpickle in the parent as the results themselves."""

    __slots__ = ("backward", "value")

    def __init__(self, value: Any, backward: _Reducers) -> None:
        self.value, self.backward = value, backward

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (dumps_with(self.value, self.backward),))
