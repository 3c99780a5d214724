"""The VS Code extension's Node tests (editor_clients/vscode), run from pytest.

* test/unit: the extension's own logic (settings, status bar and its menu, snooze, per-language enable, commands,
  session, canvas preview) against a stubbed ``vscode`` module, which only exists inside VS Code.
* test/package: in a fresh copy of the extension (sources plus the installed node_modules, no build output),
  ``npm test`` passes with nothing built beforehand, and ``npm run package`` writes a .vsix whose bundle is
  minified and names no source map the package lacks.
* test/protocol: the messages vscode-languageclient sends for the extension, against the real diffgemma-lsp
  started with this interpreter on a tiny checkpoint.

The extension is built first (``npm ci`` when node_modules is missing, then ``npm run build``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import build_checkpoint

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
