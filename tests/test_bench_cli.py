"""`python -m lsp_server.bench` end to end with the oracle completer on real HumanEval tasks and a source tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lsp_server.bench.cli import main
from lsp_server.bench.report import RECORDS_FILE
from lsp_server.bench.tasks import DEFAULT_DATA_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(),
                                reason=f"HumanEval-Infilling data not found at {DEFAULT_DATA_DIR}")
ORACLE_RUN = ["--completer", "oracle", "--task", "single-line", "--task", "random-span", "--limit", "3",
              "--workers", "2", "--no-progress"]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]


@needs_data
def test_oracle_run_scores_perfectly_and_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ORACLE_RUN, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 6 and summary["samples"] == 6
    assert summary["pass_at_1"] == 1.0 and summary["exact_match"] == 1.0 and summary["syntax_valid"] == 1.0
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99"} and "tokens_per_forward" in summary
    assert summary["tokens_per_forward"] is None  # the oracle has no engine: nothing is made up
    assert set(summary["by_kind"]) == {"single-line", "random-span"}
    assert summary["sandbox"]["programs"] == 6 and summary["sandbox"]["timeouts"] == 0
    assert summary["session"]["tasks_run"] == 6 and summary["session"]["sandbox_python"]
    assert summary["config"]["tasks"] == ["single-line", "random-span"]

    records = _records(out)
    assert len(records) == 6 and all(record["num_passed"] == 1 for record in records)
    assert [sample["cold"] for record in records for sample in record["samples"]] == [True] + [False] * 5
    report = (out / "report.md").read_text()
    assert "| **all** | 6 | 1.000 | 1.000 | 1.000 | 1.000 |" in report
    assert report in capsys.readouterr().out
    for plot in ("latency_cdf.png", "scores_by_kind.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_data
def test_a_run_resumes_from_its_output_and_refuses_another_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ORACLE_RUN, "--out", str(out), "--no-plots"]) == 0
    complete = (out / RECORDS_FILE).read_text()

    # Interrupted mid-write: the last record is cut short; the rerun keeps the five whole ones, redoes the sixth.
    lines = complete.splitlines(keepends=True)
    (out / RECORDS_FILE).write_text("".join(lines[:5]) + lines[5][:40])
    capsys.readouterr()
    assert main([*ORACLE_RUN, "--out", str(out), "--no-plots"]) == 0
    assert "6 tasks, 5 already in" in capsys.readouterr().err
    records = _records(out)
    assert [record["task_id"] for record in records] == [json.loads(line)["task_id"] for line in lines]
    assert json.loads((out / "summary.json").read_text())["session"]["tasks_run"] == 1

    assert main([*ORACLE_RUN, "--out", str(out), "--no-plots"]) == 0
    assert "6 tasks, 6 already in" in capsys.readouterr().err
    assert len(_records(out)) == 6

    assert main([*ORACLE_RUN, "--out", str(out), "--no-plots", "--seed", "1"]) == 1
    assert "holds a run with another configuration (seed: 0 there, 1 now)" in capsys.readouterr().err
    (out / "run.json").unlink()
    assert main([*ORACLE_RUN, "--out", str(out), "--no-plots"]) == 1
    assert "has records but no run.json" in capsys.readouterr().err


def test_a_run_that_recorded_nothing_does_not_pin_its_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    tree = REPO_ROOT / "lsp_server" / "bench"
    assert main(["--direct", "--model", str(tmp_path / "no-checkpoint"), "--repo", str(tree), "--limit", "2",
                 "--no-progress", "--out", str(out)]) == 1
    assert "cannot load the model" in capsys.readouterr().err
    assert main(["--completer", "oracle", "--repo", str(tree), "--limit", "2", "--no-progress", "--no-plots",
                 "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["completer"] == "oracle"


def test_repo_run_scores_text_metrics_without_a_sandbox(tmp_path):
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "stats.py").write_text(
        "def mean(values):\n    total = sum(values)\n    return total / len(values)\n\n\n"
        "def spread(values):\n    low, high = min(values), max(values)\n    return high - low\n")
    (tree / "main.go").write_text("package main\n\nfunc add(a int, b int) int {\n\treturn a + b\n}\n")
    out = tmp_path / "run"
    assert main(["--completer", "oracle", "--repo", str(tree), "--limit", "9", "--out", str(out),
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 9 and summary["pass_at_1"] is None
    assert summary["exact_match"] == 1.0 and summary["edit_similarity"] == 1.0 and summary["syntax_valid"] == 1.0
    assert set(summary["by_kind"]) == {"repo-line", "repo-block", "repo-span"}
    assert summary["sandbox"]["programs"] == 0 and summary["session"]["sandbox_python"] is None
    assert (out / "scores_by_kind.png").exists()


def test_empty_completer_gives_the_floor_a_model_must_beat(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "stats.py").write_text(
        "def mean(values):\n    total = sum(values)\n    return total / len(values)\n\n\n"
        "def spread(values):\n    low, high = min(values), max(values)\n    return high - low\n")
    out = tmp_path / "run"
    assert main(["--completer", "empty", "--repo", str(tree), "--limit", "4", "--out", str(out), "--no-progress",
                 "--no-plots"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert summary["n"] == 4 and summary["exact_match"] == 0.0 and summary["edit_similarity"] == 0.0
    assert all(r["samples"][0]["completion"] == "" for r in records)
    assert json.loads((out / "run.json").read_text())["completer"] == "empty"


@pytest.mark.parametrize("arguments, message", [
    (["--limit", "0"], "--limit must be positive, got 0"),
    (["--timeout", "-1"], "--timeout must be positive"),
    (["--repo", ".", "--task", "example"], "cannot be combined with --task or --data"),
    (["--data", "/nonexistent/data"], "data directory not found: /nonexistent/data (from --data)"),
    (["--repo", "/nonexistent/tree"], "not a directory"),
    (["--model", "some-checkpoint", "--task", "example"], "--model has no effect with the oracle completer"),
    (["--baseline", "transformers", "--task", "example"], "--baseline compares model generations"),
])
def test_bad_input_gets_a_clear_error(tmp_path, capsys, arguments, message):
    assert main(["--completer", "oracle", "--no-progress", "--out", str(tmp_path / "run"), *arguments]) == 1
    assert message in capsys.readouterr().err


def test_conflicting_back_end_flags_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["--direct", "--completer", "oracle"])
    assert "not allowed with argument" in capsys.readouterr().err


@needs_data
def test_module_entry_point_runs(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "lsp_server.bench", "--completer", "oracle", "--task", "example", "--no-plots",
         "--out", str(tmp_path / "run")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "| example | 1 | 1.000 |" in completed.stdout
