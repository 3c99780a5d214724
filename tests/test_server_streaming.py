"""Streaming and status: diffgemma/canvas per step, $/progress on the client's token, model status and load progress."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from lsprotocol import types

from checkpoints import cached_checkpoint
from lsp_support import inline_params, open_document, start_client, stats, stop_client, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

LINE = "        result += "
SOURCE = f"def total(items):\n    result = 0\n    for item in items:\n{LINE}\n    return result\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(tmp_path_factory):
    checkpoint = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant")
    # two canvases of 8 steps, streamed (canvasNotifications is opt-in)
    client = await start_client(str(checkpoint), settings={"maxNewTokens": 32, "canvasNotifications": True})
    yield client
    await stop_client(client)


def request(client, uri: str, msg_id: str, token: str | None = None) -> asyncio.Future:
    return asyncio.wrap_future(client.protocol.send_request(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 3, len(LINE), token=token), msg_id=msg_id))


async def test_model_load_reports_status_and_progress(client):
    assert [s["state"] for s in client.statuses[:2]] == ["loading", "ready"]
    assert "canvas 16" in client.statuses[1]["message"]
    (token,) = [token for token in client.progress_reports if str(token).startswith("diffgemma-load-")]
    kinds = [report.kind for report in client.progress_reports[token]]
    assert kinds == ["begin", "end"]


async def test_canvas_notifications_arrive_in_step_order(client):
    uri = "file:///canvas.py"
    open_document(client, uri, SOURCE)
    result = await request(client, uri, "canvas-1")
    canvases = [c for c in client.canvases if c["requestId"] == "canvas-1"]
    assert [c["step"] for c in canvases] == list(range(1, 17))  # two canvases of eight steps
    assert [c["block"] for c in canvases] == [0] * 8 + [1] * 8
    assert all(c["uri"] == uri and c["position"] == {"line": 3, "character": len(LINE)} for c in canvases)
    assert all(c["maxSteps"] == 8 and 0.0 <= c["acceptedFraction"] <= 1.0 for c in canvases)
    assert canvases[-1]["text"] == "x" * 32 and result.items[0].insert_text == LINE + "x" * 32


async def test_status_is_busy_while_the_model_runs(client):
    uri = "file:///busy.py"
    open_document(client, uri, SOURCE)
    seen = len(client.statuses)  # the previous run's "ready" may still be on its way
    await request(client, uri, "busy-1")
    await wait_until(lambda: [s["state"] for s in client.statuses[seen:]][-2:] == ["busy", "ready"],
                     "busy, then ready")


async def test_progress_on_the_clients_work_done_token(client):
    uri = "file:///progress.py"
    open_document(client, uri, SOURCE)
    client.progress_reports["my-token"] = []  # the client created this token itself
    await request(client, uri, "progress-1", token="my-token")
    reports = client.progress_reports["my-token"]
    assert reports[0].kind == "begin" and reports[-1].kind == "end"
    steps = reports[1:-1]
    assert len(steps) == 16 and all(report.kind == "report" for report in steps)
    assert [report.percentage for report in steps[:8]] == sorted(report.percentage for report in steps[:8])
    assert steps[7].percentage == 100


async def test_canvas_notifications_can_be_turned_off(client):
    uri = "file:///quiet.py"
    open_document(client, uri, SOURCE)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"canvasNotifications": False}))
    runs = (await stats(client))["modelRuns"]
    result = await request(client, uri, "quiet-1")
    assert result.items and not [c for c in client.canvases if c["requestId"] == "quiet-1"]
    assert (await stats(client))["modelRuns"] == runs + 1
