"""A worker process's journal: the outcomes of its chunk's finished items, in memory it shares
with its parent, so that a worker that dies mid-chunk loses no finished item's result.

A chunk's outcomes go back to the parent in one message when the chunk ends; a worker that
dies before then took them with it. Without them, the finished items would have to run again,
and run twice. So the worker also records each outcome here as soon as its item finishes
(pickled, ~1 µs): the parent, seeing the worker gone, reads which items finished and their
outcomes, blames the one after them (it was running), and sends the rest again, which never
started. Writes to shared memory outlive the process that made them.

The journal is an anonymous memory file (``memfd_create``, Linux): nothing on disk, gone with
the last process that maps it. Where there is none, a worker keeps no journal, and the items of
a chunk that died with it run again one by one, as they always may.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import pickletools
import struct
from typing import Any, Final

from .._pickling import load_result
from .._task import Outcome

# 4 MiB: room for the outcomes of a chunk of small results; larger ones go to the parent early.
SIZE: Final = 4 * 1024 * 1024
# The header: the task the journal records (its id), the index of the item its first record is
# of, how many records, where the last ends.
_HEADER: Final = struct.Struct("<qqqq")
_WORD: Final = struct.Struct("<q")  # one of the header's: the count at 16, the end at 24


def available() -> bool:
    """Whether this platform has anonymous memory files to keep journals in."""
    return hasattr(os, "memfd_create")


class Journal:
    """One worker's journal, mapped by the worker (which writes it) and its parent (which reads
    it once the worker is gone)."""

    __slots__ = ("_count", "_end", "_map")

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, SIZE)
        self._count = 0
        self._end = _HEADER.size

    @classmethod
    def create(cls) -> tuple[Journal, int]:
        """A new journal (the parent's side), and the descriptor a worker maps it with."""
        fd = os.memfd_create("pickpool-journal", os.MFD_CLOEXEC)
        os.ftruncate(fd, SIZE)
        return cls(fd), fd

    def close(self) -> None:
        self._map.close()

    # The worker's side ---------------------------------------------------------------------

    def begin(self, task_id: int, start: int = 0) -> None:
        """Record the outcomes of task ``task_id`` from item ``start`` on (none yet)."""
        self._count, self._end = 0, _HEADER.size
        _HEADER.pack_into(self._map, 0, task_id, start, 0, self._end)

    def record(self, value: Any) -> bool:
        """Record the result of the next item (items are recorded in order, from the one
        :meth:`begin` named); False if it cannot be (nothing recorded): the journal is full, or
        the standard pickler (a fifth of cloudpickle's time) cannot pickle it. A failure is not
        recorded: it goes to the parent at once, with what was recorded before it.

        The record and where it ends are written before the count that makes it visible (one
        aligned 8-byte store), so that a worker killed in between leaves the journal as it was
        before. Pickles delimit themselves.
        """
        try:
            data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception:
            return False
        end = self._end + len(data)
        if end > SIZE:
            return False
        self._map[self._end : end] = data
        self._count += 1
        self._end = end
        _WORD.pack_into(self._map, 24, end)
        _WORD.pack_into(self._map, 16, self._count)
        return True

    # The parent's side ---------------------------------------------------------------------

    def read(self, task_id: int) -> tuple[int, list[Outcome]] | None:
        """The outcomes recorded for task ``task_id``, in order, and the item the first is of;
        None if the journal records another task (the worker died before it began this one)."""
        task, first, count, end = _HEADER.unpack_from(self._map, 0)
        if task != task_id:
            return None
        outcomes: list[Outcome] = []
        records = self._map[_HEADER.size : end]
        at = 0
        for index in range(first, first + count):
            length = _pickle_length(records, at)
            outcomes += load_result(records[at : at + length], index)
            at += length
        return first, outcomes


def _pickle_length(records: bytes, at: int) -> int:
    """How many bytes the pickle at ``at`` takes: read, not loaded (a class it names may not
    load here, and loading it twice would cost twice)."""
    stream = io.BytesIO(records)
    stream.seek(at)
    for opcode, _, position in pickletools.genops(stream):
        if opcode.name == "STOP":
            assert position is not None
            return position + 1 - at
    return len(records) - at


class SharedFd:
    """A descriptor handed to a worker process as it starts, whatever the start method (as
    multiprocessing hands over a pipe's ends): a fork child has it already, a spawned or
    forkserver child gets a duplicate."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing import reduction

        return (_rebuilt, (reduction.DupFd(self.fd),))


def _rebuilt(dup: Any) -> SharedFd:
    return SharedFd(dup.detach())
