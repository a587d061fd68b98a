"""How many calls may run at once, moved by what the run measures.

:class:`Limiter` follows the calls' latency and failures (a far side with a finite capacity:
a server, a database, an API with a quota); :class:`Climber` follows throughput (hill climbing,
for calls that compute). Both are plain bookkeeping, fed by a backend with what it sees (the
threads backend's workers, asyncio's item runner): no threads, no I/O, tested on made-up
samples. :class:`Marks` carries what a client saw before the calls ended (late connects).
"""

from __future__ import annotations

import collections
import itertools
import math
import statistics
import threading
import time
from collections.abc import Iterable


class Climber:
    """How many threads may run at once, moved by the throughput it measures (hill climbing).

    As .NET's thread pool does: every :data:`INTERVAL` seconds (and at least a few
    completions), compare items per second with the last interval's; keep moving the limit the
    same way while throughput rises by more than the noise, turn back when it falls, and hold
    when it is flat. Steps are an eighth of the limit, at least one; the limit stays between
    half the start and ``cap``. Blocking I/O's best thread count drifts with the far side's
    latency: the start is Little's law on the probe's numbers, the climb follows the run.
    """

    INTERVAL = 0.1
    NOISE = 0.05

    def __init__(self, start: int, cap: int) -> None:
        self.limit = start
        self._low, self._high = max(1, start // 2), max(start, cap)
        self._direction = 1
        self._last: float | None = None
        self._began = time.monotonic()
        self._done = 0
        self.history: list[tuple[int, float]] = []  # (limit, items per second) per interval

    def completed(self, count: int) -> bool:
        """``count`` more items finished; True if the limit moved."""
        self._done += count
        now = time.monotonic()
        elapsed = now - self._began
        if elapsed < self.INTERVAL or self._done < 2 * self.limit:
            return False
        rate = self._done / elapsed
        self.history.append((self.limit, rate))
        self._began, self._done = now, 0
        last, self._last = self._last, rate
        if last is not None:
            if rate < last * (1 - self.NOISE):
                self._direction = -self._direction  # worse: turn back
            elif rate <= last * (1 + self.NOISE):
                return False  # flat: stay
        step = max(1, self.limit // 8)
        moved = min(self._high, max(self._low, self.limit + self._direction * step))
        if moved == self.limit:
            self._direction = -self._direction
            return False
        self.limit = moved
        return True


class Marks:
    """Signs, noted by the client, that the far side is at its limit before the calls show
    it, as ECN marks a packet before a router drops one (RFC 3168): :mod:`pickpool.hedge`
    notes a connect not completed within its hedging wait (a SYN that a full listen queue
    dropped). A dropped SYN costs a call a second; a hedged one costs it 50 ms, and the
    :class:`Limiter` that reads the mark stops the rise that would drop both SYNs of a
    connect. Process-wide: the calls of a run on threads note them where the limiter reads
    (two runs at once, against two far sides, read each other's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._noted: collections.deque[tuple[float, float]] = collections.deque(maxlen=4096)
        # Seconds after it begins that the last connect armed would be marked late, and when
        # it began (time.monotonic(); -inf: none armed here).
        self.horizon = 0.0
        self.armed = -math.inf

    def arm(self, wait: float) -> None:
        """A connect begins now that will be marked late if not completed in ``wait`` s
        (never, if that is infinite)."""
        if wait < math.inf:
            self.horizon, self.armed = wait, time.monotonic()

    def horizon_since(self, when: float) -> float:
        """:attr:`horizon`, if a connect was armed since ``when`` (a run whose calls connect
        through a client that marks); else 0: nothing marks this run's connects."""
        return self.horizon if self.armed >= when else 0.0

    def note(self, began: float) -> None:
        """A connect that began at ``began`` (``time.monotonic()``) is late."""
        with self._lock:
            self._noted.append((time.monotonic(), began))

    def read(self, noted_after: float, began_after: float) -> list[tuple[float, float]]:
        """(noted, began) of the marks noted after ``noted_after``, of connects that began
        after ``began_after``."""
        found = []
        with self._lock:
            for noted, began in reversed(self._noted):  # (noted in order, under the lock)
                if noted <= noted_after:
                    break
                if began > began_after:
                    found.append((noted, began))
        return found


marks = Marks()


# One controller's rules, each tested on made-up samples: they share its whole state.
# (Long on purpose: the limit, its ceiling and its window move together.)
class Limiter:
    """How many calls may run at once, moved by their latency and failures, for calls that wait
    on something with a finite capacity (a server, a database, an API with a quota).

    Each call's latency is compared with the no-load latency the probe measured (lowered if a
    window sees less). In windows of a few completions (tens of milliseconds for 20 ms calls):

    * failures rising above :data:`FAILING` of the window: at once, down to as many calls as
      went through (at most halved), with a ceiling just below where it broke; but not below
      the calls at once that the far side's goodput over the last :data:`GOODPUT_HORIZON`
      seconds sustains at the no-load latency (a rate limit refuses every call for up to a
      second after a burst, and halving at each window of refusals would end at one call,
      half what 100 calls a second of 20 ms take); a rise past the ceiling that breaks goes
      back to the ceiling, where calls ran clean;
    * two calls running :data:`STUCK` times the no-load latency, and at least
      :data:`STUCK_LEAST` (connections dropped past a listen backlog, which the client's kernel
      retries only after a second, RFC 6298's initial timeout; one slow call among others is
      a tail, not a drop): back to the last limit whose calls all ran clean below the one in
      force when the oldest stuck call started (half that, if none did), with the ceiling
      there, which rises again only after :data:`REPROBE` times the penalty the stuck calls
      paid, twice that each time it drops calls again. Each such call costs a second, more
      than many whole batches;
    * connects the client marked late (:class:`Marks`: SYNs a full listen queue dropped,
      which hedged connects got through): down by half the share marked (or as the queue
      below cuts, if more), and the first end the climb at the limit in force when they
      began (the ceiling there);
    * a window's median latency above :data:`TOLERANCE` times the no-load latency (queueing
      at the far side), and no more completions per second than the last window (by Little's
      law, calls at once over latency: on a busy machine 64 calls at twice the latency still
      beat 32): cut the limit in proportion, as the gradient of Envoy's adaptive concurrency
      filter and Netflix's concurrency-limits do;
    * otherwise, when the limit was reached and validated (every call started before the last
      rise has finished, and none runs past :data:`HOLD` times the no-load latency: the
      overshoot past an unseen drop point is then one step): double it (TCP's slow start)
      until the first cut, or until latency begins to rise (the least of a window's past
      :data:`SLOW_START_EXIT` times the no-load latency: the knee is near, as TCP's HyStart
      reads it), then add about its square root per window while latency holds. A ceiling
      rises by one every :data:`RECOVER` clean windows spent at it (half as often each time
      such a rise breaks again, down to every :data:`MOST_RECOVER`), so that a far side that
      recovered is found again.

    Calls start paced (:attr:`pace`), never in a burst: a far side that takes new connections
    one at a time, through a short listen backlog, drops those of a burst.

    Throughput alone (:class:`Climber`) is too slow and too noisy to see a knee in a run of a
    few seconds; latency rises at the knee within a window.
    """

    TOLERANCE = 2.0
    SLOW_START = 2
    SLOW_START_EXIT = 1.25
    STUCK = 8.0
    STUCK_LEAST = 0.5
    REPROBE = 8.0
    HOLD = 4.0
    FAILING = 0.1
    GOODPUT_HORIZON = 2.0  # seconds (two of the usual rate limit's, of a second)
    RECOVER = 8
    MOST_RECOVER = 64

    def __init__(self, start: int, cap: int, baseline: float) -> None:
        self.limit = max(1, min(start, cap))
        self._cap = cap
        self._ceiling = cap
        self._floor = max(baseline, 1e-6)
        self._growing = True
        self._latencies: list[float] = []
        self._failures = 0
        self._calls = 0
        self._busiest = 0
        self._acted = 0.0  # calls started before this tell of an old limit: not judged
        # Calls started before this were running when stuck calls were last acted on: not
        # judged stuck again. (Other cuts leave them judged: marks cut every few windows, and
        # calls stuck behind them were never seen.)
        self._unstuck = 0.0
        self._at_ceiling = 0  # clean windows spent at the ceiling
        self._recover = self.RECOVER  # of them, before it rises by one
        self._probing = False  # the ceiling just rose: no clean window above the old one yet
        # Since when it runs: its goodput, and the marks its calls' connects arm, are read from
        # then on. (Not the oldest level kept below: only the last 64 are.)
        self._born = time.monotonic()
        # Every limit set, (since when, limit), for what was in force when a stuck call
        # started; and the limits whose calls all ran clean (each rise's start).
        self._levels: list[tuple[float, int]] = [(self._born, self.limit)]
        self._clean: set[int] = set()
        self._rose = 0.0  # when the limit last rose: calls started before it tell of the old
        self._throughput = 0.0  # the last window's calls at once over its median latency
        # After stuck calls: the ceiling rises again no sooner than this (time.monotonic()),
        # and the wait doubles each time it drops calls again.
        self._reprobe_at = 0.0
        self._reprobe_wait = 0.0
        self._marks_read = time.monotonic()  # marks noted before this were read
        self._goodput: collections.deque[tuple[float, int]] = collections.deque()  # (when, items)
        self._marked_before = False
        self.history: list[tuple[int, float, float]] = []  # (limit, median latency, failed)

    @property
    def pace(self) -> float:
        """Seconds between call starts: twice the rate that keeps ``limit`` calls running
        while the limit grows (it fills within half a latency), 1.25x once it holds, as TCP
        paces its packets."""
        return self._floor / (self.limit * (2.0 if self._growing else 1.25))

    def hold(self, latency: float, failed: bool) -> float:
        """Seconds a call that just ended keeps its place before the next call takes it: a
        refused one (a 429, "too many clients", answered at once), up to one no-load latency,
        as if it had been served. Without it, a place that cycles through quick refusals
        fills a window with them, and the far side sees more calls, not fewer."""
        return max(0.0, self._floor - latency) if failed else 0.0

    @property
    def stuck_after(self) -> float:
        """Seconds a call may run before it counts as stuck (a dropped connection): on a
        busy machine a quarter of a second cut 57 calls to 28 for nothing."""
        return max(self.STUCK * self._floor, self.STUCK_LEAST)

    def next_look(self, running: Iterable[float]) -> float | None:
        """Seconds until calls now running (their starts, ``time.monotonic()``, oldest first)
        would count as stuck, or None if none can (all started before the last cut for stuck
        calls): a caller waiting for completions looks again by then, since stuck calls
        complete nothing.

        Stuck means two calls past :attr:`stuck_after` (or the only one judged): one slow call
        is a far side's tail latency, several at once are connections it dropped. Only the
        oldest are read, up to the second judged: a thousand coroutines in flight cost no more
        than two, but for those that started before stuck calls were last cut for (within a
        latency of it)."""
        return self._look(self._judged(running))

    def _judged(self, running: Iterable[float]) -> list[float]:
        """The two oldest starts judged (after the last stuck calls' cut), or fewer."""
        judged: list[float] = []
        for start in running:
            if start > self._unstuck:
                judged.append(start)
                if len(judged) == 2:
                    break
        return judged

    def _look(self, judged: list[float]) -> float | None:
        if not judged:
            return None
        return max(0.0, judged[-1] + self.stuck_after - time.monotonic())

    def saw(self, running: int) -> None:
        """``running`` calls are running now (the window remembers the most)."""
        self._busiest = max(self._busiest, running)

    def completed(
        self, samples: list[tuple[float, float, int, int]], running: Iterable[float] = ()
    ) -> bool:
        """Calls finished: (start, seconds per item, failed items, items) each; ``running``:
        when each call still running started (``time.monotonic()``, oldest first). True if
        it moved."""
        self._note(samples)
        # Calls stuck that long are one signal, acted on once: the cut that follows lets the
        # calls already running finish, and they cannot be hurried.
        # Only the oldest running calls are read (thousands of coroutines may be in flight).
        rest = iter(running)
        oldest = next(rest, None)
        judged = [] if oldest is None else self._judged(itertools.chain((oldest,), rest))
        stuck = self._look(judged) == 0.0
        if not stuck and self._calls < max(4, self.limit // 2):
            return False
        window, self._latencies = self._latencies, []
        failures, self._failures = self._failures, 0
        calls, self._calls = self._calls, 0
        read, self._marks_read = self._marks_read, time.monotonic()
        late = marks.read(read, self._acted)
        busiest, self._busiest = self._busiest, 0
        before = self.limit
        # The median: one slow call (a busy moment at this end) is no queue at the far side.
        typical = statistics.median(window) if window else 0.0
        failed = failures / calls if calls else 0.0
        if window:
            self._floor = min(self._floor, typical)
        self.history.append((before, typical, failed))
        throughput, last = (before / typical if typical else 0.0), self._throughput
        self._throughput = throughput
        queued = self._queued(before, typical, rising=throughput > last > 0)
        if stuck:
            self._stuck(before, judged[0])
        elif failed > self.FAILING:
            self._refused(before, failed)
        elif late:
            began = min(began for _, began in late)
            share = min(1.0, len(late) / max(1, calls))
            self._marked(before, self._in_force(began), share, queued)
        elif typical > self.TOLERANCE * self._floor:
            if queued is not None:
                self._cut(queued)
        elif busiest >= before - before // 8 and self._validated(oldest):
            # (Paced starts may not quite reach the limit.)
            self._grow(before, min(window, default=typical))
        return self.limit != before

    def _note(self, samples: list[tuple[float, float, int, int]]) -> None:
        """Add finished calls to the window, and their items that succeeded to the goodput."""
        now = time.monotonic()
        self._forget_goodput(now)
        for start, latency, bad, items in samples:
            if items > bad:
                self._goodput.append((now, items - bad))
            if start < self._acted:
                continue  # started before the last cut: it tells of the old limit, not this one
            self._calls += items
            self._failures += bad
            if not bad:
                # (A failure's latency is no measure of the far side's queue: a 429 is quick.)
                self._latencies += [latency] * items

    def _validated(self, oldest: float | None) -> bool:
        """Whether the limit may rise, the oldest running call started at ``oldest``: every
        call started before its last rise has finished (a round at the new limit is
        complete), none runs past :data:`HOLD` times the no-load latency (a call that slow
        may be one the far side dropped, not yet stuck), and, where a client marks late
        connects, those of the first two rounds at the new limit have had the time to be
        marked (one round's, a few in a hundred of them marked where drops begin, let slow
        start pass 64 calls unmarked on the way to 128, where the calls stalled for seconds)."""
        now = time.monotonic()
        horizon = marks.horizon_since(self._born)
        if horizon and now < self._rose + 2 * self._floor + horizon:
            return False  # (its first rounds' connects could still be marked late: Marks)
        if oldest is None:
            return True
        return oldest >= self._rose and oldest >= now - self.HOLD * self._floor

    def _stuck(self, before: int, oldest: float) -> None:
        """Calls stuck at ``before``, the oldest judged one started at ``oldest``: back to the
        last limit that ran clean below the one in force when it started (half that, if none
        did), the ceiling there, tried again after :data:`REPROBE` times what a stuck call
        costs, doubling each time. (A far side that drops past 16 dropped calls started at 64
        and at 32 alike: from the one in force at the start, one step down, not one per
        second of stuck calls.)"""
        failed_at = self._in_force(oldest)  # (before, if older than every level kept)
        self._clean = {limit for limit in self._clean if limit < failed_at}
        known = max(self._clean, default=max(1, failed_at // 2))
        self._cut(max(1, min(self._ceiling, known)))
        self._set_ceiling(self.limit)
        penalty = max(self.stuck_after, time.monotonic() - oldest)
        self._reprobe_wait = max(self.REPROBE * penalty, 2 * self._reprobe_wait)
        self._reprobe_at = time.monotonic() + self._reprobe_wait
        self._unstuck = self._acted

    def _refused(self, before: int, failed: float) -> None:
        """A window with ``failed`` of its calls failing, at ``before``."""
        if self._probing:
            # A rise past the ceiling broke again: back to the ceiling, where calls ran clean,
            # and the ceiling is tried half as often each time, as an exponential backoff.
            self._recover = min(self.MOST_RECOVER, 2 * self._recover)
            self._probing = False
            self._set_ceiling(max(1, min(self._ceiling, before - 1)))
            self._cut(self._ceiling)
            return
        # The calls that went through measure what the far side takes: keep that many, and at
        # least half (failures that are not the far side's capacity speaking), and what its
        # goodput of late sustains.
        limit = max(1, before // 2, min(before - 1, math.floor(before * (1 - failed))))
        limit = max(limit, min(before, self._carried()))
        if limit < before:
            self._set_ceiling(max(1, min(self._ceiling, before - 1)))
            self._cut(limit)

    def _carried(self) -> int:
        """Calls at once that the far side's goodput sustains: the items that succeeded over
        the last :data:`GOODPUT_HORIZON` seconds (at least 8 no-load latencies; no more than
        the limiter has seen, at least 4 of them) per second, times the no-load latency."""
        now = time.monotonic()
        horizon = self._forget_goodput(now)
        span = max(4 * self._floor, min(horizon, now - self._born))
        return round(sum(items for _, items in self._goodput) / span * self._floor)

    def _forget_goodput(self, now: float) -> float:
        """Drop the goodput older than the horizon (returned, in seconds)."""
        horizon = max(self.GOODPUT_HORIZON, 8 * self._floor)
        while self._goodput and self._goodput[0][0] < now - horizon:
            self._goodput.popleft()
        return horizon

    def _queued(self, before: int, typical: float, rising: bool) -> int | None:
        """The limit for a window at ``before`` whose median latency was ``typical``, if the
        far side queues its calls: latency past :data:`TOLERANCE` times the no-load latency,
        cut in proportion; None if it does not, or if completions per second still
        ``rising`` say that more calls still get more done (hold)."""
        if typical <= self.TOLERANCE * self._floor or rising:
            return None
        return max(1, round(before * self.TOLERANCE * self._floor / typical))

    def _marked(self, before: int, at: int, share: float, queued: int | None) -> None:
        """A window at ``before`` in which the client marked connects late, the first begun
        under the limit ``at``, ``share`` of as many as the window's calls (:class:`Marks`):
        the far side's listen queue overflows from ``at`` on, and the hedged connects got
        through. As DCTCP (RFC 8257) answers marks: down by half the share marked. The first
        marks also end the climb: no higher than ``at`` (the ceiling, found again as any
        ceiling is; later marks leave it be, since a marked connect costs its call only the
        hedging wait, and a ceiling lowered at each would sink). A few marks beside a long
        queue (``queued``: :meth:`_queued`) cut as the queue does."""
        if not self._marked_before:
            self._marked_before = True
            self._set_ceiling(max(1, min(self._ceiling, at)))
        limit = round(before * (1 - share / 2))
        self._cut(max(1, min(self._ceiling, limit, before if queued is None else queued)))

    def _in_force(self, when: float) -> int:
        """The limit in force at ``when`` (``time.monotonic()``)."""
        if when < self._levels[0][0]:
            return self.limit
        return next(limit for since, limit in reversed(self._levels) if since <= when)

    def _grow(self, before: int, low: float) -> None:
        """A clean window that used the limit ``before``, its calls at ``low`` latency at
        least (HyStart++, RFC 9406, reads the round's least: a queue at the far side delays
        every call, a busy moment at the caller's end only some)."""
        if low > self.SLOW_START_EXIT * self._floor:
            self._growing = False  # latency begins to rise: the knee is near (HyStart)
        # Doubling while it grows (slow start), then about its square root per window.
        step = (self.SLOW_START - 1) * before if self._growing else round(math.sqrt(before))
        if before >= self._ceiling:
            # Clean windows at the ceiling: every RECOVER of them it rises by one, so that a
            # far side that recovered (a brief outage, a burst of 429s) is found again, slowly
            # enough that one that did not is not hammered (and more slowly each time it
            # breaks again, up to every MOST_RECOVER).
            self._at_ceiling += 1
            self._probing = False  # (a clean window at the ceiling: it held)
            if self._at_ceiling >= self._recover and time.monotonic() >= self._reprobe_at:
                self._set_ceiling(min(self._cap, self._ceiling + 1))
                self._probing = True
        self.limit = min(self._cap, self._ceiling, before + step)
        if self.limit > before:
            self._clean.add(before)
            self._rose = time.monotonic()
            self._set(self.limit)

    def _set_ceiling(self, ceiling: int) -> None:
        if ceiling != self._ceiling:
            self._ceiling = ceiling
            self._at_ceiling = 0  # clean windows are counted at this ceiling

    def _set(self, limit: int) -> None:
        self._levels = [*self._levels[-63:], (time.monotonic(), limit)]

    def _cut(self, limit: int) -> None:
        self.limit = limit
        self._set(limit)
        self._growing = False
        self._probing = False
        # One cut per latency, as TCP cuts once per round trip: the calls that start within
        # one still meet the far side as the old limit left it (busy, queued), and would cut
        # again for what was already acted on.
        self._acted = time.monotonic() + self._floor
