"""What a type checker tells a user of pickpool: the results' element types, as mypy reveals
them on a sample program (the library's own annotations are checked by ``make types``)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SAMPLE = """
import pickpool

def length(s: str) -> int:
    return len(s)

async def alength(s: str) -> int:
    return len(s)

def add(a: int, b: int) -> int:
    return a + b

async def main() -> None:
    reveal_type(pickpool.map(length, ["a"]))  # list[int]
    reveal_type(pickpool.map(alength, ["a"]))  # list[int]
    reveal_type(pickpool.map(length, ["a"], on_error="collect"))  # list[int | Failure]
    reveal_type(pickpool.map(length, ["a"], report=True))  # tuple[list[int], Report]
    reveal_type(await pickpool.amap(length, ["a"], on_error="collect"))  # list[int | Failure]
    collected = pickpool.map(alength, ["a"], on_error="collect", report=True)
    reveal_type(collected)  # tuple[list[int | Failure], Report]
    reveal_type(pickpool.map(add, [1], [2]))  # list[Any]
    reveal_type(pickpool.imap(length, ["a"]))  # Results[int]
    reveal_type(pickpool.starmap(add, [(1, 2)]))  # list[int]
    reveal_type(await pickpool.amap(length, ["a"]))  # list[int]
    reveal_type(await pickpool.amap(alength, ["a"], report=True))  # tuple[list[int], Report]
    reveal_type(pickpool.aimap(alength, ["a"]))  # AsyncResults[int]
    async for each in pickpool.aimap(length, ["a"], on_error="collect"):
        reveal_type(each)  # int | Failure
    with pickpool.Executor() as executor:
        reveal_type(executor.submit(length, "a"))  # Future[int]
"""

# What mypy prints for a type, shortened to the names a user writes.
_QUALIFIED = re.compile(r"\b(?:pickpool\.\w+|concurrent\.futures\._base)\.")


@pytest.mark.timeout(300)
def test_results_have_the_function_s_return_type(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(textwrap.dedent(SAMPLE))
    out, err, _ = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(sample)]
    )
    revealed = {
        int(line.split(":")[1]): _QUALIFIED.sub("", line.split('Revealed type is "')[1][:-1])
        for line in out.splitlines()
        if "Revealed type is" in line
    }
    expected = {
        number: text.split("# ")[1]
        for number, text in enumerate(sample.read_text().splitlines(), 1)
        if "reveal_type" in text
    }
    assert revealed == expected, out + err
    assert "error" not in out, out
