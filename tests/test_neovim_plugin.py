"""The Neovim plugin (editor_clients/neovim) in headless Neovim against the real diffgemma-lsp.

Two Neovims: Debian's (0.7, the plugin's own extmark ghost text) and 0.12 from Debian sid, fetched into a
private directory by editor_clients/neovim/scripts/fetch-nvim-0.12.sh (the built-in vim.lsp.inline_completion,
and the plugin's ghost text with inline virtual text). Each test runs a scenario from
editor_clients/neovim/tests/scenarios in a fresh Neovim that starts the server on a tiny checkpoint; the
scenario writes what it saw (the server's answers, ghost text, buffer lines) as JSON and the test checks it.
Suggestions are compared with the insertText the server actually returned, never with fixed text.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import build_checkpoint, sample_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "editor_clients" / "neovim"
HARNESS = PLUGIN / "tests" / "harness.lua"
SCENARIOS = PLUGIN / "tests" / "scenarios"
FETCH_NVIM_012 = PLUGIN / "scripts" / "fetch-nvim-0.12.sh"
SCENARIO_TIMEOUT_S = 150

# A class with a method body to complete: the cursor goes to the end of HOLE_ROW (1-based), after a
# character outside the BMP, so LSP positions (UTF-16) and Neovim columns (bytes) differ.
SOURCE = 'class Shape:\n    def area(self):\n        return "🔷" + \n\n    def name(self):\n        return "shape"\n'
HOLE_ROW = 3

# A cursor in the middle of a line, before the ")" of `_w()`: the rest of the line, ").end()", must stay visible.
MIDLINE_SOURCE = "def split(_w):\n    end = _w().end()\n    return end\n"
MIDLINE_ROW = 2
MIDLINE_COL = len("    end = _w(")


def _nvim_version(nvim: str) -> tuple[int, int]:
    output = subprocess.run([nvim, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.match(r"NVIM v(\d+)\.(\d+)", output)
    if not match:
        raise RuntimeError(f"{nvim} --version printed no version: {output!r}")
    return int(match.group(1)), int(match.group(2))


@pytest.fixture(scope="module")
def debian_nvim() -> str:
    """Debian's Neovim (0.7 on bookworm), installed with apt-get when missing and possible."""
    nvim = shutil.which("nvim")
    if nvim is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("Neovim is not installed and cannot be installed here (needs apt-get as root): "
                        "apt-get install -y neovim")
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "neovim"], check=True, capture_output=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        nvim = shutil.which("nvim")
        assert nvim, "apt-get install neovim put no nvim on PATH"
    if _nvim_version(nvim) >= (0, 12):
        pytest.skip(f"{nvim} is Neovim 0.12+; the fallback-path tests need an older one (Debian's 0.7)")
    return nvim


