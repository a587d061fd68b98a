"""The layout's rules, checked: the core names no backend, and nothing grows past a size
without a reason written here (see docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pickpool._backends import EXTRA_MODELS, MODELS, TRAITS

SRC = Path(__file__).resolve().parent.parent / "src" / "pickpool"
CORE = ("_api.py", "_options.py", "_driver.py", "_auto.py")

# Past the size limits (lines of code, docstrings not counted), and why. A refactor that brings
# one under its limit must take it off this list (the last test says so).
LONG: dict[str, str] = {
    "_advise.py:_Costs": "the cost model: one prediction method per model, sharing the evidence",
    "_api.py:_Run": "one call's checked inputs and error policy, for map, imap and amap alike",
    "_api.py:_Run.__init__": "every option checked at the call, before anything runs",
    "_backends/_asyncio.py:ItemRunner": "a loop's items: limit, pace, timeouts, outcomes",
    "_backends/_processes.py:ProcessesBackend": "worker processes: start, feed, crash, kill",
    "_backends/_threads.py:ThreadsBackend": "threads: the gate, the limit, timeouts, abandon",
    "_driver.py:Schedule": "the run's bookkeeping: window, chunks, order, retries, fail-fast",
    "_driver.py:Schedule.accept": "outcomes in: blocks, lost chunks split, retry, fail fast, order",
    "_driver.py:drive": "the one run loop: send, pace, wait, retry, cancel",
    "_executor.py:_Lane": "one model's backend fed from submit(), with its feeder thread",
    "_executor.py:Executor": "concurrent.futures.Executor's whole contract, and auto's routes",
    "_options.py:make_plan": "every option of a concrete model checked and defaulted",
    "_probe.py:Pilot": "the phase policy: three kinds of phase, each sized to what is known",
    "joblib.py:PickpoolBackend": "joblib's ParallelBackendBase contract, method by method",
}
MOST_CLASS = 150
MOST_FUNCTION = 60


def _docstring_lines(node: ast.AST) -> int:
    lines = 0
    for sub in ast.walk(node):
        if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and sub.body:
            first = sub.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines += (first.end_lineno or first.lineno) - first.lineno + 1
    return lines


def _sizes() -> dict[str, tuple[int, int]]:
    """``module:Qualified.name`` -> (lines of code, the limit), for every def and class."""
    sizes: dict[str, tuple[int, int]] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()

        def visit(node: ast.AST, prefix: str, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = f"{prefix}{child.name}"
                    lines = (child.end_lineno or child.lineno) - child.lineno + 1
                    lines -= _docstring_lines(child)
                    most = MOST_CLASS if isinstance(child, ast.ClassDef) else MOST_FUNCTION
                    sizes[f"{module}:{name}"] = (lines, most)
                    visit(child, f"{name}.")

        visit(ast.parse(path.read_text()), "")
    return sizes


def test_the_core_names_no_backend() -> None:
    names = set(MODELS) | set(EXTRA_MODELS) | set(TRAITS)
    found = []
    for module in CORE:
        tree = ast.parse((SRC / module).read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        found += [
            f"{module}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings
        ]
    assert not found, "ask the model's Traits (pickpool._backends.traits) instead:\n" + "\n".join(
        found
    )


def test_nothing_is_longer_than_its_limit_without_a_reason() -> None:
    too_long = [
        f"{name}: {lines} lines (limit {most})"
        for name, (lines, most) in _sizes().items()
        if lines > most and name not in LONG
    ]
    assert not too_long, "split it, or say why in LONG:\n" + "\n".join(too_long)


@pytest.mark.parametrize("name", sorted(LONG))
def test_every_reason_is_still_needed(name: str) -> None:
    lines, most = _sizes().get(name, (0, 0))
    assert lines > most, f"{name} is within its limit now ({lines} lines): take it off LONG"
