"""What a run did, as data: :class:`Report`, and :class:`Results`, ``imap``'s iterator."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from ._advise import Advice

R = TypeVar("R")


@dataclass
class Leg:
    """One stretch of a run on one model: auto's probe, or a model it ran the items on.

    ``model``: what ran. ``workers``: the most calls that ran at once (not the ceiling a
    limiter could have climbed to). ``items``: how many it handed out; ``seconds``: from its
    start to its last result. ``why``: what put it there (the model given, auto's probe, auto's
    decision, or the drift that made auto decide again). ``probe``: one of auto's measuring
    phases. ``first``: seconds from its start to its first result (its workers' start-up
    included). ``switch``: when auto switched to its model from another, what the switch
    cost: the seconds from the end of the leg before to this one's first result (the new
    probe, the new workers' start); else None.

    Example::

        >>> _, report = pickpool.map(fetch, urls, report=True)
        >>> [(leg.model, leg.workers, leg.items) for leg in report.legs]
        [('serial', 1, 1), ('threads', 4, 3), ('threads', 37, 296)]
    """

    model: str
    workers: int = 0
    items: int = 0
    seconds: float = 0.0
    why: str = ""
    probe: bool = False
    first: float | None = None
    switch: float | None = None

    def __str__(self) -> str:
        count = f"{self.items:,} {'item' if self.items == 1 else 'items'}"
        return f"{self.model} x{self.workers}: {count} in {self.seconds:.2f} s"


@dataclass
class Report:
    """What one ``map``, ``imap`` or ``amap`` call ran on, what auto decided, and what happened.

    ``model``, ``workers`` and ``chunksize``: what ran (under auto, its latest decision; the
    probe's first items ran alone or a few at a time before it); ``workers`` is the most
    calls that ran at once. ``legs``: every stretch of the run, in order (see :class:`Leg`):
    under auto, its probe's phases and each model it ran on. ``advice``: auto's first
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
    legs: list[Leg] = field(default_factory=list)
    done: int = 0
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0

    def settle(self) -> None:
        """After a run: its model and workers are the last leg's (the most calls it ran at
        once), if a leg ran items."""
        runs = [leg for leg in self.legs if not leg.probe and leg.items]
        if runs:
            self.model, self.workers = runs[-1].model, runs[-1].workers
        between, before = 0.0, None
        for leg in self.legs:
            if leg.probe:
                between += leg.seconds
                continue
            if before is not None and leg.model != before.model and leg.first is not None:
                leg.switch = between + leg.first
            between, before = 0.0, leg

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
        runs = [leg for leg in self.legs if not leg.probe]
        if len(runs) > 1:
            text += "; ran on " + " then ".join(
                f"{leg.model} x{leg.workers} ({leg.items:,} items, {leg.seconds:.2f} s"
                + ("" if leg.switch is None else f", switching cost {leg.switch:.2f} s")
                + ")"
                for leg in runs
            )
        elif len(self.decisions) > 1:
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


class AsyncResults(AsyncIterator[R], Generic[R]):
    """``aimap``'s results: an async iterator, and an async context manager that stops the run
    on exit; :attr:`report` says what the run did so far, as :class:`Results`' does.

    Example::

        async with pickpool.aimap(fetch, urls) as pages:
            async for page in pages:
                ...
        print(pages.report)
    """

    def __init__(self, results: AsyncGenerator[R, None], report: Report) -> None:
        self._results = results
        self._report = report
        self._began: float | None = None

    def __aiter__(self) -> AsyncResults[R]:
        return self

    async def __anext__(self) -> R:
        if self._began is None:
            self._began = time.perf_counter()
        try:
            return await anext(self._results)
        finally:
            self._report.seconds = time.perf_counter() - self._began

    async def aclose(self) -> None:
        """Stop the run: running items get a short grace period, workers are released."""
        await self._results.aclose()

    async def __aenter__(self) -> AsyncResults[R]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def report(self) -> Report:
        """What the run did so far (see :class:`Report`)."""
        return self._report

    def __repr__(self) -> str:
        return f"<pickpool.AsyncResults: {self._report}>"
