"""``pickpool.star``: call a several-argument function with each item unpacked."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._task import is_async_callable


class _Star:
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, item: Iterable[Any]) -> Any:
        return self.fn(*item)

    def __repr__(self) -> str:
        return f"pickpool.star({self.fn!r})"

    def _pickpool_release_state(self) -> Any:
        """The wrapped function's (see ``_state.PerWorker._pickpool_release_state``)."""
        release = getattr(self.fn, "_pickpool_release_state", None)
        return None if release is None else release()


class _AsyncStar(_Star):
    __slots__ = ()

    async def __call__(self, item: Iterable[Any]) -> Any:
        return await self.fn(*item)


def star(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    """Adapt ``fn(a, b, ...)`` to take one tuple per item, as ``itertools.starmap`` does.

    The wrapper pickles wherever ``fn`` does, and stays async if ``fn`` is.

    Example::

        >>> import pickpool
        >>> pickpool.map(pickpool.star(pow), [(2, 3), (10, 2)], model="serial")
        [8, 100]
    """
    if not callable(fn):
        raise TypeError(f"star() needs a callable, not {type(fn).__name__}")
    return _AsyncStar(fn) if is_async_callable(fn) else _Star(fn)
