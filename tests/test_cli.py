"""The command line, driven in-process (for speed) and as a real program (for the real thing)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pickpool import cli
from pickpool.lab import __main__ as demo

JOBS = """
import math

def work(x):
    if x == 3:
        raise ValueError("three is bad")
    return math.factorial(x) % 1000
"""


@pytest.fixture
def jobs(tmp_path: Path) -> str:
    path = tmp_path / "jobs.py"
    path.write_text(JOBS)
    return f"{path}:work"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def lines_of(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_advise_prints_evidence_predictions_and_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "advise", "pickpool.lab:tiny", "--range", "20000")
    assert code == 0
    for text in ("model='serial'", "[tiny]", "what the probe measured", "predicted for 20,000"):
        assert text in out


def test_advise_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "advise", "pickpool.lab:tiny", "--range", "20000", "--json")
    assert code == 0
    advice = json.loads(out)
    assert (advice["model"], advice["kind"]) == ("serial", "tiny")
    beyond = {"interpreters"} if sys.version_info >= (3, 14) else set()  # (sub-interpreters)
    assert set(advice["predicted"]) == {"serial", "threads", "processes", "asyncio", *beyond}
    assert advice["evidence"]["calls"] > 0
    assert advice["reasons"]


@pytest.mark.parametrize("model", ["auto", "serial", "threads", "processes", "asyncio"])
def test_run_writes_json_lines_in_order_and_exits_1_on_failure(
    capsys: pytest.CaptureFixture[str], jobs: str, model: str
) -> None:
    code, out, err = run_cli(capsys, "run", jobs, "--range", "6", "--model", model)
    assert code == 1
    assert lines_of(out) == [
        {"index": 0, "result": 1},
        {"index": 1, "result": 1},
        {"index": 2, "result": 2},
        {
            "index": 3,
            "item": 3,
            "error": "ValueError: three is bad",
            "type": "ValueError",
            "attempts": 1,
        },
        {"index": 4, "result": 24},
        {"index": 5, "result": 120},
    ]
    assert "6 items, 1 failed" in err


def test_run_reads_every_kind_of_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("[1, 2]\n\n[3, 4]\n")
    code, out, _ = run_cli(capsys, "run", "builtins:sum", "--items", str(items))
    assert (code, [r["result"] for r in lines_of(out)]) == (0, [3, 7])
    text = tmp_path / "words.txt"
    text.write_text("a\nbb\nccc\n")
    code, out, _ = run_cli(capsys, "run", "builtins:len", "--lines", str(text))
    assert (code, [r["result"] for r in lines_of(out)]) == (0, [1, 2, 3])
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO('"x"\n"yy"\n'))
    code, out, _ = run_cli(capsys, "run", "builtins:len", "-")
    assert (code, [r["result"] for r in lines_of(out)]) == (0, [1, 2])


def test_run_out_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "out.jsonl"
    code, out, _ = run_cli(capsys, "run", "builtins:abs", "--range", "3", "--out", str(out_file))
    assert (code, out) == (0, "")
    assert [r["result"] for r in lines_of(out_file.read_text())] == [0, 1, 2]


def test_bench_markdown_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs the plot extra (matplotlib)")
    plot = tmp_path / "bench.png"
    code, out, _ = run_cli(
        capsys, "bench", "pickpool.lab:digest", "--range", "8", "--workers", "1,2",
        "--models", "serial,threads,processes", "--plot", str(plot), "--markdown",
    )  # fmt: skip
    assert code == 0
    assert out.startswith("| model | workers |")
    assert out.count("| threads") == 2  # one row per worker count
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_doctor_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "doctor", "--json")
    facts = json.loads(out)
    assert code == 0
    assert facts["usable_cores"] >= 1
    assert isinstance(facts["gil_enabled"], bool)
    assert facts["start_method"] in ("fork", "forkserver", "spawn")
    assert facts["process_pool_start_s"] > 0
    # What decides the models beyond one GIL and one machine.
    assert isinstance(facts["free_threaded_build"], bool)
    assert facts["interpreters_model"] is (sys.version_info >= (3, 14))
    assert isinstance(facts["dask_installed"], bool)
    assert facts["dask_model"] is False  # no client is active
    # How busy the machine is now, which every timing depends on.
    assert facts["load_average"] >= 0
    assert 0.0 <= facts["waiting_for_a_core"] <= 1.0
    assert facts["threads_model"] is True


def test_run_on_an_unavailable_model_says_why_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if sys.version_info >= (3, 14):
        pytest.skip("this interpreter has sub-interpreters")
    code, _, err = run_cli(capsys, "run", "builtins:abs", "--range", "3", "--model", "interpreters")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "Python 3.14 or later" in err


def test_demo_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs the demo extra (matplotlib)")
    monkeypatch.setattr(
        demo, "WORKLOADS", [dataclasses.replace(w, quick=4) for w in demo.WORKLOADS]
    )
    plot = tmp_path / "demo.png"
    code, out, _ = run_cli(capsys, "demo", "--quick", "--plot", str(plot))
    assert code == 0
    assert "held" in out
    assert plot.exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["advise", "nosuchmodule:f", "--range", "3"], "no module named 'nosuchmodule'"),
        (["advise", "pickpool.lab:nope", "--range", "3"], "has no function 'nope'"),
        (["advise", "pickpool.lab", "--range", "3"], "must be MODULE:FUNCTION"),
        (["advise", "pickpool.lab:WAIT_SECONDS", "--range", "3"], "not a function"),
        (["run", "/no/such/file.py:f", "--range", "3"], "no such file"),
        (["run", "builtins:abs"], "give the items one way"),
        (["run", "builtins:abs", "--range", "3", "--lines", "x"], "give the items one way"),
        (["run", "builtins:abs", "--items", "/no/such.jsonl"], "cannot read /no/such.jsonl"),
        (["run", "builtins:abs", "--range", "-1"], "--range"),
        (["run", "builtins:abs", "--range", "3", "--model", "fibers"], "fibers"),
        (["bench", "builtins:abs", "--range", "3", "--workers", "1,x"], "--workers must be"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("pickpool: error:")
    assert says in err


def test_a_bad_json_line_names_its_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("1\n2\n{oops\n")
    code, _, err = run_cli(capsys, "run", "builtins:abs", "--items", str(items))
    assert code == 2
    assert f"{items}, line 3: not JSON" in err


@pytest.mark.parametrize("command", ["advise", "run", "bench", "demo", "doctor"])
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert "Usage: pickpool" in out
    if command != "doctor":
        assert "Examples:" in out


def test_the_real_program(tmp_path: Path, jobs: str) -> None:
    # The console script as installed, in a fresh process: stdin in, JSON lines out.
    script = Path(sys.executable).with_name("pickpool")
    done = subprocess.run(
        [str(script), "run", jobs, "-", "--model", "processes"],
        input="1\n2\n3\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert [r.get("result", "failed") for r in lines_of(done.stdout)] == [1, 2, "failed"]
    bad = subprocess.run(
        [str(script), "advise", "nosuch:f", "--range", "3"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


def test_bench_api_rows_best_and_markdown() -> None:
    import pickpool
    from pickpool import lab

    result = pickpool.bench(lab.tiny, range(100), models=["serial", "threads"], workers=[1, 2])
    assert [(r.model, r.workers) for r in result.rows] == [
        ("serial", 1),
        ("threads", 1),
        ("threads", 2),
    ]
    assert result.best in result.rows
    assert result.rows[0].speedup == 1.0
    assert all(r.items == 100 and r.throughput > 0 for r in result.rows)
    assert "(fastest)" in result.to_markdown()
    with pytest.raises(ValueError, match="unknown model"):
        pickpool.bench(lab.tiny, range(3), models=["fibers"])
    with pytest.raises(ValueError, match="at least one item"):
        pickpool.bench(lab.tiny, [])


ARGV_SCRIPT = """
import sys

SCALE = int(sys.argv[1])  # read at import, as scripts do


def scaled(x):
    return x * SCALE
"""


def test_a_target_script_gets_its_own_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = tmp_path / "scaled.py"
    script.write_text(ARGV_SCRIPT)
    before = list(sys.argv)
    code, out, err = run_cli(capsys, "run", f"{script}:scaled", "--range", "3", "--", "5")
    assert code == 0, err
    assert [line["result"] for line in lines_of(out)] == [0, 5, 10]
    assert sys.argv == before  # pickpool's own, once the command is done
