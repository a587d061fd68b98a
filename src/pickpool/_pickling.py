"""Turning functions, items and outcomes into bytes for worker processes, with errors that help.

Everything goes through cloudpickle: worker processes never import the user's ``__main__``
(see ``_backends._processes``), so a function, class or instance defined there must travel by
value, which the standard pickler cannot do. Measured here, cloudpickle costs 1.15-1.7x the
standard pickler on typical chunks: a few microseconds per chunk.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from ._task import BLOCK, ERROR, OK, Outcome, Task, expand, format_traceback

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_HINT = (
    "pass plain data (numbers, strings, paths, ids) and open locks, files, sockets or "
    "connections inside the function, or use model='threads', which needs no pickling"
)


def dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def _describe(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """The function as bytes for a worker process, or a ``TypeError`` that says what to do."""
    try:
        return dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or _describe(fn)
        raise TypeError(
            f"cannot send function {name} to a worker process: {type(exc).__name__}: {exc}. "
            f"It holds something that cannot be pickled; {_HINT}"
        ) from exc


def dumps_task(task: Task) -> bytes:
    """The task as bytes, or a ``TypeError`` naming the first item that cannot be pickled."""
    try:
        return dumps(task)
    except Exception as exc:
        index, item = _first_unpicklable(task[1], task[2]) or (task[1], None)
        raise TypeError(
            f"cannot send item {index} ({_describe(item)}) to a worker process: "
            f"{type(exc).__name__}: {exc}; {_HINT}"
        ) from exc


def _first_unpicklable(first: int, items: Sequence[Any]) -> tuple[int, Any] | None:
    for index, item in enumerate(items, first):
        try:
            dumps(item)
        except Exception:
            return (index, item)
    return None


def dumps_outcomes(outcomes: list[Outcome]) -> bytes:
    """Outcomes as bytes, worker side. A result or exception that cannot travel fails its item.

    Exceptions are also loaded back once, because a custom exception whose ``__init__`` takes
    other arguments than it passes to ``Exception.__init__`` pickles fine but fails to load in
    the parent, which would lose the whole chunk there.
    """
    outcomes = [_travelling(o) if o[1] not in (OK, BLOCK) else o for o in outcomes]
    try:
        return dumps(outcomes)
    except Exception:
        # Some result cannot travel: find it, item by item.
        return dumps([_travelling(o) for outcome in outcomes for o in expand(outcome)])


def _travelling(outcome: Outcome) -> Outcome:
    index, status, payload, text = outcome
    try:
        loads(dumps(payload))
    except Exception as exc:
        if status == OK:
            error = TypeError(
                f"the result of item {index} ({_describe(payload)}) cannot be sent back from "
                f"the worker process: {type(exc).__name__}: {exc}; return plain data, or use "
                "model='threads'"
            )
            return (index, ERROR, error, format_traceback(error))
        from ._errors import PickpoolError

        substitute = PickpoolError(
            f"item {index} raised {type(payload).__qualname__}: {payload}, which cannot be sent "
            f"back from the worker process ({type(exc).__name__}: {exc}); give the exception "
            "class an __init__ that accepts the arguments it passes to Exception.__init__"
        )
        return (index, status, substitute, text)
    return outcome
