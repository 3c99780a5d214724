"""The language server with a remote model: a real diffgemma-serve process over loopback HTTP.

An editor pointed at ``http://127.0.0.1:PORT/v1`` must get the completions it gets in-process (same checkpoint,
same seed), the canvas streamed step by step, cancellation that frees the remote engine, and a clear status, no
crash, and recovery when the remote server dies and comes back or refuses the key.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import pytest_asyncio
from lsprotocol import types
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from checkpoints import cached_checkpoint
from http_support import serve_in_thread, start_serve, stop_process
from lsp_server.remote import BACKOFF_FIRST_S
from lsp_support import inline, inline_params, open_document, start_client, stats, stop_client, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

LINE = "    total = "
SOURCE = f"def add(a, b):\n{LINE}\n    return total\n"
URI = "file:///remote.py"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random", seed=5))


@pytest.fixture(scope="module")
def serve(checkpoint):
    process, url = start_serve(checkpoint)
    yield url
    stop_process(process)


async def completion_and_canvases(client, msg_id: str) -> tuple[list[str], list[str]]:
    open_document(client, URI, SOURCE)
    result = await asyncio.wrap_future(client.protocol.send_request(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(URI, 1, len(LINE)), msg_id=msg_id))
    canvases = [c["text"] for c in client.canvases if c["requestId"] == msg_id]
    return [item.insert_text for item in result.items], canvases


async def test_remote_completions_equal_in_process_ones(checkpoint, serve):
    settings = {"seed": 11, "candidates": 2, "maxNewTokens": 32, "canvasNotifications": True}
    local = await start_client(checkpoint, settings=settings)
    expected, expected_canvases = await completion_and_canvases(local, "local")
    await stop_client(local)
    assert len(expected_canvases) == 16  # two canvases of eight steps, streamed as they converge

    by_ids = await start_client(serve + "/v1", settings={**settings, "tokenizer": checkpoint})
    assert "token-id prompts" in by_ids.statuses[-1]["message"]
    got, canvases = await completion_and_canvases(by_ids, "ids")
    assert (got, canvases) == (expected, expected_canvases)  # every denoising step, from /v1/canvas
    await stop_client(by_ids)

    by_text = await start_client(serve + "/v1", settings={**settings, "canvasNotifications": False})
    assert "fim text prompts" in by_text.statuses[-1]["message"]  # diffgemma-serve said which layout
    got, canvases = await completion_and_canvases(by_text, "text")
    assert got == expected and canvases == []  # /v1/completions, as with vLLM
    await stop_client(by_text)


async def test_cancel_request_mid_stream_frees_the_remote_engine(tmp_path_factory):
    slow = str(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random", denoising_steps=64))
    process, url = start_serve(slow)
    try:
        client = await start_client(url + "/v1", settings={"tokenizer": slow, "maxNewTokens": 256,
                                                            "canvasNotifications": True})
        open_document(client, URI, SOURCE)
        request = client.protocol.send_request(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(URI, 1, len(LINE)), msg_id="long")
        await wait_until(lambda: any(c["requestId"] == "long" for c in client.canvases), "the first canvas")
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="long"))
        with pytest.raises(Exception, match="cancel"):
            await asyncio.wrap_future(request)
        started = time.monotonic()
        async with httpx.AsyncClient() as http:
            while (health := (await http.get(url + "/health")).json())["busy"] or health["cancelled"] < 1:
                assert time.monotonic() - started < 5, f"the remote engine still runs: {health}"
                await asyncio.sleep(0.02)
        steps_seen = len([c for c in client.canvases if c["requestId"] == "long"])
        assert steps_seen < 16 * 64  # it stopped far before the run's 16 canvases of 64 steps
        # One canvas for the next request: a whole 16-canvas run of this model takes about the request timeout.
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"maxNewTokens": 16}))
        await fresh_request(client, 0)
        assert await served_completions(url) == 1  # the next request is served
        await stop_client(client)
    finally:
        stop_process(process)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def fresh_request(client, number: int) -> types.InlineCompletionList:
    """A completion the result cache cannot answer: each number is another document text."""
    uri = f"file:///remote-{number}.py"
    open_document(client, uri, f"# request {number}\n{SOURCE}")
    return await inline(client, uri, 2, len(LINE), invoked=True)


async def served_completions(url: str) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(url + "/health")).json()["completed"]


async def test_remote_down_then_back_reports_and_recovers(checkpoint):
    port = free_port()
    process, url = start_serve(checkpoint, port=port)
    client = await start_client(url + "/v1", settings={"tokenizer": checkpoint, "seed": 1})
    await fresh_request(client, 0)
    assert await served_completions(url) == 1
    stop_process(process)

    seen = len(client.statuses)
    assert list((await fresh_request(client, 1)).items) == []  # an empty completion, not an error response
    await wait_until(lambda: any(s["state"] == "error" for s in client.statuses[seen:]), "an error status")
    error = next(s for s in client.statuses[seen:] if s["state"] == "error")
    # Usually the connection is refused; a pooled keep-alive connection may instead see the server go away.
    assert error["message"].startswith(f"{url}/v1: ") and any(
        reason in error["message"] for reason in ("cannot connect", "RemoteProtocolError", "ReadError"))
    errors = (await stats(client))["errors"]
    for number in range(2, 7):  # inside the backoff: each fails at once
        assert list((await fresh_request(client, number)).items) == []
    assert (await stats(client))["errors"] == errors + 5

    process, _ = start_serve(checkpoint, port=port)
    try:
        seen = len(client.statuses)
        deadline = time.monotonic() + 20
        number = 7
        while not any(s["state"] == "ready" for s in client.statuses[seen:]):
            assert time.monotonic() < deadline, f"no recovery: {client.statuses[seen:]}"
            await fresh_request(client, number)
            number += 1
            await asyncio.sleep(BACKOFF_FIRST_S)
        assert await served_completions(url) >= 1  # the new process answered
        await stop_client(client)
    finally:
        stop_process(process)


async def test_a_wrong_api_key_is_a_status_error_until_it_is_fixed(checkpoint):
    process, url = start_serve(checkpoint, "--api-key", "right-key")
    try:
        client = await start_client(url + "/v1", settings={"tokenizer": checkpoint, "apiKey": "wrong-key"},
                                    wait_for="error")
        error = next(s for s in client.statuses if s["state"] == "error")
        assert "refused the API key (HTTP 401" in error["message"] and "wrong-key" not in error["message"]
        assert list((await fresh_request(client, 0)).items) == []
        seen = len(client.statuses)
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffgemma": {"apiKey": "right-key"}}))
        await wait_until(lambda: any(s["state"] == "ready" for s in client.statuses[seen:]), "ready with the key")
        await fresh_request(client, 1)
        assert await served_completions(url) == 1
        await stop_client(client)
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def broken_server():
    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "broken", "object": "model"}]})

    async def completions(request):
        return JSONResponse({"error": {"message": "CUDA out of memory"}}, status_code=500)

    app = Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield url + "/v1"


async def test_http_500_gives_an_empty_completion_and_a_status(broken_server):
    client = await start_client(broken_server, settings={"requestTimeout": 2})
    assert "canvases streamed" in client.statuses[-1]["message"]  # no diffgemma extension: vLLM's stream
    assert list((await fresh_request(client, 0)).items) == []
    await wait_until(lambda: client.statuses[-1]["state"] == "error", "an error status")
    assert client.statuses[-1]["message"] == f"{broken_server}: HTTP 500: CUDA out of memory"
    assert (await stats(client))["errors"] >= 1  # and the server still answers
    assert await stop_client(client) == 0