@pytest.fixture(scope="module")
def nvim_012() -> str:
    """Neovim 0.12+ from Debian sid, in editor_clients/neovim/.cache (downloaded once)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("Neovim 0.12 comes from Debian sid packages: this machine has no apt-get/dpkg-deb")
    fetched = subprocess.run(["bash", str(FETCH_NVIM_012)], capture_output=True, text=True, timeout=600)
    if fetched.returncode != 0:
        pytest.skip("could not fetch Neovim 0.12 from Debian sid (needs network access to deb.debian.org): "
                    + fetched.stderr.strip()[-500:])
    nvim = fetched.stdout.strip().splitlines()[-1]
    assert _nvim_version(nvim) >= (0, 12)
    return nvim


@pytest.fixture(scope="module")
def item_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint whose every canvas token is " item": suggestions of several words, known to be non-empty."""
    token_ids = sample_tokenizer().encode(" item").ids
    assert len(token_ids) == 1, f'" item" is not one token of the test tokenizer: {token_ids}'
    return build_checkpoint(tmp_path_factory.mktemp("item-checkpoint"), kind="constant", output_token=token_ids[0])


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights: with a fixed seed, several different candidates per request."""
    return build_checkpoint(tmp_path_factory.mktemp("random-checkpoint"), kind="random", canvas_length=32)


def run_scenario(nvim: str, scenario: str, tmp_path: Path, checkpoint: Path | None = None, *,
                 source_text: str = SOURCE, plugin_on_rtp: bool = True, **config) -> dict:
    """Runs scenarios/<scenario>.lua in a fresh headless Neovim and returns what it recorded. The plugin is put
    first on 'runtimepath' unless `plugin_on_rtp` is false (the scenario then adds config.plugin_dir itself)."""
    source = tmp_path / "shapes.py"
    source.write_text(source_text, encoding="utf-8")
    result_path = tmp_path / "result.json"
    settings = {"device": "cpu", **config.pop("settings", {})}
    if checkpoint is not None:
        settings["model"] = str(checkpoint)
    test_config = {
        "cmd": [sys.executable, "-m", "lsp_server", "--stdio", "--no-compile"],
        "settings": settings,
        "file": str(source),
        "row": HOLE_ROW,
        "plugin_dir": str(PLUGIN),
        **config,
    }
    env = {
        **os.environ,
        "DIFFGEMMA_TEST_HARNESS": str(HARNESS),
        "DIFFGEMMA_TEST_RESULT": str(result_path),
        "DIFFGEMMA_TEST_CONFIG": json.dumps(test_config),
        **{f"XDG_{kind}_HOME": str(tmp_path / "xdg" / kind.lower()) for kind in ("CONFIG", "DATA", "STATE", "CACHE")},
    }
    plugin = ["--cmd", f"set rtp^={PLUGIN}", "--cmd", "runtime plugin/diffgemma.lua"] if plugin_on_rtp else []
    command = [nvim, "--headless", "-n", "--clean", *plugin, "-S", str(SCENARIOS / f"{scenario}.lua")]
    try:
        completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                   timeout=SCENARIO_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{scenario}: Neovim did not finish within {SCENARIO_TIMEOUT_S} s; output: {error.output!r}")
    if not result_path.exists():
        pytest.fail(f"{scenario}: Neovim exited ({completed.returncode}) without a result:\n"
                    f"{completed.stdout}\n{completed.stderr}")
    outcome = json.loads(result_path.read_text(encoding="utf-8"))
    if outcome["error"] is not None:
        pytest.fail(f"{scenario} failed in Neovim: {outcome['error']}\nrecorded: {outcome['result']}")
    return outcome["result"]


def _lsp_replace(lines: list[str], item: dict) -> list[str]:
    """`lines` with the item's range replaced by its insertText (ranges here lie on one line, in UTF-16)."""
    start, end = item["range"]["start"], item["range"]["end"]
    assert start["line"] == end["line"]
    line = lines[start["line"]].encode("utf-16-le")
    before = line[: 2 * start["character"]].decode("utf-16-le")
    after = line[2 * end["character"]:].decode("utf-16-le")
    replaced = (before + item["insertText"] + after).split("\n")
    return lines[: start["line"]] + replaced + lines[start["line"] + 1:]


def _next_word(text: str) -> str:
    """The plugin's word rule (lua/diffgemma/text.lua), for the texts these tests produce."""
    return re.match(r"\n[ \t]*|[ \t]*\w+|[ \t]*[^\w\s]+|[ \t]+|", text).group() or text


def _check_accept(result: dict, mode: str, position: str) -> None:
    assert result["mode"] == mode
    item = result["item"]
    before, after = result["before"], result["after"]
    typed = before[HOLE_ROW - 1]
    # The server replaces the line up to the cursor; insertText starts with what is already there.
    assert item["range"]["start"] == {"line": HOLE_ROW - 1, "character": 0}
    assert item["insertText"].startswith(typed)
    rest = item["insertText"][len(typed):]
    assert rest.strip(), f"the server suggested nothing: {item!r}"
    ghost = result["ghost"]
    assert ghost["lines"] == rest.split("\n")
    assert (ghost["row"], ghost["col"]) == (HOLE_ROW - 1, len(typed.encode()))
    assert ghost["position"] == position
    assert after == _lsp_replace(before, item)
    last_line = item["insertText"].split("\n")[-1]
    assert result["cursor_after"] == [HOLE_ROW + item["insertText"].count("\n"), len(last_line.encode())]


def _check_health(report: list[str], mode_line: str) -> None:
    text = "\n".join(report)
    assert "diffgemma: Neovim" in text and "diffgemma: server" in text
    assert mode_line in text
    assert re.search(r"diffgemma-lsp \S+", text), text
    assert "server ready" in text, text
    assert "the server offers textDocument/inlineCompletion" in text
    assert "ERROR" not in text, text


