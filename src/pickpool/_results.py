"""What a run did, as data: :class:`Report`, and :class:`Results`, ``imap``'s iterator."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from ._advise import Advice

R = TypeVar("R")


@dataclass
class Report:
    """What one ``map``, ``imap`` or ``amap`` call ran on, what auto decided, and what happened.

    ``model``, ``workers`` and ``chunksize``: what ran (under auto, its latest decision; the
    probe's first items ran alone or a few at a time before it). ``advice``: auto's first
    decision (``None`` when the model was given, or before auto has decided), ``decisions``:
    it and each re-decision after a drift, in order. ``done``: items finished, failed ones
    included; ``failed``: the indices of those that failed for good; ``skipped``: those left
    out (``on_error="skip"``); ``retries``: tries made after a failure; ``seconds``: from the
    first result asked for to the last one handed out.

    Example::

        >>> results, report = pickpool.map(fetch, urls, report=True)
        >>> report.model, report.workers, report.failed
        ('threads', 64, [])
        >>> print(report.advice)   # why auto chose it
    """

    model: str
    workers: int
    chunksize: int | None
    advice: Advice | None = None
    decisions: list[Advice] = field(default_factory=list)
    done: int = 0
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        ran = f"{self.model} x{self.workers}"
        if self.chunksize is not None:
            ran += f", chunks of {self.chunksize}"
        text = (
            f"{self.done:,} {'item' if self.done == 1 else 'items'} in {self.seconds:.2f} s on "
            f"{ran}; {len(self.failed)} failed, {self.retries} retried"
        )
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        if len(self.decisions) > 1:
            text += f"; auto decided {len(self.decisions)} times"
        return text


class Results(Iterator[R], Generic[R]):
    """``imap``'s results: an iterator, and a context manager that stops the run on exit.

    ``with pickpool.imap(fn, items) as results:`` stops the workers when the block ends,
    ``break`` included (a bare ``break`` leaves them until the iterator is closed or
    collected). :attr:`report` says what the run did so far, :attr:`advice` what auto
    decided (``None`` until it has, on the first results, or when the model was given).

    Example::

        >>> with pickpool.imap(fetch, urls) as results:
        ...     for page in results:
        ...         if "needle" in page:
        ...             break
        >>> results.report.done
        17
    """

    def __init__(self, results: Generator[R, None, None], report: Report) -> None:
        self._results = results
        self._report = report
        self._began: float | None = None

    def __iter__(self) -> Results[R]:
        return self

    def __next__(self) -> R:
        if self._began is None:
            self._began = time.perf_counter()
        try:
            return next(self._results)
        finally:
            self._report.seconds = time.perf_counter() - self._began

    def close(self) -> None:
        """Stop the run: running items get a short grace period, workers are released."""
        self._results.close()

    def __enter__(self) -> Results[R]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def report(self) -> Report:
        """What the run did so far (see :class:`Report`)."""
        return self._report

    @property
    def advice(self) -> Advice | None:
        """Auto's first decision, once made (``None`` under a given model)."""
        return self._report.advice

    def __repr__(self) -> str:
        return f"<pickpool.Results: {self._report}>"
