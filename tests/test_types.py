"""What a type checker tells a user of pickpool: the results' element types, as mypy reveals
them on a sample program (the library's own annotations are checked by ``make types``)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

# The functions both samples call.
FUNCTIONS = """
import pickpool

def length(s: str) -> int:
    return len(s)

async def alength(s: str) -> int:
    return len(s)

def add(a: int, b: int) -> int:
    return a + b
"""

SAMPLE = """
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


def _mypy(tmp_path: Path, name: str, calls: str) -> tuple[Path, str, str]:
    """(the sample, mypy's report, its errors) for ``calls`` after :data:`FUNCTIONS`."""
    sample = tmp_path / f"{name}.py"
    sample.write_text(textwrap.dedent(FUNCTIONS) + textwrap.dedent(calls))
    out, err, _ = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(sample)]
    )
    return sample, out, err


@pytest.mark.timeout(300)
def test_results_have_the_function_s_return_type(tmp_path: Path) -> None:
    sample, out, err = _mypy(tmp_path, "sample", SAMPLE)
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


TYPOS = """
async def main() -> None:
    pickpool.map(length, ["a"], model="thread")
    pickpool.map(alength, ["a"], model="thread", workers=4)
    pickpool.map(add, [1], [2], model="thread")
    pickpool.imap(length, ["a"], model="thread")
    pickpool.starmap(add, [(1, 2)], model="thread")
    await pickpool.amap(length, ["a"], model="thread")
    async for _ in pickpool.aimap(alength, ["a"], model="thread"):
        pass
"""


@pytest.mark.timeout(300)
def test_a_misspelt_model_is_one_short_error_naming_it(tmp_path: Path) -> None:
    """mypy's usual answer to a call no overload takes is every overload's signature (some
    10 kB for map): here, one line per call, naming the argument and what it may be."""
    sample, out, err = _mypy(tmp_path, "typos", TYPOS)
    lines = [line for line in out.splitlines() if line.startswith(str(sample))]
    calls = [n for n, text in enumerate(sample.read_text().splitlines(), 1) if '"thread"' in text]
    assert [int(line.split(":")[1]) for line in lines] == calls, out + err
    for line in lines:
        assert ': error: Argument "model" to ' in line, line
        assert "incompatible type \"Literal['thread']\"" in line, line
        assert "'threads'" in line, line
        assert len(line) < 400, line