def test_offline_text_rules_and_option_errors(debian_nvim: str, tmp_path: Path) -> None:
    result = run_scenario(debian_nvim, "offline", tmp_path)
    assert result["next_word"] == [
        [" item item", " item"], ["foo(bar)", "foo"], ["  \tx", "  \tx"], [")\n    return 1", ")"],
        ["\n    return 1\nend", "\n    "], ["", ""], ["é, x", "é,"],
    ]
    assert result["next_line"] == [
        [" item item", " item item"], ["foo(bar)", "foo(bar)"], ["  \tx", "  \tx"], [")\n    return 1", ")"],
        ["\n    return 1\nend", "\n    return 1"], ["", ""], ["é, x", "é, x"],
    ]
    assert result["lines"][3] == [")\n    return 1", [")", "    return 1"]]
    assert result["lines"][5] == ["", [""]]
    assert result["remaining"] == ["urn x", None, ""]
    errors = result["errors"]
    assert 'unknown option "settigns"' in errors[0]
    assert 'unknown server setting "modle"' in errors[1] and "maxPromptTokens" in errors[1]
    assert "cmd must be a table" in errors[2]
    assert "cmd must name the server executable" in errors[3]
    assert 'unknown keymap "accept_all"' in errors[4]
    assert "keymaps.accept must be a key (string) or false" in errors[5]
    assert "call require('diffgemma').setup() first" in result["accept_before_setup"]
    assert {":Diffgemma", "diffgemma-setup", "diffgemma-settings", "diffgemma-keymaps", "diffgemma-health"} <= set(
        result["help_tags"])
    # The shipped doc/tags is what :helptags generates from the help file.
    assert result["help_tags_file"] == (PLUGIN / "doc" / "tags").read_text(encoding="utf-8").splitlines()


def test_fallback_ghost_text_appears_and_tab_accepts_it(debian_nvim, item_checkpoint, tmp_path) -> None:
    result = run_scenario(debian_nvim, "accept", tmp_path, item_checkpoint)
    _check_accept(result, "ghost", "overlay")
    _check_health(result["health"], "the plugin draws ghost text with extmarks")
    assert result["restarted_attached"] is True
    _check_restart_status(result)


def test_fallback_partial_accept_dismiss_and_clearing(debian_nvim, item_checkpoint, tmp_path) -> None:
    result = run_scenario(debian_nvim, "partial", tmp_path, item_checkpoint)
    _check_partial(result, "ghost")
    assert result["cleared_by_cursor_move"] is True
    assert result["cleared_by_mode_change"] is True


def _check_cycle(result: dict, mode: str) -> None:
    assert result["mode"] == mode
    items = result["items"]
    assert len(items) >= 2, f"the test needs several different candidates; got {items!r}"
    line = result["line"]
    # Random weights give any bytes, control characters included.
    rests = [_displayed(item["insertText"][len(line):]) for item in items]
    assert result["first"]["lines"] == rests[0].split("\n")
    # vim.lsp.inline_completion shows the counter only once the user cycles.
    assert result["first"]["hint"] == ("" if mode == "native" else f" (1/{len(items)})")
    assert result["second"]["lines"] == rests[1].split("\n")
    assert result["second"]["hint"] == f" (2/{len(items)})"
    assert result["back"]["lines"] == result["first"]["lines"]
    assert result["back"]["hint"] == f" (1/{len(items)})"
    assert result["accepted"] == items[1]["insertText"].split("\n")[0]


def test_fallback_cycles_through_candidates(debian_nvim, random_checkpoint, tmp_path) -> None:
    result = run_scenario(debian_nvim, "cycle", tmp_path, random_checkpoint, settings={"candidates": 3, "seed": 1})
    _check_cycle(result, "ghost")


