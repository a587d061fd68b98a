"""joblib's own tests of ``Parallel``, with pickpool's backend in loky's place.

    make test-joblib

runs ``joblib.test.test_parallel`` (the tests shipped with the installed joblib) with this
module as a pytest plugin: joblib's default backend, ``"loky"``, is replaced by
:class:`pickpool.joblib.PickpoolBackend` before the tests are collected, so every test that
runs ``Parallel`` by default or names loky runs on pickpool's workers. The tests that check
what is loky's alone, or where pickpool differs by design, are expected to fail, each with its
reason (:data:`EXCLUDED`); one that passes again is reported as an error, so that the list
stays true.
"""

from __future__ import annotations

import sys
from typing import Any, Final

import pytest

from tests.expected_failures import expect_failures

_BACKEND_CLASS = "checks that the backend's class is joblib's LokyBackend"

# Tests, by name and case (a glob: "[*-loky]" is every case whose last parameter is loky), and
# why each is expected to fail.
EXCLUDED: Final = {
    "test_backend_context_manager[*-loky]": _BACKEND_CLASS,
    "test_backend_hinting_and_constraints[*]": _BACKEND_CLASS,
    "test_nested_parallelism_limit[*-loky]": (
        "compares class names, 'PickpoolBackend' where it expects 'LokyBackend' (the nested "
        "backends and their levels are joblib's)"
    ),
    "test_parallel_pickling": (
        "matches loky's wording of an unpicklable task ('the task to send'); pickpool's error "
        "is a PicklingError too, and says what to do"
    ),
    "test_error_capture[loky]": (
        "reads loky's pool object (backend._workers) to check that it was replaced after an "
        "error; pickpool stops the failed call's workers itself"
    ),
    "test_multiple_generator_call_separated_gc[*-loky-*]": (
        "expects loky's RuntimeError when a second call's shared executor was shut down by "
        "the garbage collection of the first one's generator; pickpool runs both calls, as "
        "joblib's threading backend does in the same test"
    ),
    "test_initializer_reused[*]": (
        "pickpool starts fresh worker processes for a call with an initializer, so that what it "
        "sets does not leak into other calls; loky reuses workers whose initializer and "
        "arguments are equal"
    ),
    "test_nested_parallel_warnings[loky-multiprocessing-True]": (
        "expects joblib's multiprocessing backend to refuse to nest in a loky worker (a "
        "daemonic process); pickpool's workers may start processes, so it runs there"
    ),
    "test_nested_parallel_warnings[threading-loky-True]": (
        "expects loky to refuse to start processes below a thread (a fork from a thread is "
        "unsafe); pickpool's workers start from a fork server, so it runs there"
    ),
    "test_nested_loop[back_compat_backend-pickpool]": (
        "the outer backend's new worker processes never imported pickpool.joblib, which "
        "registers the backend (joblib has no entry points for third-party backends)"
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    # (Markers joblib's own configuration declares.)
    config.addinivalue_line("markers", "thread_unsafe: not safe to run in parallel threads")
    config.addinivalue_line("markers", "no_cover: left out of coverage")
    if _AST_RACE:
        _serialize_ast_parse()
    import joblib.parallel  # type: ignore[import-untyped]

    import pickpool.joblib

    joblib.parallel.BACKENDS["loky"] = pickpool.joblib.PickpoolBackend


# CPython before 3.11.8 and 3.12.2 kept the AST constructor's recursion depth in state that
# every thread shares; a garbage collection inside one thread's ast.parse lets another
# thread's parse move it, and one of them fails with "SystemError: AST constructor recursion
# depth mismatch" (https://github.com/python/cpython/issues/106905). joblib parses its
# pre_dispatch expression with ast.parse on every call, so its tests that nest Parallel in
# threads (test_retrieval_context) fail now and then on those versions, whatever the backend.
_AST_RACE_FIXED_IN: Final = {(3, 11): 8, (3, 12): 2}  # (the micro release of each)
_AST_RACE: Final = sys.version_info.micro < _AST_RACE_FIXED_IN.get(sys.version_info[:2], 0)


def _serialize_ast_parse() -> None:
    """Let one thread at a time parse, on the versions whose parser races."""
    import ast
    import functools
    import threading

    parse = ast.parse
    lock = threading.Lock()

    @functools.wraps(parse)
    def serialized(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return parse(*args, **kwargs)

    ast.parse = serialized


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    expect_failures(items, EXCLUDED)
