"""Bad input never stops the server: error responses or empty results, with window/logMessage and showMessage."""

from __future__ import annotations

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams, JsonRpcMethodNotFound

import engine
from checkpoints import cached_checkpoint
from lsp_support import (
    inline, insert, open_document, send_bytes, send_raw_notification, send_raw_request, start_client, stats,
    stop_client, wait_until,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

LINE = "        result += "
SOURCE = f"def total(items):\n    result = 0\n    for item in items:\n{LINE}\n    return result\n"


def logged(client, text: str, level: types.MessageType | None = None) -> bool:
    return any(text in m.message and (level is None or m.type == level) for m in client.log_messages)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant"))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(checkpoint):
    client = await start_client(checkpoint, settings={"enabledLanguages": ["python"]})
    yield client
    await stop_client(client)


async def serves(client) -> bool:
    """The server still completes: a fresh document gets a suggestion."""
    uri = f"file:///alive_{len(client.log_messages)}_{len(client.statuses)}.py"
    open_document(client, uri, SOURCE)
    return bool((await inline(client, uri, 3, len(LINE))).items)


async def test_malformed_params_get_an_invalid_params_response(client):
    bad = {"textDocument": {"uri": 5}, "position": {"line": "three", "character": 0}, "context": {}}
    with pytest.raises(JsonRpcInvalidParams, match="invalid params for textDocument/inlineCompletion"):
        await send_raw_request(client, "bad-params-1", types.TEXT_DOCUMENT_INLINE_COMPLETION, bad)
    with pytest.raises(JsonRpcInvalidParams, match="invalid params for textDocument/completion"):
        await send_raw_request(client, "bad-params-2", types.TEXT_DOCUMENT_COMPLETION, [1, 2, 3])
    assert await serves(client)


async def test_garbage_and_bad_notifications_are_logged(client):
    seen = len(client.log_messages)
    send_bytes(client, b"{this is not json")
    send_raw_notification(client, types.TEXT_DOCUMENT_DID_OPEN, {"textDocument": {"uri": "file:///x.py", "text": 5}})
    insert(client, "file:///never_opened.py", 0, 0, "x", version=2)
    with pytest.raises(JsonRpcMethodNotFound):
        await send_raw_request(client, "unknown-1", "diffgemma/noSuchMethod", {})
    await wait_until(lambda: len(client.log_messages) >= seen + 3, "the problems to be logged")
    assert logged(client, "Expecting property name", types.MessageType.Error)  # the body that is not JSON
    assert logged(client, "change ignored: document is not open: file:///never_opened.py", types.MessageType.Warning)
    assert await serves(client)


async def test_unknown_document_gets_an_empty_result(client):
    result = await inline(client, "file:///not_open.py", 0, 0)
    assert not result.items
    assert logged(client, "document is not open: file:///not_open.py", types.MessageType.Warning)


async def test_position_out_of_range_gets_an_error(client):
    uri = "file:///range.py"
    open_document(client, uri, SOURCE)
    with pytest.raises(JsonRpcInvalidParams, match="invalid position .*line 99 does not exist"):
        await inline(client, uri, 99, 0)
    assert await serves(client)


async def test_a_character_past_the_end_of_the_line_completes_at_its_end(client):
    """LSP 3.18: a character greater than the line length defaults back to the line length."""
    uri = "file:///past_end.py"
    open_document(client, uri, SOURCE)
    line = SOURCE.splitlines()[0]
    past, at_end = await inline(client, uri, 0, 500), await inline(client, uri, 0, len(line))
    assert [i.insert_text for i in past.items] == [i.insert_text for i in at_end.items]
    assert await serves(client)


async def test_language_not_enabled_gets_an_empty_result(client):
    uri = "file:///main.go"
    open_document(client, uri, "package main\n\nfunc main() {\n\t\n}\n", language_id="go")
    assert not (await inline(client, uri, 3, 1)).items
    assert logged(client, "language 'go' is not enabled")


async def test_invalid_change_closes_the_document(client):
    uri = "file:///broken_change.py"
    open_document(client, uri, SOURCE)
    insert(client, uri, 40, 0, "x", version=2)  # line 40 does not exist
    assert not (await inline(client, uri, 3, len(LINE))).items
    assert logged(client, f"invalid change to {uri}", types.MessageType.Error)
    open_document(client, uri, SOURCE, version=3)  # the editor opens it again: served again
    assert (await inline(client, uri, 3, len(LINE))).items


async def test_engine_failure_costs_one_empty_result(tmp_path_factory):
    # The model has 300 embeddings, its tokenizer 512 tokens: the engine rejects the prompt (a real engine error).
    broken = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant", model_vocab_size=300)
    client = await start_client(str(broken))
    uri = "file:///engine_error.py"
    open_document(client, uri, SOURCE)
    for _ in range(2):
        assert not (await inline(client, uri, 3, len(LINE))).items
    failure = "model run for file:///engine_error.py failed: ValueError: prompt token ids must be in [0, 300)"
    assert logged(client, failure, types.MessageType.Error)
    assert (await stats(client))["errors"] == 2
    client.exit(None)  # exit without shutdown: exit code 1
    await client._server.wait()
    assert client._server.returncode == 1
    await client.stop()


async def test_model_that_does_not_load_then_one_that_does(checkpoint, tmp_path):
    client = await start_client(str(tmp_path / "no_such_checkpoint"), wait_for="error")
    (error,) = [s for s in client.statuses if s["state"] == "error"]
    assert "not a checkpoint directory" in error["message"]
    await wait_until(lambda: client.messages, "a showMessage")
    shown = client.messages[0]
    assert shown.type == types.MessageType.Error and "not a checkpoint directory" in shown.message
    uri = "file:///before_ready.py"
    open_document(client, uri, SOURCE)
    assert not (await inline(client, uri, 3, len(LINE))).items  # no model: empty, not an error
    assert (await stats(client))["status"] == "error"

    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"model": checkpoint}))
    await wait_until(lambda: client.statuses[-1]["state"] == "ready", "the new model")
    assert (await inline(client, uri, 3, len(LINE))).items
    await stop_client(client)


async def test_default_model_is_the_packaged_embedded_one():
    client = await start_client(None)  # no --model: the embedded one
    (ready,) = [s for s in client.statuses if s["state"] == "ready"]
    assert ready["model"] == "embedded" and "embedded_model" in ready["message"]
    uri = "file:///default_model.py"
    open_document(client, uri, SOURCE)
    await inline(client, uri, 3, len(LINE))  # answers (with whatever the small model makes of it)
    assert (await stats(client))["modelRuns"] == 1
    await stop_client(client)


async def test_missing_embedded_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(engine.engine, "EMBEDDED_MODEL_DIR", tmp_path / "embedded_model")
    with pytest.raises(engine.CheckpointError, match=r"embedded model is not installed.*--model PATH"):
        engine.resolve_model_path("embedded")
