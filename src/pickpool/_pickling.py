"""Turning functions, items and outcomes into bytes for worker processes, with errors that help.

Everything goes through cloudpickle: worker processes never import the user's ``__main__``
(see ``_backends._processes``), so a function, class or instance defined there must travel by
value, which the standard pickler cannot do. Measured here, cloudpickle costs 1.15-1.7x the
standard pickler on typical chunks: a few microseconds per chunk.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import types
from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

import cloudpickle

from ._task import BLOCK, ERROR, OK, Outcome, Task, expand, format_traceback, task_indices

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_HINT = (
    "pass plain data (numbers, strings, paths, ids) and open locks, files, sockets or "
    "connections inside the function, or use model='threads', which needs no pickling"
)


class NotPicklable(TypeError, pickle.PicklingError):
    """Something cannot travel to or from a worker process: a ``TypeError`` (what pickpool
    raises for work that cannot be sent) that ``except pickle.PicklingError`` catches too. The
    message names what could not travel and what to do."""


# cloudpickle names the file of every function it sends by value "<dynamic-code>" (so that the
# bytes do not depend on where it was defined): a worker's traceback would then show neither
# the path nor the line's source, where ProcessPoolExecutor's shows both. The path is kept.
_CODE_REDUCE: Final = cloudpickle.Pickler.dispatch_table[types.CodeType]
_NAMELESS: Final = "<dynamic-code>"


def _code_with_its_file(code: types.CodeType) -> Any:
    rebuild, args = _CODE_REDUCE(code)
    if _NAMELESS in args:  # (no other argument is that string: names cannot be)
        args = tuple(code.co_filename if a == _NAMELESS else a for a in args)
    return rebuild, args


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
        {types.CodeType: _code_with_its_file}, cloudpickle.Pickler.dispatch_table
    )


def dumps(obj: Any) -> bytes:
    with io.BytesIO() as file:
        _Pickler(file, protocol=_PROTOCOL).dump(obj)
        return file.getvalue()


def dumps_with(obj: Any, reducers: Mapping[type, Callable[[Any], Any]]) -> bytes:
    """As :func:`dumps`, with ``reducers`` taking precedence for the types they name."""
    with io.BytesIO() as file:
        _PicklerWith(file, reducers).dump(obj)
        return file.getvalue()


class _PicklerWith(_Pickler):
    def __init__(self, file: io.BytesIO, reducers: Mapping[type, Callable[[Any], Any]]) -> None:
        # Set before the pickler starts: it reads its table once, there.
        self.dispatch_table = ChainMap(dict(reducers), _Pickler.dispatch_table)  # type: ignore[misc]
        super().__init__(file, protocol=_PROTOCOL)


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def _describe(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__qualname__} object, whose repr() failed>"
    return text if len(text) <= 80 else text[:77] + "..."


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:
        return f"<{type(obj).__qualname__}, whose str() failed>"


def dumps_function(fn: object) -> bytes:
    """The function as bytes for a worker process, or a ``TypeError`` that says what to do."""
    try:
        return dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or _describe(fn)
        raise NotPicklable(
            f"cannot send function {name} to a worker process: {type(exc).__name__}: {exc}. "
            f"It holds something that cannot be pickled; {_HINT}"
        ) from exc


def dumps_task(task: Task) -> bytes:
    """The task as bytes, or a ``TypeError`` naming the first item that cannot be pickled."""
    try:
        return dumps(task)
    except Exception as exc:
        index, item = _first_unpicklable(task[1], task[2]) or (task[1], None)
        raise NotPicklable(
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
    except BaseException:
        # Some result cannot travel (its __reduce__ may raise anything, SystemExit too): find
        # it, item by item; it fails, the worker lives.
        return dumps([_travelling(o) for outcome in outcomes for o in expand(outcome)])


def _travelling(outcome: Outcome) -> Outcome:
    index, status, payload, text = outcome
    try:
        loads(dumps(payload))
    except BaseException as exc:
        if status == OK:
            error = NotPicklable(
                f"the result of item {index} ({_describe(payload)}) cannot be sent back from "
                f"the worker process: {type(exc).__name__}: {exc}; return plain data, or use "
                "model='threads'"
            )
            return (index, ERROR, error, format_traceback(error))
        if isinstance(payload, BaseException):
            # An exception whose __init__ wants other arguments than it keeps (keyword-only
            # ones, say): rebuilt by its state, without calling __init__, it is still itself,
            # so that `except MyError` works in the parent.
            by_state = _ByState(payload)
            try:
                loads(dumps(by_state))
            except Exception:
                pass
            else:
                return (index, status, by_state, text)
        from ._errors import PickpoolError

        substitute = PickpoolError(
            f"item {index} raised {type(payload).__qualname__}: {_safe_str(payload)}, which "
            "cannot be sent "
            f"back from the worker process ({type(exc).__name__}: {exc}); give the exception "
            "class an __init__ that accepts the arguments it passes to Exception.__init__"
        )
        return (index, status, substitute, text)
    return outcome


class _ByState:
    """Pickles an exception as its class, ``args`` and ``__dict__``: :func:`_rebuild` makes it
    again in the parent without calling its ``__init__``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return (_rebuild, (type(exc), exc.args, dict(getattr(exc, "__dict__", {}))))


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    exc = BaseException.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def loads_outcomes(message: bytes, task: Task | None = None) -> list[Outcome]:
    """A worker's outcomes, parent side. A result that cannot be loaded here fails its item.

    With the ``task`` they are of, one outcome of index -1 (every item: the task's indices did
    not load in the worker, or nothing of the message loads here) is one for each of its items.

    The whole message is one pickle, loaded at C speed. If that fails (a result holds an
    object whose class cannot be rebuilt here, such as an exception whose ``__init__`` wants
    other arguments than it keeps), it is loaded again by a lenient unpickler that puts a
    marker where an object could not be rebuilt, and only the items holding a marker fail.
    """
    outcomes = _outcomes(message)
    if task is not None and len(outcomes) == 1 and outcomes[0][0] == -1:
        _, status, error, text = outcomes[0]
        return [(index, status, error, text) for index in task_indices(task)]
    return outcomes


