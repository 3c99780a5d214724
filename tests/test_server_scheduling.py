"""Scheduling: supersession of older requests, $/cancelRequest mid-run, and a loop that stays responsive."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from checkpoints import cached_checkpoint
from lsp_support import inline_params, insert, open_document, start_client, stats, stop_client, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Every run takes 4 canvases x 64 denoising steps (about a second here), far longer than a burst of requests.
# the model's candidate only, its steps streamed (the cancellation test watches them)
SETTINGS = {"denoisingSteps": 64, "maxNewTokens": 64, "documentCandidates": 0, "canvasNotifications": True}
LINE = "        result += "
SOURCE = f"def total(items):\n    result = 0\n    for item in items:\n{LINE}\n    return result\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(tmp_path_factory):
    checkpoint = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant")
    client = await start_client(str(checkpoint), settings=SETTINGS, editor="neovim")
    yield client
    await stop_client(client)


def send_inline(client, uri: str, line: int, character: int, msg_id: str | None = None) -> asyncio.Future:
    """Send now (not when awaited), as an editor does while the user types."""
    return asyncio.wrap_future(client.protocol.send_request(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, line, character), msg_id=msg_id))


async def test_storm_only_the_newest_request_gets_an_answer(client):
    uri = "file:///storm.py"
    open_document(client, uri, SOURCE)
    before = await stats(client)
    futures = []
    for typed in range(50):  # type "y" (never what the model suggests) and ask, 50 times in a burst
        insert(client, uri, 3, len(LINE) + typed, "y", version=2 + typed)
        futures.append(send_inline(client, uri, 3, len(LINE) + typed + 1, msg_id=f"storm-{typed}"))
    asked = time.monotonic()
    await stats(client)  # queued behind the whole burst
    answered_in = time.monotonic() - asked
    model_still_running = not futures[-1].done()
    # (the worker may not have started the newest request when the loop answered: ask again once it streams)
    await wait_until(lambda: any(c["requestId"] == "storm-49" for c in client.canvases), "the newest run's steps")
    during = await stats(client)
    results = await asyncio.gather(*futures)
    after = await stats(client)

    # The loop got through the burst and answered without waiting for the model (a run here takes ~1 s).
    assert during["status"] == "busy" and model_still_running and answered_in < 2.0
    assert [len(result.items) for result in results] == [0] * 49 + [1]
    assert results[-1].items[0].insert_text == LINE + "y" * 50 + "x" * 64
    assert after["requests"] - before["requests"] == 50
    assert after["superseded"] - before["superseded"] == 49
    assert after["cancellations"] - before["cancellations"] == 49
    assert after["modelRuns"] - before["modelRuns"] <= 50


async def test_cancel_request_stops_the_model_within_a_step(client):
    uri = "file:///cancel.py"
    open_document(client, uri, SOURCE)
    before = await stats(client)
    future = send_inline(client, uri, 3, len(LINE), msg_id="cancel-me")
    await wait_until(lambda: sum(c["requestId"] == "cancel-me" for c in client.canvases) >= 3, "three steps")
    streamed = sum(c["requestId"] == "cancel-me" for c in client.canvases)
    statuses = len(client.statuses)
    client.cancel_request(types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcRequestCancelled):
        await future
    # Back to idle long before the ~250 remaining steps could have run.
    await wait_until(lambda: any(s["state"] == "ready" for s in client.statuses[statuses:]), "idle", timeout=0.5)
    await asyncio.sleep(0.1)
    # Steps already streamed while the cancel was on its way still arrive; then nothing (test_infill checks
    # that the engine stops within one step of being asked).
    assert sum(c["requestId"] == "cancel-me" for c in client.canvases) <= streamed + 20
    after = await stats(client)
    assert after["cancellations"] - before["cancellations"] == 1
    assert after["superseded"] == before["superseded"]
    assert after["modelRuns"] - before["modelRuns"] == 1


async def test_requests_for_different_documents_do_not_supersede(client):
    first, second = "file:///first.py", "file:///second.py"
    open_document(client, first, SOURCE)
    open_document(client, second, SOURCE.replace("total", "subtotal"))
    results = await asyncio.gather(send_inline(client, first, 3, len(LINE)), send_inline(client, second, 3, len(LINE)))
    assert [len(result.items) for result in results] == [1, 1]
