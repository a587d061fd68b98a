"""The layout's rules, checked: the core names no backend, and nothing grows past a size or a
complexity without its reason written beside it (see docs/architecture.md)."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import NamedTuple

from pickpool._backends import EXTRA_MODELS, FIELD_TRAITS, MODELS, TRAITS, Setup, Traits

SRC = Path(__file__).resolve().parent.parent / "src" / "pickpool"
CORE = ("_api.py", "_options.py", "_driver.py", "_auto.py")

# Past the size limits (lines of code, docstrings not counted) only with the reason in a comment
# just above the def, as "# (Long on purpose: why.)"; a complexity exception ("noqa: C901" or
# "PLR09...") likewise, as "# (Complex on purpose: why.)".
REASON = re.compile(r"^\s*# \((Long|Complex|Long and complex) on purpose: \S.*\)$")
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


class Def(NamedTuple):
    lines: int  # of code, docstrings not counted
    most: int  # the limit
    reason: str  # "Long", "Complex", "Long and complex", or "" (no reason above it)
    complex: bool  # ruff's complexity rules are silenced on it
    reason_at: int  # the reason's line (1-based), or 0


def _reason(source: list[str], node: ast.AST) -> tuple[str, int]:
    """The kind of reason in the comment lines just above ``node`` (and its decorators), and
    its line."""
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    line = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 2
    while line >= 0 and source[line].lstrip().startswith("#"):
        found = REASON.match(source[line])
        if found:
            return found.group(1), line + 1
        line -= 1
    return "", 0


# A noqa that silences the complexity rules: by code, or every rule (a bare noqa).
SILENCED = re.compile(r"#\s*noqa(?!:)|#\s*noqa:.*(C90|PLR09)")


def _defs() -> dict[str, Def]:
    """``module:Qualified.name`` -> its :class:`Def`, for every def and class in ``src/``,
    however deeply nested (in a def, a class, an ``if``, a ``with``...). Of defs that share a
    name (overloads, a property's getter and setter), the longest."""
    defs: dict[str, Def] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        source = path.read_text().splitlines()

        def visit(
            node: ast.AST, prefix: str, module: str = module, source: list[str] = source
        ) -> None:
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    visit(child, prefix)
                    continue
                name = f"{module}:{prefix}{child.name}"
                lines = (child.end_lineno or child.lineno) - child.lineno + 1
                lines -= _docstring_lines(child)
                most = MOST_CLASS if isinstance(child, ast.ClassDef) else MOST_FUNCTION
                header = source[child.lineno - 1 : child.body[0].lineno - 1]
                silenced = any(SILENCED.search(h) for h in header)
                reason, reason_at = _reason(source, child)
                found = Def(lines, most, reason, silenced, reason_at)
                if name not in defs or lines > defs[name].lines:
                    defs[name] = found
                visit(child, f"{prefix}{child.name}.")

        visit(ast.parse("\n".join(source)), "")
    return defs


def test_every_reason_belongs_to_one_def() -> None:
    used = {(name.split(":")[0], d.reason_at) for name, d in _defs().items() if d.reason_at}
    stray = [
        f"{path.relative_to(SRC).as_posix()}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if REASON.match(line) and (path.relative_to(SRC).as_posix(), number) not in used
    ]
    assert not stray, "a reason must sit just above its def, one a def:\n" + "\n".join(stray)


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


def test_nothing_is_longer_than_its_limit_without_a_reason_beside_it() -> None:
    too_long = [
        f"{name}: {d.lines} lines (limit {d.most})"
        for name, d in _defs().items()
        if d.lines > d.most and "Long" not in d.reason
    ]
    assert not too_long, "split it, or say why above it: # (Long on purpose: ...)\n" + "\n".join(
        too_long
    )


def test_every_complexity_exception_says_why() -> None:
    silent = [name for name, d in _defs().items() if d.complex and "omplex" not in d.reason]
    assert not silent, "say why above it: # (Complex on purpose: ...)\n" + "\n".join(silent)


def test_every_reason_is_still_needed() -> None:
    stale = [
        f"{name}: {d.lines} lines (limit {d.most}), says {d.reason!r}"
        for name, d in _defs().items()
        if ("Long" in d.reason and d.lines <= d.most) or ("omplex" in d.reason and not d.complex)
    ]
    assert not stale, "within its limits now: take the reason off\n" + "\n".join(stale)


def test_the_checks_see_what_they_check() -> None:
    defs = _defs()
    # Guards against a parse that finds nothing, and so passes everything.
    assert defs["_driver.py:drive"][1:4] == (60, "Long and complex", True)
    assert defs["_driver.py:drive"].lines > 60
    assert defs["_driver.py:Plan"].reason == ""
    assert sum(d.lines > d.most for d in defs.values()) >= 10


def test_a_backend_reads_only_the_setup_fields_its_traits_give_it() -> None:
    names = {f.name for f in dataclasses.fields(Setup)}
    traits = {f.name for f in dataclasses.fields(Traits)}
    assert set(FIELD_TRAITS) <= names
    assert set(FIELD_TRAITS.values()) <= traits
    read: dict[str, set[str]] = {}
    for model in TRAITS:
        tree = ast.parse((SRC / "_backends" / f"_{model}.py").read_text())
        read[model] = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr in FIELD_TRAITS
            and (
                (isinstance(node.value, ast.Name) and node.value.id == "setup")
                or (isinstance(node.value, ast.Attribute) and node.value.attr == "_setup")
            )
        }
    wrong = [
        f"_backends/_{model}.py reads setup.{field}, but its Traits have no {FIELD_TRAITS[field]}"
        for model, fields in read.items()
        for field in sorted(fields)
        if not getattr(TRAITS[model], FIELD_TRAITS[field])
    ]
    assert not wrong, "\n".join(wrong)
    # Guards against a walk that finds nothing, and so passes everything.
    assert {"fn_bytes", "max_tasks_per_child"} <= read["processes"]
    assert "climb" in read["threads"]
    assert "client" in read["dask"]
