"""The layout's rules, checked (see docs/architecture.md): imports follow the layers the docs
draw, with no circle; every module says what it owns; nothing outside the models' package names
a model; and nothing grows past a size or a complexity without its reason written beside it."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import NamedTuple

from pickpool._backends import EXTRA_MODELS, FIELD_TRAITS, MODELS, Setup, Traits, traits

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "pickpool"
# Where models are named: their own package, and the demo (whose subject is the usual advice,
# model by model). Elsewhere a string that happens to be a model's name, the name of a Python
# package or module, says so at the end of its line: "# (a package)", "# (modules)".
NAMING = ("_backends/", "lab/")
NOT_A_MODEL = re.compile(r"# \((a package|modules?|joblib's hint)\)$")

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


def test_nothing_outside_the_models_names_one() -> None:
    names = set(MODELS) | set(EXTRA_MODELS)
    found = []
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        if module.startswith(NAMING):
            continue
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
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
            if isinstance(node, ast.Constant)
            and node.value in names
            and id(node) not in docstrings
            and not NOT_A_MODEL.search(lines[node.lineno - 1])
        ]
    assert not found, "ask the registry (pickpool._backends) instead:\n" + "\n".join(found)


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
    assert defs["_schedule.py:Schedule"][1:4] == (150, "Long", False)
    assert defs["_schedule.py:Schedule"].lines > 150
    assert defs["_backends/_threads.py:ThreadsBackend.collect"].complex
    assert defs["_plan.py:Plan"].reason == ""
    assert sum(d.lines > d.most for d in defs.values()) >= 5


def test_fewer_reasons_than_before_the_layers() -> None:
    # Each reason is a part too long or too complex to split well; there were 19 when each idea
    # was still written more than once.
    reasons = [name for name, d in _defs().items() if d.reason]
    assert len(reasons) < 19, reasons


def test_a_backend_reads_only_the_setup_fields_its_traits_give_it() -> None:
    fields = {f.name for f in dataclasses.fields(Setup)}
    assert set(FIELD_TRAITS) <= fields
    assert set(FIELD_TRAITS.values()) <= {f.name for f in dataclasses.fields(Traits)}
    read: dict[str, set[str]] = {}
    for model in (*MODELS, *EXTRA_MODELS):
        read[model] = set()
        for path in _model_files(model):
            tree = ast.parse(path.read_text())
            read[model] |= {
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
        f"model {model!r} reads setup.{field}, but its Traits have no {FIELD_TRAITS[field]}"
        for model, fields in read.items()
        for field in sorted(fields)
        if not getattr(traits(model), FIELD_TRAITS[field])
    ]
    assert not wrong, "\n".join(wrong)
    # Guards against a walk that finds nothing, and so passes everything.
    assert {"fn_bytes", "max_tasks_per_child"} <= read["processes"]
    assert "climb" in read["threads"]
    assert "client" in read["dask"]


def _model_files(model: str) -> list[Path]:
    """A model's module, and the helper modules of the models' package it imports (those that
    are no model's own), however indirectly."""
    models = {f"_{m}" for m in (*MODELS, *EXTRA_MODELS)}
    files, todo = [], [f"_{model}"]
    while todo:
        name = todo.pop()
        path = SRC / "_backends" / f"{name}.py"
        if path in files:
            continue
        files.append(path)
        todo += [
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
            and node.level == 1
            and node.module
            and node.module not in models
        ]
    return files


# Imports ---------------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    """A module's name as the docs write it: ``_text``, ``_backends/_threads``, ``__init__``."""
    return path.relative_to(SRC).with_suffix("").as_posix().removesuffix("/__init__")


def _imports() -> dict[str, set[str]]:
    """Each module of ``src/pickpool`` -> the modules of it that it imports (anywhere in it,
    inside functions too; imports only a type checker runs are left out)."""
    modules = {_module_name(path): path for path in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(sub)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
            for sub in ast.walk(node)
        }
        # The package a relative import starts from, as dotted parts under pickpool.
        package = name.split("/") if path.name == "__init__.py" else name.split("/")[:-1]
        if name == "__init__":
            package = []
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    parts = base + (node.module.split(".") if node.module else [])
                elif (node.module or "").split(".")[0] == "pickpool":
                    parts = (node.module or "").split(".")[1:]
                else:
                    continue
                for alias in node.names:
                    found.add(_resolve(modules, [*parts, alias.name]) or _resolve(modules, parts))
            elif isinstance(node, ast.Import):
                found |= {
                    _resolve(modules, alias.name.split(".")[1:])
                    for alias in node.names
                    if alias.name.split(".")[0] == "pickpool"
                }
        graph[name] = {m for m in found if m and m != name}
    return graph


def _resolve(modules: dict[str, Path], parts: list[str]) -> str:
    """The module ``pickpool.<parts>`` names, in the docs' spelling; "" if it is none."""
    name = "/".join(parts) or "__init__"
    return name if name in modules else ""


def test_no_import_circle() -> None:
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    circles: list[str] = []

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                walk(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not circles, "import circles:\n" + "\n".join(circles)
    # Guards against a walk that finds nothing, and so passes everything.
    assert len(graph) > 40
    assert sum(map(len, graph.values())) > 100


def _layers() -> list[set[str]]:
    """docs/architecture.md's layers, lowest first: each row of its table names its modules."""
    return [
        set(re.findall(r"`([\w/]+)`", line.split("|")[2]))
        for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()
        if line.startswith("| ") and "`" in line
    ]


def test_the_layers_in_the_docs_are_the_imports() -> None:
    graph, layers = _imports(), _layers()
    where = {module: i for i, layer in enumerate(layers) for module in layer}
    named_twice = [m for m in where if sum(m in layer for layer in layers) > 1]
    assert not named_twice, f"named in two layers: {named_twice}"
    unplaced = sorted(set(graph) - set(where))
    assert not unplaced, f"modules docs/architecture.md does not place in a layer: {unplaced}"
    gone = sorted(set(where) - set(graph))
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"
    upward = [
        f"{name} (layer {where[name] + 1}) imports {target} (layer {where[target] + 1})"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if where[target] > where[name]
    ]
    assert not upward, "imports go down the layers, or stay in one:\n" + "\n".join(upward)
    assert len(layers) >= 5


def test_every_module_says_what_it_owns() -> None:
    silent = [
        path.relative_to(SRC).as_posix()
        for path in sorted(SRC.rglob("*.py"))
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not silent, f"modules without a docstring saying what they own: {silent}"