def _displayed(text: str) -> str:
    """How Neovim stores virtual text: control characters as ^X."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: "^" + chr(ord(m.group()) ^ 0x40), text)


def _check_partial(result: dict, mode: str) -> None:
    assert result["mode"] == mode
    line = result["line"]
    rest = result["ghost"]["lines"][0]
    word = _next_word(rest)
    assert word != rest, f"the suggestion needs several words for this test: {rest!r}"
    assert result["line_after_word"] == line + word
    # The rest stays on screen right after the partial accept, before any new answer (no blink).
    assert result["ghost_right_after_word"] is not None, "the ghost text disappeared after the partial accept"
    assert result["ghost_right_after_word"]["lines"][0] == rest[len(word):]
    assert result["ghost_after_word"]["lines"][0] == rest[len(word):]
    assert result["line_after_line"] == result["line_after_word"] + result["ghost_after_word"]["lines"][0]
    assert result["stats"]["acceptances"] >= 1
    assert result["line_after_dismiss"] == result["line_after_line"]
    # Without a suggestion <Tab> is Neovim's own (the python ftplugin's softtabstop: spaces).
    added = result["line_after_tab"][len(result["line_after_dismiss"]):]
    assert result["line_after_tab"].startswith(result["line_after_dismiss"])
    assert added and added.isspace(), repr(added)
    assert result["ghost_while_disabled"] is None
    assert result["ghost_after_enable"]["lines"][0].strip()


def _check_restart_status(result: dict) -> None:
    """The old server's exit (a fast event) fired User DiffgemmaStatus "stopped", without E5560."""
    assert "stopped" in result["status_events"], result["status_events"]
    assert result["status_events"][-1] == "ready", result["status_events"]
    assert "E5560" not in result["messages_after_restart"], result["messages_after_restart"]
    assert "status.lua" not in result["messages_after_restart"], result["messages_after_restart"]


def test_native_ghost_text_appears_and_tab_accepts_it(nvim_012, item_checkpoint, tmp_path) -> None:
    result = run_scenario(nvim_012, "accept", tmp_path, item_checkpoint)
    # The plugin narrows the server's item to an empty range at the cursor: Neovim draws it inline.
    _check_accept(result, "native", "inline")
    _check_health(result["health"], "vim.lsp.inline_completion is available")
    assert result["restarted_attached"] is True
    _check_restart_status(result)


def test_native_partial_accept_and_dismiss(nvim_012, item_checkpoint, tmp_path) -> None:
    _check_partial(run_scenario(nvim_012, "partial", tmp_path, item_checkpoint), "native")


def test_plugin_ghost_text_on_012_uses_inline_virtual_text(nvim_012, item_checkpoint, tmp_path) -> None:
    result = run_scenario(nvim_012, "accept", tmp_path, item_checkpoint, native=False, accept_only=True)
    _check_accept(result, "ghost", "inline")


def test_native_cycles_through_candidates(nvim_012, random_checkpoint, tmp_path) -> None:
    result = run_scenario(nvim_012, "cycle", tmp_path, random_checkpoint, settings={"candidates": 3, "seed": 1})
    _check_cycle(result, "native")


def test_native_mid_line_suggestion_keeps_the_rest_of_the_line(nvim_012, item_checkpoint, tmp_path) -> None:
    result = run_scenario(nvim_012, "midline", tmp_path, item_checkpoint, source_text=MIDLINE_SOURCE,
                          row=MIDLINE_ROW, col=MIDLINE_COL)
    assert result["mode"] == "native"
    line = result["before"]
    typed, after = line[:MIDLINE_COL], line[MIDLINE_COL:]
    assert after == ").end()"
    item = result["item"]  # as the server sent it: the line up to the cursor is replaced
    assert item["range"]["start"] == {"line": MIDLINE_ROW - 1, "character": 0}
    assert item["insertText"].startswith(typed)
    rest = item["insertText"][len(typed):]
    assert rest.strip() and "\n" not in rest, f"the test needs a one-line suggestion: {item!r}"
    ghost = result["ghost"]
    assert ghost["position"] == "inline", "an overlay hides the rest of the line"
    assert (ghost["row"], ghost["col"]) == (MIDLINE_ROW - 1, MIDLINE_COL)
    assert ghost["lines"] == [rest]
    # What the user sees: the suggestion between "(" and ")", the rest of the line after it.
    assert result["screen"] == typed + rest + after
    assert result["after"] == typed + rest + after
    assert result["cursor_after"] == [MIDLINE_ROW, len((typed + rest).encode())]


def test_native_typing_over_a_suggestion_drops_it(nvim_012, item_checkpoint, tmp_path) -> None:
    result = run_scenario(nvim_012, "mismatch", tmp_path, item_checkpoint)
    assert result["mode"] == "native"
    assert not result["ghost"]["lines"][0].startswith(result["typed"])
    typed_line = result["line"] + result["typed"]
    assert result["line_after_typing"] == typed_line
    assert result["ghost_right_after_typing"] is None, (
        f"a stale suggestion stayed on screen after typing {result['typed']!r}: {result['ghost_right_after_typing']}")
    assert result["screen_right_after_typing"].endswith('+ ' + result["typed"])
    # A fresh suggestion for the new text follows, without another keystroke.
    assert result["answers_after_typing"] >= 1
    item = result["fresh_item"]
    assert item["insertText"].startswith(typed_line)
    assert result["fresh"]["lines"] == item["insertText"][len(typed_line):].split("\n")
    assert (result["fresh"]["row"], result["fresh"]["col"]) == (HOLE_ROW - 1, len(typed_line.encode()))


