"""The server as users run it: serving mode compiling its step at load (the other server tests run it eagerly)."""

from __future__ import annotations

import time

import pytest

from checkpoints import cached_checkpoint
from lsp_support import inline, open_document, start_client, stats, stop_client

pytestmark = pytest.mark.asyncio

SOURCE = "def total(items):\n    result = 0\n    for item in items:\n        result += item\n    return result\n"
LINES = SOURCE.split("\n")


async def test_completions_are_answered_while_the_step_compiles_and_after(tmp_path, tmp_path_factory, monkeypatch):
    """The compile at load runs in a child process; completions asked meanwhile are answered (eagerly), the
    compiled step then serves them, and its package lands in the compile cache."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compile-cache"))  # the server inherits it
    checkpoint = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random")
    client = await start_client(str(checkpoint), settings={"compile": True, "documentCandidates": 0})
    try:
        uri = "file:///compiling.py"
        open_document(client, uri, SOURCE)
        assert (await stats(client))["compilation"]["compiling"]  # started by the warm-up at load
        asked, deadline = 0, time.monotonic() + 300
        while (await stats(client))["compilation"]["compiling"]:
            assert time.monotonic() < deadline, "the step did not compile in 5 minutes"
            line = asked % 4
            await inline(client, uri, line, len(LINES[line]) - asked // 4 % 3)
            asked += 1
        before = await stats(client)
        assert asked > 0 and before["modelRuns"] > 0
        assert before["compilation"]["compiledShapes"] == 1 and before["compilation"]["compileSeconds"][0] > 0

        await inline(client, uri, 4, len(LINES[4]))  # a position not asked before: the compiled step
        after = await stats(client)
        assert after["modelRuns"] == before["modelRuns"] + 1
        assert after["compilation"]["compiledShapes"] == 1  # no other shape met
        assert list((tmp_path / "compile-cache" / "aot-steps").glob("step-*.pt2"))
    finally:
        await stop_client(client)
