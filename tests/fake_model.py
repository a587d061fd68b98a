"""A model that is not one of pickpool's, for the registry's test: its module, all of it.

It runs calls on threads (its backend is the threads backend, counted), and predicts itself
faster than any other model, so that whatever chooses among the registered models chooses it
once it is registered (``pickpool._backends.register("fake", "tests.fake_model")``).
"""

from __future__ import annotations

import threading
from typing import ClassVar

from pickpool._backends import Model, Setup, Traits, waiting
from pickpool._backends._threads import ThreadsBackend
from pickpool._costs import Costs, Option


class FakeModelBackend(ThreadsBackend):
    """The threads backend, counting the runs started on it."""

    started: ClassVar[int] = 0
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        with FakeModelBackend._lock:
            FakeModelBackend.started += 1


def predict(costs: Costs) -> Option:
    """Faster than anything, whatever the evidence."""
    per = 1e-12
    return Option(MODEL.name, 2, 1, costs.n * per, per)


MODEL = Model(
    "fake", Traits(waiting, shares_memory=True, rank=(8, 8)), FakeModelBackend, predict=predict
)