def _check_loading(result: dict, mode: str) -> None:
    assert result["mode"] == mode
    assert result["state_at_insert"] == "loading"
    # The request of InsertEnter reached the server while it loaded the model, and got nothing.
    states, answers = result["answer_states"], result["answers"]
    assert states and states[0] == "loading", states
    first = answers[0]
    assert not (first.get("items") if isinstance(first, dict) else first), first
    # Then, with no keystroke, a suggestion once the model is ready.
    item, line = result["item"], result["line"]
    assert item["insertText"].startswith(line)
    assert result["ghost"]["lines"] == item["insertText"][len(line):].split("\n")


def test_native_suggestion_once_the_model_is_ready(nvim_012, item_checkpoint, tmp_path) -> None:
    _check_loading(run_scenario(nvim_012, "loading", tmp_path, item_checkpoint), "native")


def test_fallback_suggestion_once_the_model_is_ready(debian_nvim, item_checkpoint, tmp_path) -> None:
    _check_loading(run_scenario(debian_nvim, "loading", tmp_path, item_checkpoint), "ghost")


def _bad_commands(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Server commands that cannot serve, with what the plugin must say about each."""
    missing = tmp_path / "nowhere" / "diffgemma-lsp"
    not_executable = tmp_path / "not-executable-diffgemma-lsp"
    not_executable.write_text("#!/bin/sh\n", encoding="utf-8")
    not_executable.chmod(0o644)
    wrong = tmp_path / "not-a-language-server"
    wrong.write_text("#!/bin/sh\necho 'usage: not-a-language-server' >&2\nexit 3\n", encoding="utf-8")
    wrong.chmod(0o755)
    return {
        "missing": ([str(missing), "--stdio"], "is missing"),
        "not_executable": ([str(not_executable), "--stdio"], "is not executable"),
        "wrong": ([str(wrong), "--stdio"], "exited (code 3) before it initialized"),
    }


def _check_bad_command(result: dict, cmd: list[str], problem: str) -> None:
    status = result["status"]
    assert status["state"] == "error"
    assert cmd[0] in status["message"] and problem in status["message"], status
    # Shown to the user (vim.notify at ERROR level lands in :messages), naming the command.
    assert "diffgemma: " in result["messages"] and cmd[0] in result["messages"], result["messages"]
    assert problem in result["messages"], result["messages"]
    health = "\n".join(result["health"])
    assert "ERROR" in health
    assert "pip install diffgemma-lsp" not in health
    if problem != "exited (code 3) before it initialized":
        assert f"the server command cannot run: {cmd[0]} {problem}" in health, health
        assert "make install" in health and ".venv/bin/diffgemma-lsp" in health, health
        assert "not on PyPI" in health, health
        assert f"the server is not running: it cannot start, {cmd[0]} {problem}" in health, health
    else:
        assert f"{cmd[0]} --version exited with 3" in health, health
        assert "the server is not running: the server" in health and problem in health, health
    assert "it starts with the first buffer" not in health, health


def test_native_reports_a_missing_or_wrong_server_command(nvim_012, tmp_path) -> None:
    for name, (cmd, problem) in _bad_commands(tmp_path).items():
        case = tmp_path / name
        case.mkdir()
        _check_bad_command(run_scenario(nvim_012, "bad_cmd", case, cmd=cmd), cmd, problem)


def test_fallback_reports_a_missing_server_command(debian_nvim, tmp_path) -> None:
    cmd, problem = _bad_commands(tmp_path)["missing"]
    _check_bad_command(run_scenario(debian_nvim, "bad_cmd", tmp_path, cmd=cmd), cmd, problem)


REMOTE_URL = "http://gpu-box:8000/v1"
API_KEY = "sk-test-not-a-real-key-4242"


def _section(report: list[str], title: str) -> str:
    """The lines of one section of a :checkhealth report (0.7: "## title"; 0.10+: "title ~" headings)."""
    text = "\n".join(report)
    start = text.index(title)
    heading = re.compile(r"^(##|\S.*~$)", re.MULTILINE)
    following = heading.search(text, text.index("\n", start))
    return text[start:following.start() if following else len(text)]


def _check_remote(result: dict) -> None:
    # setup() knows the remote settings and sends them as given; a misspelt one names them.
    assert result["setup_error"] is None, result["setup_error"]
    assert 'unknown server setting "remoteModle"' in result["misspelt_error"]
    for name in ("apiKey", "remoteModel", "requestTimeout", "tlsVerify", "tokenizer"):
        assert name in result["known_settings"]
        assert name in result["misspelt_error"]
    sent = result["sent_settings"]
    assert {key: sent[key] for key in ("model", "apiKey", "remoteModel", "requestTimeout", "tlsVerify")} == {
        "model": REMOTE_URL, "apiKey": API_KEY, "remoteModel": "dg", "requestTimeout": 2.5, "tlsVerify": False}
    assert sent["tokenizer"].startswith("/") and sent["canvasNotifications"] is False

    # A remote error that comes and goes: one notification per new reason, and back to ready with no error left.
    notified = [entry["message"] for entry in result["notifications"]]
    assert notified == [f"diffgemma: {REMOTE_URL}: connection refused",
                        f"diffgemma: {REMOTE_URL}: HTTP 401 Unauthorized",
                        f"diffgemma: {REMOTE_URL}: HTTP 401 Unauthorized"], notified
    assert result["status_after_recovery"] == {"state": "ready", "message": f"remote {REMOTE_URL}"}
    refused = [line for line in result["status_log"] if "connection refused" in line]
    assert refused == [f"status: error ({REMOTE_URL}: connection refused)"] * 2, result["status_log"]

    reports = result["reports"]
    levels = {name: [level for level, _ in report] for name, report in reports.items()}
    texts = {name: "\n".join(message for _, message in report) for name, report in reports.items()}
    assert all(API_KEY not in text for text in texts.values()), "the health check never shows the key"
    assert levels["embedded"] == ["ok"] and "embedded model" in texts["embedded"]
    assert levels["missing_checkpoint"] == ["error"] and "is not a checkpoint directory" in texts["missing_checkpoint"]
    for name in ("https_with_key", "http_with_key", "http_with_env_key", "http_without_key", "localhost",
                 "loopback_ipv4", "loopback_ipv6", "tls_off", "tokenizer_dir"):
        assert levels[name][0] == "ok", (name, reports[name])
        assert "remote model at " in texts[name], (name, texts[name])
        assert "not a checkpoint directory" not in texts[name], (name, texts[name])
    assert 'served model "dg"' in texts["https_with_key"]
    assert "the only model its /v1/models lists" in texts["http_with_key"]
    assert "API key: from settings.apiKey" in texts["https_with_key"]
    assert "API key: from $DIFFGEMMA_API_KEY" in texts["http_with_env_key"]
    assert "no API key" in texts["http_without_key"]
    # An API key over http:// to another machine: a warning, wherever the key comes from.
    for name, source in (("http_with_key", "settings.apiKey"), ("http_with_env_key", "$DIFFGEMMA_API_KEY"),
                         ("http_user_info", "settings.apiKey")):
        assert levels[name].count("warn") == 1, (name, reports[name])
        assert f"the API key ({source}) travels unencrypted" in texts[name], texts[name]
    assert "http:// to gpu-box" in texts["http_user_info"], "the host, without user info, port or case"
    for name in ("https_with_key", "http_without_key", "localhost", "localhost_upper", "loopback_ipv4",
                 "loopback_ipv6", "tokenizer_dir", "tokenizer_file"):
        assert "warn" not in levels[name] and "error" not in levels[name], (name, reports[name])
    assert "the code sent for completion travels unencrypted" in texts["http_without_key"]
    assert levels["no_host"] == ["error"] and "names no host" in texts["no_host"]
    assert "warn" in levels["tls_off"] and "tlsVerify = false" in texts["tls_off"]
    assert "prompts are sent as token ids" in texts["tokenizer_dir"]
    assert "prompts are sent as token ids" in texts["tokenizer_file"]
    assert "no settings.tokenizer: prompts are sent as text" in texts["https_with_key"]
    assert "error" in levels["tokenizer_missing"] and "no tokenizer.json there" in texts["tokenizer_missing"]

    # :checkhealth itself: the URL is a remote model, not a missing checkpoint, and the key travels unencrypted.
    model = _section(result["health"], "diffgemma: model")
    assert f"remote model at {REMOTE_URL}" in model, model
    assert "not a checkpoint directory" not in model and "ERROR" not in model, model
    assert "WARNING" in model and "the API key (settings.apiKey) travels unencrypted" in model, model
    assert "https://" in model, "the advice: use https"
    assert "prompts are sent as token ids" in model, model
    assert API_KEY not in "\n".join(result["health"])


@pytest.mark.parametrize("nvim_fixture", ["debian_nvim", "nvim_012"])
def test_remote_model_settings_health_and_errors(nvim_fixture, request, tmp_path) -> None:
    missing = tmp_path / "nowhere" / "diffgemma-lsp"
    result = run_scenario(request.getfixturevalue(nvim_fixture), "remote", tmp_path, cmd=[str(missing), "--stdio"],
                          remote_url=REMOTE_URL, api_key=API_KEY)
    _check_remote(result)


def test_fetched_012_finds_its_bundled_parsers(nvim_012, tmp_path) -> None:
    # An install made before the fix has no usr/lib/lib/nvim; re-running the script repairs it.
    lib_dir = Path(nvim_012).resolve().parents[1] / "root" / "usr" / "lib" / "lib"
    if (lib_dir / "nvim").is_symlink():
        (lib_dir / "nvim").unlink()
        lib_dir.rmdir()
    fetched = subprocess.run(["bash", str(FETCH_NVIM_012)], capture_output=True, text=True, timeout=600)
    assert fetched.returncode == 0, fetched.stderr
    result = run_scenario(nvim_012, "parsers", tmp_path)
    assert result["edit_error"] is None, result["edit_error"]
    assert result["errmsg"] == "", result["errmsg"]
    assert result["filetype"] == "lua"
    assert result["parser_added"] is True
    assert result["parsed"] == "chunk"
    assert result["parser_files"], "no parser/lua.so on 'runtimepath'"


@pytest.mark.parametrize("nvim_fixture", ["debian_nvim", "nvim_012"])
def test_help_with_the_readme_manual_setup(nvim_fixture, request, tmp_path) -> None:
    result = run_scenario(request.getfixturevalue(nvim_fixture), "help", tmp_path, plugin_on_rtp=False)
    for entry in result["help"]:
        assert entry["error"] is None, entry
        assert entry["file"] == "diffgemma.txt", entry
        assert f"*{entry['subject']}*" in entry["line"], entry


HELP = PLUGIN / "doc" / "diffgemma.txt"
HELP_TAGS = PLUGIN / "doc" / "tags"


def test_shipped_help_tags_match_the_help_file() -> None:
    """doc/tags is committed (manual setups never run :helptags): it must list every tag of the help file."""
    # Vim's tag definitions: *tag* delimited by white space (or the line's ends).
    defined = set(re.findall(r"(?:^|(?<=\s))\*([^*\s|]+)\*(?=\s|$)", HELP.read_text(encoding="utf-8"), re.M))
    assert {"diffgemma", "diffgemma.txt", "diffgemma-setup", ":Diffgemma"} <= defined
    shipped = [line.split("\t") for line in HELP_TAGS.read_text(encoding="utf-8").splitlines()]
    assert all(fields[1:] == ["diffgemma.txt", f"/*{fields[0]}*"] for fields in shipped), shipped
    assert {fields[0] for fields in shipped} == defined
    assert [fields[0] for fields in shipped] == sorted(fields[0] for fields in shipped)


def test_install_advice_is_the_real_install() -> None:
    """diffgemma-lsp is not on PyPI: the plugin's help, health check and the README's Neovim section say how
    to install it from a clone."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    neovim_section = readme[readme.index("### Neovim"):readme.index("### Emacs")]
    health = (PLUGIN / "lua" / "diffgemma" / "health.lua").read_text(encoding="utf-8")
    for name, text in {"help": HELP.read_text(encoding="utf-8"), "health": health, "README": neovim_section}.items():
        assert "pip install diffgemma-lsp" not in text, name
        assert ".venv/bin/diffgemma-lsp" in text, name
    for text in (HELP.read_text(encoding="utf-8"), health):
        assert "make install" in text and "pip install -e ." in text
