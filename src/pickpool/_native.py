"""Native thread pools inside a call: which are loaded, how big, and a cap while calls share cores.

numpy and scipy (BLAS, LAPACK), scikit-learn (OpenMP), PyTorch, OpenCV and others run a pool of
one thread per core inside each call. Two such calls side by side on a 2-core machine run four
threads on two cores, and OpenBLAS's threads spin while they wait for work: each pool starves
the other, and a run can be 20 times slower than a plain loop. So while several calls run at
once, each pool is capped so that calls x inner threads fit the usable cores, as joblib's
workers do, and put back as it was when the last run that capped it ends.

BLAS and OpenMP libraries are found and set through threadpoolctl (by the shared libraries the
process has loaded); a few libraries with a pool of their own are set through their Python
functions. Pools are looked for again whenever a module has been imported since the last look
(a call that imports numpy on its first item is capped from its next task on).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import sys
import sysconfig
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from . import _machine

InnerThreads = int | Literal["leave"] | None
LEAVE: Final = "leave"


def check_inner_threads(value: object) -> InnerThreads:
    """The ``inner_threads=`` option, checked."""
    if value is None or value == LEAVE:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"inner_threads must be None (fit the cores), 'leave' (leave native thread pools "
            f"as they are) or a whole number of threads of at least 1, not {value!r}"
        )
    return value


def limit_for(wish: InnerThreads, calls: int, *, cores: int | None = None) -> int | None:
    """Threads per native pool when ``calls`` calls run at once on ``cores`` cores (by default
    this machine's usable cores).

    None means leave the pools alone: asked for (``"leave"``), or a call that runs alone, which
    may use every core inside.
    """
    if wish == LEAVE:
        return None
    if isinstance(wish, int):
        return wish
    if calls <= 1:
        return None
    return max(1, (_machine.cores() if cores is None else cores) // calls)


@dataclass(frozen=True, slots=True)
class Pool:
    """A native thread pool this process has loaded."""

    name: str  # "OpenBLAS", "OpenMP (libgomp)", "PyTorch"...
    threads: int
    cappable: bool = True  # False: its size is fixed once loaded (polars)

    def __str__(self) -> str:
        return f"{self.name}, {self.threads} thread{'s' if self.threads != 1 else ''}"


class _Knob:
    """A pool's size, read and set through its library.

    ``per_thread``: the size is each thread's own (OpenMP's ``omp_set_num_threads`` sets it
    for the calling thread only), so every thread that calls in must set it itself.
    """

    __slots__ = ("get", "key", "name", "per_thread", "set")

    def __init__(
        self,
        key: str,
        name: str,
        get: Callable[[], int],
        set_: Callable[[int], Any],
        *,
        per_thread: bool = False,
    ) -> None:
        self.key, self.name, self.get, self.set = key, name, get, set_
        self.per_thread = per_thread


# Libraries with a pool threadpoolctl does not see: (module, name, getter, setter).
# (PyTorch's is also its OpenMP's, each thread's own: see _PER_THREAD.)
_PYTHON_KNOBS: Final = (
    ("torch", "PyTorch", "get_num_threads", "set_num_threads"),
    ("cv2", "OpenCV", "getNumThreads", "setNumThreads"),
    ("numexpr", "numexpr", "get_num_threads", "set_num_threads"),
    ("numba", "Numba", "get_num_threads", "set_num_threads"),
    ("pyarrow", "Arrow", "cpu_count", "set_cpu_count"),
)
# Pools sized once, when the library loads, from an environment variable.
_FIXED_AT_IMPORT: Final = (("polars", "polars", "thread_pool_size", "POLARS_MAX_THREADS"),)

_NAMES: Final = {
    "openblas": "OpenBLAS",
    "mkl": "MKL",
    "blis": "BLIS",
    "flexiblas": "FlexiBLAS",
    "libgomp": "OpenMP (libgomp)",
    "libiomp": "OpenMP (Intel)",
    "libomp": "OpenMP (LLVM)",
    "vcomp": "OpenMP (MSVC)",
}


def _stdlib_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the standard library's folders, the folders of installed packages): a venv's
    ``platstdlib`` holds its ``site-packages``."""
    paths = sysconfig.get_paths()
    stdlib = tuple(os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if k in paths)
    packages = tuple(os.path.realpath(paths[k]) for k in ("purelib", "platlib") if k in paths)
    return stdlib, packages


