"""The runner loop against the Completer seam: failed requests, invalid completions, samples per task, progress."""

from __future__ import annotations

import io

import pytest

from lsp_server.bench import BenchError
from lsp_server.bench.completers import Completion, CompletionError
from lsp_server.bench.metrics import summarize
from lsp_server.bench.report import Journal, Progress, markdown_report
from lsp_server.bench.runner import run_benchmark
from lsp_server.bench.sandbox import Sandbox, SandboxLimits
from lsp_server.bench.tasks import InfillTask


def _task(number: int) -> InfillTask:
    return InfillTask(task_id=f"t/{number}", kind="unit", language="python", path=f"t{number}.py",
                      prefix="def f():\n", suffix="\n", reference=f"    return {number}",
                      test=f"def check(candidate):\n    assert candidate() == {number}\n", entry_point="f")


class ScriptedCompleter:
    """Answers from a fixed script per task: a real back-end's outcomes (text, a failed request, garbage)."""

    name = "scripted"

    def __init__(self, script):
        self.script = {task_id: list(answers) for task_id, answers in script.items()}
        self.closed = False

    def complete(self, task):
        answer = self.script[task.task_id].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxLimits(timeout_s=2.0, memory_mb=256), slots=2) as sandbox:
        yield sandbox


def _run(tmp_path, tasks, completer, sandbox, samples_per_task=1):
    journal = Journal(tmp_path / "out", {"test": True})
    try:
        run_benchmark(tasks, completer, journal, Progress(len(tasks), enabled=False), sandbox=sandbox,
                      samples_per_task=samples_per_task)
    finally:
        journal.close()
    return [journal.records[task.task_id] for task in tasks if task.task_id in journal.records]


def test_samples_per_task_give_pass_at_k_and_failed_requests_count_as_failures(tmp_path, sandbox):
    tasks = [_task(1), _task(2)]
    completer = ScriptedCompleter({
        "t/1": [Completion("    return 1", 120.0, engine_ms_per_canvas=40.0, tokens_per_forward=3.0),
                Completion("    return 7", 80.0),
                CompletionError("server timed out")],
        "t/2": [Completion("    return 2", 90.0), Completion("    return 2", 95.0), Completion("    return 2", 99.0)],
    })
    records = _run(tmp_path, tasks, completer, sandbox, samples_per_task=3)
    assert [record["num_passed"] for record in records] == [1, 3]
    failed_request = records[0]["samples"][2]
    assert failed_request["error"] == "server timed out" and failed_request["execution"] is None
    assert not failed_request["syntax_valid"] and failed_request["edit_similarity"] == 0.0
    wrong = records[0]["samples"][1]
    assert wrong["execution"]["status"] == "failed" and "AssertionError" in wrong["execution"]["output_tail"]
    assert "output_tail" not in records[1]["samples"][0]["execution"]  # kept only where it explains a failure

    summary = summarize(records)
    assert summary["pass_at_1"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["pass_at_k"] == {}  # k = 10 needs 10 samples per task
    assert summary["errors"] == 1 and summary["tokens_per_forward"] == 3.0
    assert summary["cold_latency_ms"] == 120.0

    report = markdown_report(summary, {"completer": "scripted", "model": None})
    assert "| unit | 2 | 0.667 | 0.667 | 0.812 | 0.833 | 92 / 98 / 99 | 3.00 |" in report
    assert "Engine: ms per canvas 40.0." in report and "1 requests failed" in report


def test_an_invalid_completion_stops_the_run_and_keeps_what_finished(tmp_path, sandbox):
    tasks = [_task(1), _task(2)]
    completer = ScriptedCompleter({"t/1": [Completion("    return 1", 10.0)],
                                   "t/2": [Completion("    return 2", float("nan"))]})
    with pytest.raises(BenchError, match="scripted back-end returned an invalid completion for t/2"):
        _run(tmp_path, tasks, completer, sandbox)
    journal = Journal(tmp_path / "out", {"test": True})
    assert list(journal.records) == ["t/1"]
    journal.close()


def test_any_other_back_end_exception_stops_the_run(tmp_path, sandbox):
    completer = ScriptedCompleter({"t/1": [ConnectionResetError("server died")]})
    with pytest.raises(ConnectionResetError):
        _run(tmp_path, [_task(1)], completer, sandbox)


def test_samples_per_task_must_be_positive(tmp_path, sandbox):
    with pytest.raises(BenchError, match="at least 1"):
        _run(tmp_path, [_task(1)], ScriptedCompleter({}), sandbox, samples_per_task=0)


def test_journal_rejects_damage_that_is_not_an_interrupted_last_line(tmp_path):
    out = tmp_path / "out"
    Journal(out, {"test": True}).close()
    (out / "records.jsonl").write_text('{"task_id": "a", "samples": []}\n{broken\n{"task_id": "b", "samples": []}\n')
    with pytest.raises(BenchError, match=r"records.jsonl:2: not a JSON record"):
        Journal(out, {"test": True})
    (out / "records.jsonl").write_text('{"task_id": "a"}\n{"task_id": "a"}\n')
    with pytest.raises(BenchError, match="recorded twice"):
        Journal(out, {"test": True})


def test_progress_logs_rate_and_eta_when_not_on_a_terminal():
    stream = io.StringIO()
    progress = Progress(40, already_done=10, stream=stream)
    for _ in range(30):
        progress.advance()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 21  # one line per 5 % at most, plus the last
    assert lines[-1].startswith("[" + "#" * 30 + "] 40/40 100.0%") and lines[-1].endswith("ETA 0s")
    assert "tasks/s" in lines[0]
