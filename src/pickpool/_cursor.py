"""A run's input: where its items come from (a :class:`Source`), and the :class:`Cursor` that
hands them out to the run's phases in order.

An iterator is read in the caller's thread (:class:`Items`), or, for ``imap(chunksize=1)`` over
an input of unknown length, in a helper thread (:class:`Prefetched`): there a result is handed
out while the input waits for its next item, so that an input fed from the results (a crawler)
goes on. ``pickpool.Executor``'s lanes are sources too, of calls as they are submitted.

``model="auto"`` runs one input in several phases (the probe's, then the rest on the chosen
model, and again after a re-decision). Each takes its items through a :meth:`Cursor.gate`, which
stops handing them out when the phase's condition says so; :attr:`Cursor.taken` is then the
index of the next item, where the next phase starts numbering.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class Source:
    """Where a run's items come from: an iterator (:class:`Items`, :class:`Prefetched`), or
    calls as they are submitted (the Executor's lanes). A base class rather than a protocol: an
    iterable of the caller's own may well have a ``take`` method."""

    __slots__ = ()

    ended: bool = False  # no item will come any more
    # Items may come while the run's loop waits for outcomes, from a thread of ours: the loop
    # gives a way to wake it (attach), or looks again soon.
    live: bool = False

    def take(self, count: int) -> list[Any]:
        """Up to ``count`` items there are now (fewer, or none, if no more are there yet)."""
        raise NotImplementedError

    def wait(self, timeout: float | None) -> None:
        """Nothing runs: wait until an item may have come, or ``timeout`` seconds."""
        if timeout:
            time.sleep(timeout)

    def failure(self) -> BaseException | None:
        """What reading the input raised, if it did (its items read before it are taken)."""
        return None

    def attach(self, wake: Callable[[], None] | None) -> None:
        """(A live source.) Call ``wake`` (from any thread) when an item comes; None: no more."""

    def close(self) -> None:
        """The run is over: read no more."""


class Items(Source):
    """An iterator as a :class:`Source`: whatever it yields is there at once, and a short read
    means it has run out. What it raises ends it, and is kept: like a plain loop, the run hands
    out every item read before the input failed, and only then raises what it raised."""

    __slots__ = ("_error", "_iterator", "ended")

    def __init__(self, items: Iterable[Any]) -> None:
        self._iterator: Iterator[Any] = iter(items)
        self.ended = False
        self._error: Exception | None = None

    def take(self, count: int) -> list[Any]:
        chunk: list[Any] = []
        try:
            # extend() keeps what it appended before an exception; list(islice()) would lose it.
            chunk.extend(itertools.islice(self._iterator, count))
        except Exception as exc:
            self._error = exc
            self.ended = True
            return chunk
        if len(chunk) < count:
            self.ended = True
        return chunk

    def failure(self) -> Exception | None:
        return self._error


class Prefetched(Source):
    """An iterator read in a helper thread (named ``pickpool-input``), no further ahead than
    the run asks: while ``next()`` waits, the run goes on handing out results.

    A crawler whose input is fed from its own results (a queue the consumer fills) would
    otherwise deadlock: the loop would wait in ``next()`` for an item that only a result it
    holds can make. This is how ``multiprocessing.Pool.imap`` reads its input too. The reader
    reads at most what the run's last :meth:`take` asked for and did not get (so about what
    :class:`Items` would have read), plus the one item it may be reading when the run ends;
    it starts at the first :meth:`take`.

    Example::

        >>> source = Prefetched(iter("ab"))
        >>> got = []
        >>> while not source.ended:
        ...     got += source.take(2) or (source.wait(1.0) or [])
        >>> got
        ['a', 'b']
    """

    __slots__ = (
        "_closed",
        "_cond",
        "_done",
        "_error",
        "_items",
        "_iterator",
        "_reading",
        "_thread",
        "_wake",
        "_want",
        "ended",
    )

    live = True

    def __init__(self, items: Iterable[Any]) -> None:
        self._iterator: Iterator[Any] = iter(items)
        self._cond = threading.Condition()
        self._items: collections.deque[Any] = collections.deque()
        self._want = 0  # the reader reads until it holds this many items
        self._done = False  # the input ran out, or raised
        self._error: BaseException | None = None
        self._closed = False
        self._wake: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._reading = False  # in next(): the input's code runs
        self.ended = False

    def take(self, count: int) -> list[Any]:
        with self._cond:
            items = self._items
            chunk = [items.popleft() for _ in range(min(count, len(items)))]
            if self._done:
                self.ended = not items
                return chunk
            self._want = count - len(chunk)
            if self._want and not self._closed:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._read, name="pickpool-input", daemon=True
                    )
                    self._thread.start()
                self._cond.notify_all()
        return chunk

    def wait(self, timeout: float | None) -> None:
        with self._cond:
            if not (self._items or self._done or self._closed):
                self._cond.wait(timeout)

    def failure(self) -> BaseException | None:
        return self._error

    def attach(self, wake: Callable[[], None] | None) -> None:
        # Under the lock: once attach(None) returns, the old wake is never called again (the
        # loop closes what it woke right after).
        with self._cond:
            self._wake = wake

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._wake = None
            self._cond.notify_all()
            thread = self._thread
            if thread is None:
                self._iterator = iter(())  # (the input goes now, as it would with Items)
            elif self._reading:
                # Waiting in the input's next(), which nothing can interrupt: the thread ends
                # when it returns (the item it reads then is dropped, as read past the end).
                thread = None
        if thread is not None:
            thread.join()

    def _read(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._closed and len(self._items) >= self._want:
                    cond.wait()
                if self._closed:
                    self._iterator = iter(())
                    return
                self._reading = True
            ended, error, item = False, None, None
            try:
                item = next(self._iterator)
            except StopIteration:
                ended = True
            except BaseException as exc:  # (SystemExit too: the run raises it, after its items)
                ended, error = True, exc
            with cond:
                self._reading = False
                if ended:
                    self._done, self._error = True, error
                elif not self._closed:
                    self._items.append(item)
                del item
                if self._wake is not None:
                    self._wake()
                cond.notify_all()
                if ended:
                    self._iterator = iter(())
                    return


class Cursor:
    """Hands out the items of ``source`` in order, counting them.

    Example::

        >>> cursor = Cursor(iter("abcd"), length=4)
        >>> cursor.gate(lambda: cursor.taken < 2).take(5), cursor.taken, cursor.remaining()
        (['a', 'b'], 2, 2)
    """

    __slots__ = ("exhausted", "length", "source", "taken")

    def __init__(
        self, source: Iterable[Any] | Source, length: int | None, *, taken: int = 0
    ) -> None:
        self.source = source if isinstance(source, Source) else Items(source)
        self.length = length  # of the whole input, if known
        self.taken = taken  # the index of the next item
        self.exhausted = False

    def remaining(self) -> int | None:
        """Items not yet handed out, if the input's length is known (0 once it ran out)."""
        if self.exhausted:
            return 0
        return None if self.length is None else max(0, self.length - self.taken)

    def gate(self, allow: Callable[[], bool]) -> Source:
        """The next items, while ``allow()`` says so (asked before each); then it is closed."""
        return _Gate(self, allow)

    def next(self, most: int) -> Source:
        """The next ``most`` items (fewer at the end), taken as many at a time as asked: a
        gate asks before each item, which costs more than a tiny call."""
        return _Counted(self, most)

    def rest(self) -> Source:
        """The items left, uncounted: for a last phase that nothing follows (counting would
        cost items of a few microseconds a noticeable share)."""
        return self.source

    def take(self, count: int) -> list[Any]:
        """Up to ``count`` next items (fewer at the end, and :attr:`exhausted`, or while a live
        input has none yet)."""
        chunk = self.source.take(count)
        self.taken += len(chunk)
        if self.source.ended:
            self.exhausted = True
        return chunk


class _Gate(Source):
    """A cursor's items while ``allow()`` says so: a phase of the run."""

    __slots__ = ("_allow", "_cursor", "ended", "live")

    def __init__(self, cursor: Cursor, allow: Callable[[], bool]) -> None:
        self._cursor = cursor
        self._allow = allow
        self.ended = False
        self.live = cursor.source.live

    def take(self, count: int) -> list[Any]:
        chunk: list[Any] = []
        cursor = self._cursor
        while len(chunk) < count and not self.ended:
            if not self._allow():
                self.ended = True
                break
            got = cursor.take(1)
            chunk += got
            if cursor.exhausted:
                self.ended = True
            elif not got:
                break  # (a live input: none there yet)
        return chunk

    def wait(self, timeout: float | None) -> None:
        self._cursor.source.wait(timeout)

    def failure(self) -> BaseException | None:
        return self._cursor.source.failure()

    def attach(self, wake: Callable[[], None] | None) -> None:
        self._cursor.source.attach(wake)


class _Counted(_Gate):
    """A cursor's next ``most`` items: a phase of a known size."""

    __slots__ = ("_left",)

    def __init__(self, cursor: Cursor, most: int) -> None:
        super().__init__(cursor, _always)
        self._left = most
        self.ended = most <= 0

    def take(self, count: int) -> list[Any]:
        if self.ended:
            return []
        cursor = self._cursor
        chunk = cursor.take(min(count, self._left))
        self._left -= len(chunk)
        if self._left <= 0 or cursor.exhausted:
            self.ended = True
        return chunk


def _always() -> bool:
    return True