def _native_loaded() -> bool:
    """Whether an extension module from outside the standard library is loaded.

    Cheaper than importing threadpoolctl (~25 ms) in a process that only runs pure Python:
    a native thread pool comes with such a module.
    """
    if "threadpoolctl" in sys.modules:
        return True
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    stdlib, packages = _stdlib_dirs()
    for module in list(sys.modules.values()):
        try:
            path = getattr(module, "__file__", None)
        except Exception:  # a lazy module that imports on attribute access, and fails
            continue
        if isinstance(path, str) and path.endswith(suffixes):
            real = os.path.realpath(path)
            if real.startswith(packages) or not real.startswith(stdlib):
                return True
    return False


def _knobs() -> list[_Knob]:
    """Every pool that can be set: threadpoolctl's libraries, then the Python knobs."""
    found: list[_Knob] = []
    if _native_loaded():
        try:
            import threadpoolctl
        except ImportError:  # pragma: no cover - a dependency, but a broken install happens
            pass
        else:
            for lib in threadpoolctl.ThreadpoolController().lib_controllers:
                name = _NAMES.get(lib.internal_api) or _NAMES.get(lib.prefix) or lib.prefix
                found.append(
                    _Knob(
                        lib.filepath,
                        name,
                        lib.get_num_threads,
                        lib.set_num_threads,
                        per_thread=lib.user_api == "openmp",
                    )
                )
    for module_name, name, getter, setter in _PYTHON_KNOBS:
        module = sys.modules.get(module_name)
        get, set_ = getattr(module, getter, None), getattr(module, setter, None)
        if callable(get) and callable(set_):
            found.append(_Knob(module_name, name, get, set_, per_thread=module_name == "torch"))
    return found


def pools() -> list[Pool]:
    """The native thread pools this process has loaded now, with their sizes."""
    out = []
    for knob in _knobs():
        try:
            threads = int(knob.get())
        except Exception:
            continue
        if threads > 0:
            out.append(Pool(knob.name, threads))
    for module_name, name, getter, _ in _FIXED_AT_IMPORT:
        get = getattr(sys.modules.get(module_name), getter, None)
        if callable(get):
            try:
                out.append(Pool(name, int(get()), cappable=False))
            except Exception:
                continue
    return out


