"""What the plugins that run other projects' test suites against pickpool share: the tests
expected to fail there, each with its reason, matched by a glob on ``Class::test[case]``."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

import pytest


def expect_failures(
    items: list[pytest.Item],
    expected: Mapping[str, str],
    *,
    skipped: Mapping[str, str] | None = None,
) -> None:
    """Mark each of ``items`` that a pattern of ``expected`` names as a strict xfail with its
    reason (a test that passes again is an error, and its entry goes), and each that one of
    ``skipped`` names as skipped (one that cannot even run here)."""
    for item in items:
        cls = getattr(item, "cls", None)
        name = f"{cls.__name__}::{item.name}" if cls is not None else item.name
        reason = _match(name, skipped or {})
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
            continue
        reason = _match(name, expected)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


def _match(name: str, patterns: Mapping[str, str]) -> str | None:
    for pattern, reason in patterns.items():
        if fnmatch.fnmatchcase(name, pattern.replace("[", "[[]")):  # ("[" as itself)
            return reason
    return None
