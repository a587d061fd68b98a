"""``model="serial"``: the plain loop, in the caller's thread, one item at a time."""

from __future__ import annotations

from collections import deque

from .._task import Caller, Outcome, Task
from . import Setup


class SerialBackend:
    """Runs each task in the caller's thread when the driver collects it, so nothing runs ahead.

    It also offers its :class:`Caller` as ``inline``: the driver then runs the plain loop
    itself, skipping the scheduler.
    """

    def __init__(self, setup: Setup) -> None:
        self._caller = Caller(setup.fn)
        self.inline = self._caller
        self._queue: deque[Task] = deque()

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def collect(self, timeout: float | None) -> list[Outcome]:
        if not self._queue:
            return []
        return self._caller.run(self._queue.popleft())

    def close(self, *, cancel: bool) -> None:
        self._queue.clear()
        self._caller.close()

    def __repr__(self) -> str:
        return f"<SerialBackend {len(self._queue)} queued>"


backend_class = SerialBackend
