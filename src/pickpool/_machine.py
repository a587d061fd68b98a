"""Facts about the machine the run is on: usable cores, the GIL, the process start method, and
:class:`Machine`, the record of them the cost model reads."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_limit(root: Path = _CGROUP_ROOT) -> float | None:
    """CPUs a cgroup quota grants (v2 ``cpu.max``, v1 ``cfs_quota_us``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota_us > 0 and period_us > 0:
        return quota_us / period_us
    return None


def _affinity_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_cores(*, cgroup_root: Path = _CGROUP_ROOT) -> int:
    """The CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count()`` reports the machine's cores even in a container limited to one; this
    honours ``os.sched_getaffinity`` and the cgroup quota, rounding a fractional quota up.
    """
    cores = _affinity_count()
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


@functools.cache
def _usable() -> int:
    return usable_cores()


_share: int | None = None


def cores() -> int:
    """:func:`usable_cores`, read once per process; in a worker process, its share of them."""
    usable = _usable()
    return usable if _share is None else max(1, min(usable, _share))


def set_share(count: int) -> None:
    """This process is one of several workers: ``count`` cores are its share.

    A pool started inside a worker (a nested ``pickpool.map``) then sizes itself to the share,
    so that nesting does not multiply the processes by the cores.
    """
    global _share
    _share = count


START_METHOD_ENV = "PICKPOOL_START_METHOD"


def start_method() -> str:
    """The multiprocessing start method pickpool's worker processes use.

    ``forkserver`` where the platform has it (safe when the caller has threads, and Python
    3.14's default on Linux), else ``spawn``. The environment variable ``PICKPOOL_START_METHOD``
    (``fork``, ``forkserver`` or ``spawn``) overrides it.
    """
    import multiprocessing

    available = multiprocessing.get_all_start_methods()
    wanted = os.environ.get(START_METHOD_ENV, "").strip()
    if wanted:
        if wanted not in available:
            raise ValueError(
                f"{START_METHOD_ENV}={wanted!r} is not a start method on this platform; "
                f"use one of {', '.join(available)}"
            )
        return wanted
    if "forkserver" in available and sys.platform != "darwin":
        return "forkserver"
    return "spawn"


def gil_enabled() -> bool:
    """False on a free-threaded build running without the GIL (3.13t and later)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def daemonic() -> bool:
    """Whether this is a daemonic process (a ``multiprocessing.Pool``'s worker), which may not
    start processes of its own."""
    import multiprocessing  # (not every caller needs it loaded)

    return bool(multiprocessing.current_process().daemon)


def fork_server_running() -> bool:
    """Whether multiprocessing's fork server is already up (new workers then start in ~3 ms)."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    return getattr(server, "_forkserver_pid", None) is not None


@dataclass(frozen=True, slots=True)
class Machine:
    """The facts about this machine that the cost model reads.

    ``facts``: what each model observed for its own prediction, by the model's name (the
    process start method and whether the fork server runs; whether sub-interpreters exist;
    an active dask cluster), as its backend module reads them.

    Example::

        >>> Machine(cores=2, gil=True).cores
        2
    """

    cores: int
    gil: bool  # False on a free-threaded build running without it
    facts: Mapping[str, object] = field(default_factory=dict)
