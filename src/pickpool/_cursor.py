"""The input of one run, shared by its phases: each phase goes on from the next item.

``model="auto"`` runs one input in several phases (the probe's, then the rest on the chosen
model, and again after a re-decision). Each takes its items through a :meth:`Cursor.gate`, which
stops handing them out when the phase's condition says so; :attr:`Cursor.taken` is then the
index of the next item, where the next phase starts numbering.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class Cursor:
    """Hands out the items of ``source`` in order, counting them.

    Example::

        >>> cursor = Cursor(iter("abcd"), length=4)
        >>> list(cursor.gate(lambda: cursor.taken < 2)), cursor.taken, cursor.remaining()
        (['a', 'b'], 2, 2)
    """

    __slots__ = ("_source", "exhausted", "length", "taken")

    def __init__(self, source: Iterator[Any], length: int | None, *, taken: int = 0) -> None:
        self._source = source
        self.length = length  # of the whole input, if known
        self.taken = taken  # the index of the next item
        self.exhausted = False

    def remaining(self) -> int | None:
        """Items not yet handed out, if the input's length is known (0 once it ran out)."""
        if self.exhausted:
            return 0
        return None if self.length is None else max(0, self.length - self.taken)

    def gate(self, allow: Callable[[], bool]) -> Iterator[Any]:
        """The next items, while ``allow()`` says so (asked before each); then it is closed."""
        return _Gate(self, allow)

    def rest(self) -> Iterator[Any]:
        """The items left, uncounted: for a last phase that nothing follows (counting would
        cost items of a few microseconds a noticeable share)."""
        return self._source

    def take(self) -> Any:
        """The next item (``StopIteration`` once there is none, and :attr:`exhausted`)."""
        try:
            item = next(self._source)
        except StopIteration:
            self.exhausted = True
            raise
        self.taken += 1
        return item


class _Gate:
    __slots__ = ("_allow", "_closed", "_cursor")

    def __init__(self, cursor: Cursor, allow: Callable[[], bool]) -> None:
        self._cursor = cursor
        self._allow = allow
        self._closed = False

    def __iter__(self) -> _Gate:
        return self

    def __next__(self) -> Any:
        if self._closed or not self._allow():
            self._closed = True
            raise StopIteration
        try:
            return self._cursor.take()
        except StopIteration:
            self._closed = True
            raise
