"""What every worker does with a chunk of items, whichever model it runs under.

A *task* is a chunk of consecutive items: ``(task_id, first_index, [item, ...])``. Running it
gives *outcomes*, ``(index, status, payload, traceback_text)``: ``status`` is :data:`BLOCK`
(payload is the list of results of items ``index, index + 1, ...``, all of which worked),
:data:`OK` (one item's result), :data:`ERROR` (the exception your function raised),
:data:`FATAL` (a ``BaseException`` such as ``SystemExit`` that the serial loop would not have
survived either) or :data:`LOST` (the item's chunk died with its worker). Plain tuples and
lists, because they cross process boundaries by the hundred thousand; a block makes the common
case, a chunk that all worked, one outcome.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
import os
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from . import _native

if TYPE_CHECKING:
    import asyncio

OK: Final = 0
ERROR: Final = 1
FATAL: Final = 2
BLOCK: Final = 3
# The item was in a chunk of several whose worker died, and which item killed it is unknown
# (payload: a WorkerCrashed saying so). Not a failure of the item: the driver runs it again
# alone, and only a crash of the item alone counts as a try. A backend reports it for every
# item of such a chunk; an item that was running alone fails with ERROR instead.
LOST: Final = 4

Task = tuple[int, int, Sequence[Any]]
Outcome = tuple[int, int, Any, str | None]


def is_async_callable(fn: object) -> bool:
    """True for ``async def`` functions, partials of them, and objects with async ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - the async-ness of __call__ itself
    return call is not None and inspect.iscoroutinefunction(call)


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def failed(index: int, exc: BaseException) -> Outcome:
    """The outcome of an item whose call raised ``exc``, caught by pickpool.

    The traceback then starts at your function: pickpool's own frames (and asyncio's, that
    ran a coroutine for it) are dropped from its head.
    """
    _drop_plumbing(exc)
    status = ERROR if isinstance(exc, Exception) else FATAL
    return (index, status, exc, format_traceback(exc))


# The folders whose frames lead into your function: pickpool's own, and asyncio's.
_PLUMBING: Final = (
    os.path.dirname(__file__) + os.sep,
    os.path.join(os.path.dirname(inspect.getfile(inspect)), "asyncio", ""),  # (a package)
)


def release(exc: BaseException) -> None:
    """Let go of what ``exc``'s traceback holds: the locals of every frame it passes through.

    For an exception nobody will look at again (a skipped failure, one already sent to the
    parent process): a traceback keeps its frames, and through them whatever the failed call
    built, alive; through ``f_back`` the frames also hold pickpool's own, whose locals hold
    the exception, a cycle only a garbage collection would free.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def _drop_plumbing(exc: BaseException) -> None:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PLUMBING):
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb


def _unwrapped(exc: BaseException) -> BaseException:
    """The user's own ``StopIteration``, where a generator turned it into a RuntimeError."""
    if type(exc) is not RuntimeError or not isinstance(exc.__cause__, StopIteration):
        return exc
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    # Raised by our own generator as it ended, so seen first in run_items: not by the function
    # itself, nor by a coroutine that raised StopIteration, which Python reports as this
    # RuntimeError (asyncio.run(f(x)) does), from deeper frames.
    code = None if tb is None else tb.tb_frame.f_code
    if code is not None and code.co_filename == __file__ and code.co_name == "run_items":
        return exc.__cause__
    return exc


class WithInit(NamedTuple):
    """A function and the initializer each new worker runs before its first item.

    ``initargs`` None: they came with the worker's start instead (objects that only cross to
    a process as it starts, as a ``multiprocessing.Queue`` or ``Lock``)."""

    fn: Callable[[Any], Any]
    initializer: Callable[..., object]
    initargs: tuple[Any, ...] | None