def _outcomes(message: bytes) -> list[Outcome]:
    try:
        outcomes: list[Outcome] = loads(message)
    except (Exception, SystemExit) as raised:
        exc = _as_load_error(raised)
        try:
            outcomes = _Lenient(io.BytesIO(message)).load()
        except (Exception, SystemExit):
            return [(-1, ERROR, exc, format_traceback(exc))]
        return [o for outcome in outcomes for o in _loaded(outcome)]
    return outcomes


def _as_load_error(exc: BaseException) -> Exception:
    """What loading a result raised, as its item's failure: a ``SystemExit`` a result's
    ``__reduce__`` raises in the parent ends neither the run nor the program."""
    if isinstance(exc, Exception):
        return exc
    from ._errors import PickpoolError

    error = PickpoolError(f"a result could not be loaded here: loading it raised {exc!r}")
    error.__cause__ = exc
    return error


def load_result(data: bytes, index: int) -> list[Outcome]:
    """Item ``index``'s result pickled alone (a worker's journal), as its outcome, parent side:
    leniently, as :func:`loads_outcomes` loads a chunk's."""
    try:
        return [(index, OK, loads(data), None)]
    except (Exception, SystemExit) as raised:
        exc = _as_load_error(raised)
        try:
            value = _Lenient(io.BytesIO(data)).load()
        except (Exception, SystemExit):
            return [(index, ERROR, exc, format_traceback(exc))]
        return _loaded((index, OK, value, None))


def _loaded(outcome: Outcome) -> list[Outcome]:
    """``outcome``, with the items whose value holds a :class:`_Broken` marker failed."""
    if _holds_broken(outcome[2]) is None:
        return [outcome]
    result: list[Outcome] = []
    for index, status, payload, text in expand(outcome):
        broken = _holds_broken(payload)
        if broken is None:
            result.append((index, status, payload, text))
            continue
        cause = broken.exc
        what = "result" if status == OK else "exception"
        error = NotPicklable(
            f"the {what} of item {index} was sent back from the worker process but cannot be "
            f"rebuilt here: {type(cause).__name__}: {_safe_str(cause)}; return plain data "
            "(numbers, strings, lists, dicts), or use model='threads'"
        )
        error.__cause__ = cause
        result.append((index, ERROR, error, format_traceback(error)))
    return result


class _Broken:
    """Stands where the lenient unpickler could not rebuild an object; ``exc`` says why.

    It takes whatever the rest of the pickle does to the object it stands for (items
    appended, keys set, state set), so that loading goes on to the next item.
    """

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, *args: Any, **kwargs: Any) -> _Broken:
        return self  # a class that could not be found: what it would have built

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _Lenient(pickle._Unpickler):  # the pure-Python unpickler: its steps can be overridden
    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception as exc:
            return _Broken(exc)

    def _rebuilt(self, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except (Exception, SystemExit) as exc:
            return _Broken(_as_load_error(exc))

    def load_reduce(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        args = stack.pop()
        func = stack[-1]
        stack[-1] = self._rebuilt(lambda: func(*args))

    def load_newobj(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        args = stack.pop()
        cls = stack.pop()
        stack.append(
            cls if type(cls) is _Broken else self._rebuilt(lambda: cls.__new__(cls, *args))
        )

    def load_newobj_ex(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        kwargs = stack.pop()
        args = stack.pop()
        cls = stack.pop()
        if type(cls) is _Broken:
            stack.append(cls)  # its class was not found here: say so, not that __new__ failed
            return
        stack.append(self._rebuilt(lambda: cls.__new__(cls, *args, **kwargs)))

    def load_build(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        if isinstance(stack[-2], _Broken):
            stack.pop()
            return
        try:
            super().load_build()  # type: ignore[misc]
        except Exception as exc:
            stack[-1] = _Broken(exc)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def _holds_broken(value: Any) -> _Broken | None:
    """The first :class:`_Broken` marker inside ``value``, found by pickling it again."""
    found: list[_Broken] = []

    class Finder(cloudpickle.Pickler):  # type: ignore[misc]
        def persistent_id(self, obj: Any) -> Any:
            if type(obj) is _Broken:
                found.append(obj)
                return 0
            return None

    with contextlib.suppress(Exception):  # it loaded, so it is not what failed
        Finder(io.BytesIO(), _PROTOCOL).dump(value)
    return found[0] if found else None
