"""What pickpool tells ``logging.getLogger("pickpool")``: silent unless the user configures it.

At INFO, auto's decisions: what the probe measured (one line), what it chose and why, and
each re-decision after a drift. At WARNING, each crash, timeout and retry. The library adds
only a ``NullHandler``, as libraries should: Python's last-resort handler stays quiet.

Example::

    >>> import logging
    >>> logging.basicConfig(level=logging.INFO)
    >>> pickpool.map(fetch, urls)   # INFO:pickpool:auto chose threads x64 ...
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._text import format_seconds

if TYPE_CHECKING:
    from ._advise import Advice

logger = logging.getLogger("pickpool")
logger.addHandler(logging.NullHandler())


def _brief(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises still gets logged
        text = "<unprintable>"
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decided(advice: Advice, *, start: int, most: int, again: str | None = None) -> None:
    """Auto's decision for the items from ``start`` on (``most``: the workers it may reach
    as its count climbs; ``again``: why it decided again)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    ev = advice.evidence
    calls = f"{ev.calls} call{'' if ev.calls == 1 else 's'}"
    measured = (
        f"probe: {calls} in {format_seconds(ev.seconds)}; a call alone "
        f"{format_seconds(ev.wall)} wall, {ev.cpu_share:.0%} on a CPU"
    )
    if ev.scaling is not None and ev.threads:
        measured += f"; {ev.threads} threads ran {ev.scaling:.1f}x as fast as one"
    if ev.failed:
        measured += f"; {ev.failed} failed"
    logger.info(measured)
    predicted = advice.predicted.get(advice.model)
    line = (
        f"auto {'re-decided' if again else 'chose'} {advice.model} x{advice.workers}, chunks of "
        f"{advice.chunksize} ({advice.kind}) from item {start}"
    )
    if most > advice.workers:
        line += f" (its count then follows the run, up to {most})"
    if predicted is not None:
        line += f", predicted {format_seconds(predicted)} for {advice.items:,} items"
    if again:
        line += f" ({again})"
    if advice.reasons:
        line += f": {advice.reasons[0]}"
    logger.info(line)


def retrying(index: int, tries: int, retries: int, exc: Any, delay: float) -> None:
    """Item ``index`` failed its try number ``tries``; it is tried again in ``delay`` s."""
    if logger.isEnabledFor(logging.WARNING):
        when = f"in {format_seconds(delay)}" if delay > 0 else "at once"
        logger.warning(
            "item %d failed (%s); retry %d of %d %s", index, _brief(exc), tries, retries, when
        )


def failed_hard(index: int, exc: BaseException) -> None:
    """A crash or a timeout: worth a warning even when the item is then retried."""
    if logger.isEnabledFor(logging.WARNING):
        logger.warning("item %d: %s", index, _brief(exc))