def run_initializer(
    initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> BaseException | None:
    """Run ``initializer(*initargs)`` in this worker; what it raised, if it did.

    A worker whose initializer failed cannot run your function as you meant it: every item
    it is given fails with that exception (and a note saying where it came from).
    """
    if initializer is None:
        return None
    try:
        initializer(*initargs)
    except BaseException as exc:
        exc.add_note(
            f"pickpool: raised by initializer={initializer_name(initializer)} in a new worker; "
            "the items given to that worker fail with it"
        )
        return exc
    return None


def initializer_name(initializer: Callable[..., Any] | None) -> str:
    """How messages name an initializer."""
    return getattr(initializer, "__qualname__", None) or repr(initializer)


class RemoteTraceback(Exception):
    """Carries a worker process's traceback text, chained under the re-raised exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def chain_remote(exc: BaseException, text: str | None) -> None:
    """An exception that crossed a process boundary (no traceback of its own here) gets the
    worker's traceback chained, as concurrent.futures does, so the user sees where it
    really happened. A cause it had there (an exception raised from another, in a nested
    pool) is in that text: the text takes its place, as in concurrent.futures."""
    if exc.__traceback__ is None and text and not isinstance(exc.__cause__, RemoteTraceback):
        exc.__cause__ = RemoteTraceback(text)


def task_indices(task: Task) -> range:
    """The indices of the items of ``task``."""
    return range(task[1], task[1] + len(task[2]))


def lost_chunk(task: Task, error: Exception) -> list[Outcome]:
    """The outcomes of ``task``, a chunk of several items that died with its worker: each item
    :data:`LOST`, carrying ``error``."""
    text = format_traceback(error)
    return [(index, LOST, error, text) for index in task_indices(task)]


def outcome_count(outcomes: list[Outcome]) -> int:
    """How many items ``outcomes`` account for."""
    return sum(len(payload) if status == BLOCK else 1 for _, status, payload, _ in outcomes)


def expand(outcome: Outcome) -> list[Outcome]:
    """A block as one ``OK`` outcome per item; any other outcome as itself."""
    index, status, payload, _ = outcome
    if status != BLOCK:
        return [outcome]
    return [(index + k, OK, value, None) for k, value in enumerate(payload)]


class Caller:
    """Calls ``fn`` on items in the current thread, owning an event loop if ``fn`` is async.

    One per worker thread or process: the loop is created on the first coroutine and reused, so
    an async function costs one loop per worker, not one per item. A plain function whose first
    result is awaitable (a lambda around an ``async def``) has all its results awaited; one
    whose first result is not runs at the speed of ``map`` itself, results as they come.
    """

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self._runner: asyncio.Runner | None = None
        # Whether results are awaited: known for an async function, learnt from the first
        # result otherwise (None until then).
        self._awaits: bool | None = True if is_async_callable(fn) else None
        self._guarded = False  # set once fn has raised StopIteration (see run_items)

    @property
    def plain(self) -> bool:
        """Whether ``fn`` is known to return plain results (nothing to await): its items may
        then be called directly, ``fn(item)``."""
        return self._awaits is False

    def call(self, index: int, item: Any) -> Outcome:
        """Run one item."""
        try:
            result = self.fn(item)
            if self._awaits is None:
                self._awaits = _awaitable(result)
            if self._awaits:
                result = self._await(result)
        except BaseException as exc:
            # KeyboardInterrupt and SystemExit too: as a FATAL outcome, which the driver
            # raises as itself, so that they reach the caller alike under every model.
            return failed(index, exc)
        return (index, OK, result, None)

    def run(self, task: Task, *, stop: bool = False) -> list[Outcome]:
        """Run a task's items in order: blocks of results, and one outcome per failure.

        ``stop``: return at the first failure, the items after it not run.
        """
        return self.run_items(task[1], task[2], stop=stop)

    def run_items(self, first: int, items: Sequence[Any], *, stop: bool = False) -> list[Outcome]:
        """:meth:`run` on ``items``, numbered from ``first``."""
        outcomes: list[Outcome] = []
        index, it = first, iter(items)
        if self._awaits is None:
            for item in it:
                outcome = self.call(index, item)
                index += 1
                if outcome[1] == OK:
                    outcomes.append((outcome[0], BLOCK, [outcome[2]], None))
                    # A first call that imported numpy (say) loaded a native thread pool:
                    # capped now, the rest of the chunk does not fight for the cores.
                    _native.caps.refresh()
                    break
                outcomes.append(outcome)
                if stop:
                    return outcomes
            else:
                return outcomes
        fn, awaits = self.fn, self._awaits
        while True:
            values: list[Any] = []
            try:
                # On an exception ``values`` keeps what came before it, ``it`` what comes
                # after. Plain results cost what `[fn(x) for x in items]` costs, and no more.
                if awaits:
                    values.extend(self._await(fn(item)) for item in it)
                elif self._guarded:
                    values.extend(fn(item) for item in it)
                else:
                    values.extend(map(fn, it))
            except BaseException as exc:
                _add_block(outcomes, index, values)
                index += len(values)
                # (Only a generator here turns the function's StopIteration into a RuntimeError;
                # map() hands the function's own RuntimeError over as it is.)
                outcomes.append(failed(index, _unwrapped(exc) if awaits or self._guarded else exc))
                index += 1
                if stop:
                    return outcomes
                continue
            _add_block(outcomes, index, values)
            index += len(values)
            if index - first == len(items) - operator.length_hint(it):
                return outcomes
            # An item was taken but gave no value: ``fn`` raised StopIteration, which map()
            # cannot tell from its own end. It fails that item; the exception object itself
            # was lost inside map(), so from now on items run through a generator, where
            # Python turns it into a RuntimeError that keeps it (PEP 479), at ~25 ns a call.
            self._guarded = True
            lost = StopIteration()
            lost.add_note(
                f"pickpool: your function raised StopIteration on item {index}; its value "
                "and traceback were lost, as a plain map() loses them"
            )
            outcomes.append(failed(index, lost))
            index += 1
            if stop:
                return outcomes

    def _await(self, awaitable: Any) -> Any:
        if self._runner is None:
            import asyncio

            self._runner = asyncio.Runner()
        return self._runner.run(_as_coroutine(awaitable))

    def close(self) -> None:
        """The worker is done with this run: its state closed (see ``worker_state``), on its
        loop if it made one, then the loop."""
        pending = release_state(self.fn)
        if pending is not None:
            if self._runner is not None:
                self._runner.run(closing(pending))
            else:
                _await_here(pending)
        if self._runner is not None:
            self._runner.close()
            self._runner = None


def release_state(fn: object) -> Any:
    """Close the state ``fn`` made for this thread under ``worker_state`` (see ``_state``), if
    any: what its ``close()`` returned if that must be awaited, else None."""
    release = getattr(fn, "_pickpool_release_state", None)
    if release is None:
        return None
    pending = release()
    return pending if inspect.isawaitable(pending) else None


def release_state_here(fn: object) -> None:
    """:func:`release_state`, awaited here if need be (a thread with no loop of its own)."""
    pending = release_state(fn)
    if pending is not None:
        _await_here(pending)


def _await_here(awaitable: Any) -> None:
    import asyncio

    asyncio.run(closing(awaitable))


async def closing(awaitable: Any) -> None:
    """Await a state's ``close()``: what it raises is not the run's failure."""
    with contextlib.suppress(Exception):  # (a state that fails to close is dropped anyway)
        await awaitable


def _add_block(outcomes: list[Outcome], index: int, values: list[Any]) -> None:
    if not values:
        return
    if outcomes and outcomes[-1][1] == BLOCK:
        last = outcomes[-1]
        if last[0] + len(last[2]) == index:
            last[2].extend(values)
            return
    outcomes.append((index, BLOCK, values, None))


def _awaitable(obj: object) -> bool:
    """``inspect.isawaitable``, at a fifth of the cost for the plain results most calls return."""
    if hasattr(type(obj), "__await__"):
        return True
    return inspect.isgenerator(obj) and bool(obj.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE)


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable
