"""Per-item results that failed: :class:`Failure`, in the spirit of ``outcome.Error``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Failure:
    """Stands in the results, under ``on_error="collect"``, where an item failed.

    Attributes:
        index: the item's position in the input (0-based).
        item: the item itself, as it was passed to the function.
        exception: what was raised: your function's own exception, or a
            :class:`pickpool.TaskTimeout` / :class:`pickpool.WorkerCrashed`.
        traceback: the formatted traceback from where the exception was raised (in the worker).
        attempts: how many times the item was tried (``retries + 1`` when every try failed).

    Example::

        >>> import pickpool
        >>> pickpool.map(lambda x: 1 // x, [1, 0], model="serial", on_error="collect")[1].index
        1
    """

    index: int
    item: Any
    exception: BaseException
    traceback: str
    attempts: int = 1

    def __repr__(self) -> str:
        return (
            f"Failure(index={self.index}, item={self.item!r}, "
            f"exception={self.exception!r}, attempts={self.attempts})"
        )

    def unwrap(self) -> Any:
        """Raise the stored exception, as the serial loop would have raised it.

        Example::

            for r in pickpool.map(f, xs, on_error="collect"):
                value = r.unwrap() if isinstance(r, pickpool.Failure) else r
        """
        raise self.exception
