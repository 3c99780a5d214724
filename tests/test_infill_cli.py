"""diffgemma-infill: the one-shot CLI over the server's pipeline."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from checkpoints import cached_checkpoint
from engine import CanvasText
from engine.training.tokenizer import EOS_ID
from lsp_server.infill_cli import CanvasView, main

SOURCE = "import os\n\n\ndef total(items):\n    result = 0\n    for item in items:\n        result += \n    return result\n"


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    return str(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant"))


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "sample.py"
    path.write_text(SOURCE, encoding="utf-8")
    return path


def test_json_report_from_the_installed_entry_point(constant, source):
    run = subprocess.run(
        [sys.executable, "-m", "lsp_server.infill_cli", str(source), "--line", "7", "--character", "19",
         "--model", constant, "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["completion"] == "x" * 16 and report["mode"] == "single_line"
    assert report["position"] == {"line": 7, "character": 19} and report["promptFormat"] == "fim"
    assert report["candidates"][0]["text"] == "x" * 16 and report["rawCandidates"][0]["finished"] is False
    context = report["context"]
    assert context["prefixTokens"] > 0 and context["suffixTokens"] > 0
    assert context["promptTokens"] == context["encodedPromptTokens"] > context["prefixTokens"]
    assert report["generation"]["steps"] == 8 and report["generation"]["blocks"] == 1
    assert set(report["timingsMs"]) == {"load", "context", "generate", "postprocess", "total", "encoder", "decoder"}


def test_plain_output_with_the_canvas_on_stderr(constant, source, capsys):
    assert main([str(source), "--line", "7", "--character", "19", "--model", constant, "--show-canvas"]) == 0
    out, err = capsys.readouterr()
    assert out == "x" * 16 + "\n"
    frames = [line for line in err.splitlines() if line.startswith("canvas ")]
    assert [frame.split(",")[1].strip() for frame in frames] == [f"step {k}/8" for k in range(1, 9)]


def test_canvas_is_redrawn_in_place_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    view = CanvasView(terminal)
    view.draw(CanvasText(0, 1, 8, "a = 1\nb", 0.25))
    first = terminal.getvalue()
    view.draw(CanvasText(0, 2, 8, "a = 2", 0.5))
    assert first == "canvas 1, step 1/8, 25% accepted\na = 1\nb\n"
    assert terminal.getvalue()[len(first):] == "\x1b[3F\x1b[J" + "canvas 1, step 2/8, 50% accepted\na = 2\n"


def test_no_completion(tmp_path_factory, source, capsys):
    eos_model = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant", output_token=EOS_ID)
    assert main([str(source), "--line", "7", "--character", "19", "--model", str(eos_model)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no completion at 7:19" in err


@pytest.mark.parametrize(("arguments", "message"), [
    # Both in the flags' 1-based terms (the last line is the empty one after the final newline).
    (["--line", "70", "--character", "1"], "sample.py:70:1 is not in the file: --line must be 1-9"),
    (["--line", "10", "--character", "1"], "sample.py:10:1 is not in the file: --line must be 1-9"),
    (["--line", "7", "--character", "90"], "line 7 has 18 characters, so --character must be 1-19"),
    (["--line", "7", "--character", "20"], "line 7 has 18 characters, so --character must be 1-19"),
    (["--line", "0", "--character", "1"], "count from 1"),
    (["--line", "7", "--character", "19", "--candidates", "0"], "'candidates': expected a positive integer"),
])
def test_bad_positions_and_settings(constant, source, capsys, arguments, message):
    assert main([str(source), *arguments, "--model", constant]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_file_and_model(constant, source, tmp_path, capsys):
    assert main([str(tmp_path / "missing.py"), "--line", "1", "--character", "1", "--model", constant]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main([str(source), "--line", "7", "--character", "19", "--model", str(tmp_path)]) == 2
    assert "cannot load the model" in capsys.readouterr().err


def test_the_last_line_and_column_are_accepted(constant, source, capsys):
    assert main([str(source), "--line", "7", "--character", "19", "--model", constant, "--json"]) == 0
    assert main([str(source), "--line", "9", "--character", "1", "--model", constant, "--json"]) == 0


def test_version_answers_without_importing_torch():
    """`diffgemma-lsp --version` must be instant: it may not load the model stack."""
    probe = ("import sys\nfrom lsp_server.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as stop:\n"
             "    assert stop.code == 0\nprint('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    version, torch_imported = result.stdout.splitlines()
    assert version.startswith("diffgemma-lsp ") and torch_imported == "False"