class _Caps:
    """The caps in force in this process: the tightest of the runs that hold one.

    Runs may overlap (two ``map`` calls in two threads, a nested one): each holds its limit
    until it ends, the pools follow the smallest, and go back to their own sizes when the last
    hold is released.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds: dict[int, int] = {}
        self._next = 0
        self._modules = -1  # len(sys.modules) when pools were last looked for
        self._knobs: list[_Knob] = []
        self._original: dict[str, int] = {}  # each capped pool's size before the first cap
        self._generation = 0

    def hold(self, limit: int) -> int:
        """Cap every pool at ``limit`` threads (or lower, if held lower) until released."""
        with self._lock:
            self._next += 1
            token = self._next
            self._holds[token] = limit
            self._modules = -1  # look afresh: the last look may be from long ago
            self._apply()
        _here.__dict__.setdefault("tokens", set()).add(token)
        self._apply_here()
        return token

    def release(self, token: int) -> None:
        with self._lock:
            if self._holds.pop(token, None) is None:
                return
            self._apply()
        mine: set[int] = _here.__dict__.setdefault("tokens", set())
        mine.discard(token)
        if mine:
            self._apply_here()  # this thread still holds another cap
        else:
            self.leave_thread()  # its own pools back; others' threads follow at their refresh

    def refresh(self) -> None:
        """Cap pools loaded since the last look (a module was imported), and the per-thread
        ones (OpenMP) in the calling thread; cheap when nothing changed."""
        if not self._holds and getattr(_here, "generation", None) is None:
            return
        if len(sys.modules) != self._modules:
            with self._lock:
                self._apply()
        if getattr(_here, "generation", None) != self._generation:
            self._apply_here()

    def leave_thread(self) -> None:
        """A worker thread is done with its run: its per-thread pools go back as they were."""
        saved: dict[str, int] = getattr(_here, "original", {})
        for knob in self._knobs:
            if knob.per_thread and knob.key in saved:
                with contextlib.suppress(Exception):
                    knob.set(saved[knob.key])
        saved.clear()
        _here.generation = None

    def _apply_here(self) -> None:
        with self._lock:
            limit = min(self._holds.values()) if self._holds else None
            knobs = [k for k in self._knobs if k.per_thread]
            generation = self._generation
        if limit is None:
            self.leave_thread()
            return
        saved = _here.__dict__.setdefault("original", {})
        # Every size is read before any is set: one library's setter may change another's
        # (PyTorch's sets its OpenMP's).
        for knob in knobs:
            with contextlib.suppress(Exception):
                saved.setdefault(knob.key, int(knob.get()))
        for knob in knobs:
            if knob.key in saved:
                with contextlib.suppress(Exception):
                    knob.set(max(1, min(limit, saved[knob.key])))
        _here.generation = generation

    def _apply(self) -> None:
        self._generation += 1  # per-thread pools are set again by each thread that calls in
        if len(sys.modules) != self._modules:
            self._modules = len(sys.modules)
            # A library that breaks on inspection: the pools known so far are kept.
            with contextlib.suppress(Exception):
                self._knobs = _knobs()
        limit = min(self._holds.values()) if self._holds else None
        shared = [k for k in self._knobs if not k.per_thread]  # (the others: _apply_here)
        if limit is not None:
            for knob in shared:  # every size read before any is set
                with contextlib.suppress(Exception):
                    self._original.setdefault(knob.key, int(knob.get()))
        for knob in shared:
            if knob.key not in self._original:
                continue
            try:
                if limit is None:
                    knob.set(self._original[knob.key])
                    continue
                # A pool set smaller than the cap (by you, or by its library) stays so.
                wanted = max(1, min(limit, self._original[knob.key]))
                if int(knob.get()) != wanted:
                    knob.set(wanted)
            except Exception:
                continue  # a library that refuses is left as it is
        if limit is None:
            self._original.clear()

    def forget(self) -> None:
        """In a forked child: the parent's runs hold nothing here."""
        self._lock = threading.Lock()
        self._holds.clear()
        self._original.clear()
        self._knobs = []
        self._modules = -1


# Per thread: the sizes its per-thread pools had before it capped them, and the generation of
# the caps it last applied (None: none applied).
_here = threading.local()
caps = _Caps()
os.register_at_fork(after_in_child=caps.forget)


class Held:
    """A cap held for the life of a backend: ``Held(limit)`` ... ``close()`` (twice is fine)."""

    __slots__ = ("_token",)

    def __init__(self, limit: int | None) -> None:
        self._token = None if limit is None else caps.hold(limit)

    def close(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            caps.release(token)


# The variables BLAS and OpenMP libraries size their pools by when they load, in a worker and
# in any process a call starts (set, as joblib's loky backend sets them, to a cap you give).
_POOL_ENV: Final = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def worker_env(wish: InnerThreads, limit: int | None) -> dict[str, str]:
    """Environment for a new worker process whose native pools get ``limit`` threads.

    Pools sized only when their library loads get it where you have not set the variable
    yourself. A cap you gave (``wish``, a number) also goes to the usual BLAS and OpenMP
    variables, over yours, so that a process a call starts is capped too.

    Example::

        >>> worker_env(1, 1)["OMP_NUM_THREADS"]
        '1'
    """
    if limit is None:
        return {}
    env = {env: str(limit) for *_, env in _FIXED_AT_IMPORT if env not in os.environ}
    if isinstance(wish, int) and not isinstance(wish, bool):
        env.update(dict.fromkeys(_POOL_ENV, str(limit)))
    return env
