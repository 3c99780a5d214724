"""diffgemma-bench with real back-ends on a tiny checkpoint: the engine in-process (--direct), the language server
over stdio (--completer server), and the transformers baseline (--baseline transformers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from checkpoints import cached_checkpoint
from lsp_server.bench import BenchError
from lsp_server.bench.cli import main
from lsp_server.bench.completers import CompleterSettings, load_pipeline, make_completer
from lsp_server.bench.report import RECORDS_FILE, SERVER_LOG_FILE
from lsp_server.bench.tasks import DEFAULT_DATA_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(),
                                reason=f"HumanEval-Infilling data not found at {DEFAULT_DATA_DIR}")
TASKS = ["--task", "single-line", "--limit", "3", "--seed", "0"]
QUIET = ["--no-plots", "--no-progress", "--workers", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A random tiny checkpoint (16-token canvas, 8 denoising steps): noise for text, but deterministic."""
    return str(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random"))


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RECORDS_FILE).read_text().splitlines()]


def _language_servers_running() -> list[str]:
    """Command lines of this process's children that run the language server (zombies have none)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):  # the process ended while being read
            continue
        if parent == os.getpid() and "lsp_server" in command:
            found.append(command)
    return found


@needs_data
def test_direct_and_server_back_ends_run_the_same_pipeline(tmp_path, checkpoint):
    runs = {}
    for name, backend in (("direct", ["--direct", "--no-compile"]), ("server", ["--completer", "server", "--no-compile"])):
        out = tmp_path / name
        assert main([*backend, "--model", checkpoint, *TASKS, *QUIET, "--out", str(out)]) == 0
        runs[name] = (json.loads((out / "summary.json").read_text()), _records(out))
    assert _language_servers_running() == []
    assert (tmp_path / "server" / SERVER_LOG_FILE).exists()

    completions = {}
    for name, (summary, records) in runs.items():
        assert summary["n"] == 3 and summary["errors"] == 0 and summary["sandbox"]["programs"] == 3
        assert summary["latency_ms"]["p50"] > 0 and summary["cold_latency_ms"] > 0
        # One 16-token canvas of 8 steps (the random model is never confident enough to stop early): 2 tokens a
        # forward, a little less where it wrote pad tokens, which do not count.
        assert 1.75 <= summary["tokens_per_forward"] <= 2.0
        assert summary["engine_ms_per_step"] > 0
        assert summary["engine_ms_per_canvas"] == pytest.approx(8 * summary["engine_ms_per_step"])
        samples = [record["samples"][0] for record in records]
        assert all(sample["latency_ms"] > 0 and sample["engine_ms_per_step"] > 0 for sample in samples)
        completions[name] = {record["task_id"]: record["samples"][0]["completion"] for record in records}
    assert completions["direct"] == completions["server"]
    assert any(completions["direct"].values())  # real generated text, not three empty answers
    assert runs["direct"][0]["peak_memory_mb"] > 0  # measured in-process only
    assert runs["server"][0]["peak_memory_mb"] is None


def test_dtype_option_reaches_the_pipeline(checkpoint):
    for dtype, expected in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        # compile=False: a background compile would outlive this test and take a core from the ones after it
        pipeline, settings = load_pipeline(CompleterSettings(backend="direct", model=checkpoint, seed=0, dtype=dtype,
                                                             compile=False))
        assert settings.dtype == dtype and pipeline.model.dtype == expected


@needs_data
def test_transformers_baseline_agrees_token_for_token(tmp_path, checkpoint, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    # exact mode in float32: the engine's exact numbers (the default dtype, auto, may pick bfloat16 on this CPU)
    assert main(["--direct", "--model", checkpoint, "--dtype", "float32", "--engine-mode", "exact",
                 "--baseline", "transformers",
                 "--task", "single-line", "--limit", "2", "--seed", "3", *QUIET, "--out", str(out)]) == 0
    baseline = json.loads((out / "summary.json").read_text())["baseline"]
    assert baseline["tasks"] == 2
    assert baseline["token_agreement"] == 1.0 and baseline["mean_token_agreement"] == 1.0
    assert baseline["engine_ms"] > 0 and baseline["transformers_ms"] > 0
    assert baseline["speed_ratio"] == pytest.approx(baseline["transformers_ms"] / baseline["engine_ms"])
    for record in _records(out):
        comparison = record["baseline"]
        assert comparison["identical_tokens"] and comparison["token_agreement"] == 1.0
        assert comparison["new_tokens"] == 16 and comparison["prompt_tokens"] > 0
    assert "Baseline transformers `generate()` on the same prompts (2 tasks)" in capsys.readouterr().out


@needs_data
def test_transformers_baseline_against_serving_mode(tmp_path, checkpoint):
    """The default engine mode (serving, bf16 here) against transformers in float32, as a user runs it: both
    generate every task's tokens; they differ by sampling, so agreement is only reported."""
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    assert main(["--direct", "--model", checkpoint, "--no-compile", "--baseline", "transformers",
                 "--task", "single-line", "--limit", "2", "--seed", "3", *QUIET, "--out", str(out)]) == 0
    baseline = json.loads((out / "summary.json").read_text())["baseline"]
    assert baseline["tasks"] == 2 and 0.0 <= baseline["token_agreement"] <= 1.0
    assert baseline["speed_ratio"] == pytest.approx(baseline["transformers_ms"] / baseline["engine_ms"])
    for record in _records(out):
        assert record["baseline"]["new_tokens"] == 16 and record["baseline"]["prompt_tokens"] > 0


def test_transformers_is_imported_only_for_the_baseline(tmp_path, checkpoint):
    """A direct run leaves transformers unimported; where it is not installed, --baseline says so."""
    script = f"""
import sys
from lsp_server.bench.cli import main
common = ["--direct", "--no-compile", "--model", {checkpoint!r}, "--repo", {str(REPO_ROOT / "lsp_server" / "bench")!r},
          "--limit", "2", "--no-plots", "--no-progress"]
assert main([*common, "--out", {str(tmp_path / "direct")!r}]) == 0
assert "transformers" not in sys.modules, "a run without --baseline imported transformers"
sys.modules["transformers"] = None  # what Python does for a package that is not installed: it cannot import
assert main([*common, "--baseline", "transformers", "--out", {str(tmp_path / "baseline")!r}]) == 1
"""
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr
    assert "--baseline transformers needs transformers, which is not installed" in completed.stderr


@pytest.mark.parametrize("problem", ["missing directory", "unsupported config", "server crash"])
def test_server_back_end_fails_clearly_when_the_model_cannot_be_served(tmp_path, checkpoint, problem):
    model, server_log = checkpoint, tmp_path / SERVER_LOG_FILE
    if problem == "missing directory":
        model, expected = str(tmp_path / "no-checkpoint"), "the server could not load the model: .*not a checkpoint"
    elif problem == "unsupported config":
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama"}')
        model, expected = str(tmp_path / "broken"), "the server could not load the model: .*unsupported model_type"
    else:  # the server cannot open its log file: it dies at start-up, before answering initialize
        server_log, expected = tmp_path / "no-such-directory" / SERVER_LOG_FILE, (
            "(?s)the server exited before its model was ready; its error output: .*FileNotFoundError")
    started = time.monotonic()
    with pytest.raises(BenchError, match=expected):
        make_completer(CompleterSettings(backend="server", model=model, seed=0, server_log=server_log))
    assert time.monotonic() - started < 60
    assert _language_servers_running() == []
