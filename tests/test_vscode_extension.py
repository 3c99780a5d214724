"""The VS Code extension's Node tests (editor_clients/vscode), run from pytest.

* test/unit: the extension's own logic (settings, status bar and its menu, snooze, per-language enable, commands,
  session, canvas preview) against a stubbed ``vscode`` module, which only exists inside VS Code.
* test/package: in a fresh copy of the extension (sources plus the installed node_modules, no build output),
  ``npm test`` passes with nothing built beforehand, and ``npm run package`` writes a .vsix whose bundle is
  minified and names no source map the package lacks.
* test/protocol: the messages vscode-languageclient sends for the extension, against the real diffgemma-lsp
  started with this interpreter on a tiny checkpoint.
* Here: the settings the extension contributes and sends (its compiled settings module, run with node) are the
  server's ``Settings`` by wire name, and the server accepts what the extension sends for them.

The extension is built first (``npm ci`` when node_modules is missing, then ``npm run build``).
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

from checkpoints import build_checkpoint
from lsp_server.settings import Settings, apply_changes, wire_name

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "editor_clients" / "vscode"
MINIMUM_NODE = 20


def _run(command: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=EXTENSION, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def node() -> str:
    """node, with the extension built."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"the VS Code extension tests need Node.js {MINIMUM_NODE}+ and npm, which are not installed")
    major = int(re.match(r"v(\d+)", _run([node, "--version"], 30).stdout).group(1))
    if major < MINIMUM_NODE:
        pytest.skip(f"the VS Code extension tests need Node.js {MINIMUM_NODE}+; this machine has {major}")
    if not (EXTENSION / "node_modules").is_dir():
        installed = _run([npm, "ci", "--no-audit", "--no-fund"], 900)
        if installed.returncode != 0:
            pytest.skip("npm ci could not install the extension's dependencies (needs the npm registry): "
                        + installed.stderr.strip()[-800:])
    built = _run([npm, "run", "build"], 300)
    assert built.returncode == 0, f"npm run build failed:\n{built.stdout}\n{built.stderr}"
    return node


def _node_test_counts(output: str) -> tuple[int, int]:
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert passed and failed, f"no node:test summary in:\n{output}"
    return int(passed.group(1)), int(failed.group(1))


def test_extension_logic_against_stubbed_vscode(node: str) -> None:
    completed = _run([node, "--test", "out/test/unit/"], 300)
    passed, failed = _node_test_counts(completed.stdout)
    assert completed.returncode == 0 and failed == 0, completed.stdout + completed.stderr
    assert passed >= 45


def test_extension_packaging_from_a_fresh_checkout(node: str) -> None:
    completed = _run([node, "--test", "out/test/package/"], 600)
    passed, failed = _node_test_counts(completed.stdout)
    assert completed.returncode == 0 and failed == 0, completed.stdout + completed.stderr
    assert passed == 2, completed.stdout


def test_extension_protocol_against_real_server(node: str, tmp_path: Path) -> None:
    checkpoint = build_checkpoint(tmp_path / "checkpoint", kind="constant")
    env = {**os.environ, "DIFFGEMMA_TEST_PYTHON": sys.executable, "DIFFGEMMA_TEST_MODEL": str(checkpoint)}
    completed = _run([node, "--test", "out/test/protocol/"], 300, env=env)
    passed, failed = _node_test_counts(completed.stdout)
    assert completed.returncode == 0 and failed == 0, completed.stdout + completed.stderr
    assert passed == 6


# package.json settings that are the extension's own (not sent) or sent under another name.
CLIENT_ONLY_SETTINGS = {"enable", "server.command", "server.args"}
RENAMED_SETTINGS = {"showDenoisingCanvas": "canvasNotifications"}
# Server settings VS Code users do not get a setting for (the Neovim plugin and initializationOptions have them).
SERVER_ONLY_SETTINGS = {"seed", "cacheSize"}
REMOTE_SETTINGS = {"apiKey", "remoteModel", "requestTimeout", "tlsVerify", "tokenizer"}

