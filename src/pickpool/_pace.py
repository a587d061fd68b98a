"""Spaced-out starts: one :class:`Pacer` for every place that must not start calls in a burst.

``max_rate`` paces a run's calls (the driver, the serial loop, ``amap``'s loop); the
latency-driven limits of threads and of asyncio pace theirs (a far side that takes new
connections one by one, through a short listen backlog, drops those of a burst).
"""

from __future__ import annotations

import threading
import time


class Pacer:
    """Starts at least ``interval`` seconds apart, evenly spaced rather than a bucket's bursts.

    Safe to share between threads. ``interval`` may be changed while in use (a limit that
    moved); 0 lets every start through at once.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0  # time.monotonic() of the next free start
        self._lock = threading.Lock()

    @classmethod
    def per_second(cls, rate: float) -> Pacer:
        """At most ``rate`` starts a second."""
        return cls(1.0 / rate)

    @property
    def rate(self) -> float:
        """Starts a second, at most."""
        return 1.0 / self.interval if self.interval > 0 else float("inf")

    def delay(self) -> float:
        """Seconds until the next start may be taken (0: now)."""
        return max(0.0, self._next - time.monotonic())

    def take(self, within: float = 0.0) -> float:
        """Take the next free start if it is due within ``within`` seconds, and return 0;
        else take nothing and return the seconds until it is due. (One step: where several
        threads share the pacer, a look at :meth:`delay` and then a :meth:`reserve` let two
        of them take starts side by side.)"""
        with self._lock:
            now = time.monotonic()
            if self._next - now > within:
                return self._next - now
            self._next = max(now, self._next) + self.interval
            return 0.0

    def reserve(self) -> float:
        """Take the next free start: seconds to wait for it (0 if it is now)."""
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + self.interval
            return at - now

    def wait(self, cancel: threading.Event | None = None) -> bool:
        """Wait for the next free start and take it; False if ``cancel`` was set first."""
        while True:
            with self._lock:
                now = time.monotonic()
                if self._next <= now:
                    self._next = now + self.interval
                    return True
                delay = self._next - now
            if cancel is None:
                time.sleep(delay)
            elif cancel.wait(delay):
                return False
