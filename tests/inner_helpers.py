"""Functions for the native-thread-pool tests. numpy is imported inside the calls, not here:
a worker process loads this module without numpy, as it would a module of yours that imports
it late."""

from __future__ import annotations

import hashlib
import threading


def blas_threads(_: object) -> int:
    """The threads of the BLAS pool in this process, as this call sees it, after using it."""
    import numpy as np
    from threadpoolctl import threadpool_info

    a = np.ones((64, 64))
    float((a @ a)[0, 0])
    sizes: list[int] = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return max(sizes)


def work_in_a_helper_thread(megabytes: int) -> int:
    """A call whose work runs in a thread it starts and waits for: its own thread computes
    nothing, the process does (hashlib releases the GIL)."""
    data = b"x" * (megabytes << 20)
    out: list[bytes] = []
    helper = threading.Thread(target=lambda: out.append(hashlib.sha256(data).digest()))
    helper.start()
    helper.join()
    return len(out[0])


def openmp_threads(_: object) -> int:
    """The OpenMP pool size as this thread sees it (OpenMP's size is each thread's own)."""
    import sklearn  # noqa: F401  (loads an OpenMP runtime)
    from threadpoolctl import threadpool_info

    sizes: list[int] = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
    return max(sizes)