# Runs the compiled src/settings.ts (no vscode import) on package.json's defaults and on the cases in argv[1].
_SETTINGS_SCRIPT = r"""
const { serverSettings } = require('./out/src/settings.js');
const manifest = require('./package.json');
const reader = (values) => ({ get: (key) => values[key] });
const declared = manifest.contributes.configuration.properties;
const defaults = Object.fromEntries(Object.entries(declared).map(([key, schema]) => [key.slice('diffgemma.'.length), schema.default]));
const cases = JSON.parse(process.argv[1]);
process.stdout.write(JSON.stringify({
  declared: Object.keys(declared),
  defaults: serverSettings(reader(defaults)),
  cases: cases.map(([values, storedKey]) => serverSettings(reader({ ...defaults, ...values }), storedKey ?? undefined)),
}));
"""


def _extension_settings(node: str, cases: list) -> dict:
    completed = _run([node, "-e", _SETTINGS_SCRIPT, json.dumps(cases)], 60)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_contributed_settings_are_the_servers_settings(node: str) -> None:
    wire_names = {wire_name(name) for name in Settings.__dataclass_fields__}
    assert REMOTE_SETTINGS <= wire_names, "the server's remote settings changed: update this test and the extension"
    result = _extension_settings(node, [])
    declared = {key.removeprefix("diffgemma.") for key in result["declared"]}
    sent_by_name = {RENAMED_SETTINGS.get(key, key) for key in declared - CLIENT_ONLY_SETTINGS}
    assert sent_by_name == wire_names - SERVER_ONLY_SETTINGS, (
        f"contributed but not server settings: {sorted(sent_by_name - wire_names)}; "
        f"server settings without a contributed one: {sorted(wire_names - SERVER_ONLY_SETTINGS - sent_by_name)}")
    assert set(result["defaults"]) == wire_names - SERVER_ONLY_SETTINGS
    assert REMOTE_SETTINGS <= declared

    # package.json's defaults, as the extension sends them, are the server's own (the canvas preview is drawn
    # only when asked, as the server streams it only when asked).
    settings, problems = apply_changes(Settings(), {"diffgemma": result["defaults"]})
    assert problems == []
    assert settings == Settings()


def test_remote_settings_reach_the_server_as_it_expects_them(node: str) -> None:
    remote = {"model": "https://gpu-box:8000/v1", "apiKey": "sk-from-settings", "remoteModel": "dg-small",
              "requestTimeout": 2.5, "tlsVerify": False, "tokenizer": "/models/dg/tokenizer.json"}
    cases = [
        [remote, None],
        [remote, "sk-from-secret-storage"],  # the "Set API Key" command's key wins over the setting
        [{"model": "http://127.0.0.1:8000/v1", "apiKey": "", "remoteModel": "  ", "tokenizer": ""}, None],
        [{"requestTimeout": 0}, None],
    ]
    sent = _extension_settings(node, cases)["cases"]

    settings, problems = apply_changes(Settings(), {"diffgemma": sent[0]})
    assert problems == []
    assert (settings.model, settings.api_key, settings.remote_model, settings.request_timeout, settings.tls_verify,
            settings.tokenizer) == ("https://gpu-box:8000/v1", "sk-from-settings", "dg-small", 2.5, False,
                                    "/models/dg/tokenizer.json")
    assert "sk-from-settings" not in repr(settings), "the server never shows the key"

    settings, problems = apply_changes(Settings(), {"diffgemma": sent[1]})
    assert problems == [] and settings.api_key == "sk-from-secret-storage"

    # Blank strings from the settings editor are sent as null, which the server takes as "not set".
    assert (sent[2]["apiKey"], sent[2]["remoteModel"], sent[2]["tokenizer"]) == (None, None, None)
    settings, problems = apply_changes(Settings(), {"diffgemma": sent[2]})
    assert problems == []
    assert (settings.api_key, settings.remote_model, settings.tokenizer) == (None, None, None)

    # A timeout outside (0, 3600] is refused by the server, which keeps the previous one.
    settings, problems = apply_changes(Settings(request_timeout=7.0), {"diffgemma": sent[3]})
    assert settings.request_timeout == 7.0
    assert [problem for problem in problems if problem.startswith("'requestTimeout'")], problems
