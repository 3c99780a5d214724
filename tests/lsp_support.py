"""Driving the real server over stdio with pytest-lsp's client, as VS Code or Neovim would."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

# Eager serving steps: a background compilation in every test server would take a core for a minute.
SERVER_COMMAND = [sys.executable, "-m", "lsp_server", "--no-compile"]
# pytest-lsp's presets predate inline completion; VS Code (vscode-languageclient 10) and Neovim 0.12 have it.
PRESETS = {"vscode": "visual-studio-code", "neovim": "neovim"}


def capabilities(editor: str, inline: bool = True, encodings: list[str] | None = None) -> types.ClientCapabilities:
    caps = client_capabilities(PRESETS[editor])
    if inline:
        caps.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    if encodings is not None:
        caps.general = types.GeneralClientCapabilities(position_encodings=encodings)
    return caps


async def start_client(
    model: str | None = None,
    settings: dict[str, Any] | None = None,
    editor: str = "vscode",
    inline: bool = True,
    encodings: list[str] | None = None,
    wait_for: str | None = "ready",
    extra_args: tuple[str, ...] = (),
) -> LanguageClient:
    """Start ``diffgemma-lsp`` (``--model`` if given), initialize it and wait for the model status ``wait_for``.

    The client records ``diffgemma/canvas`` and ``diffgemma/status`` notifications in ``client.canvases`` and
    ``client.statuses``.
    """
    command = [*SERVER_COMMAND, *(("--model", model) if model else ()), *extra_args]
    client = await ClientServerConfig(server_command=command).start()
    client.canvases, client.statuses = [], []
    client.feature("diffgemma/canvas")(lambda ls, params: ls.canvases.append(plain(params)))
    client.feature("diffgemma/status")(lambda ls, params: ls.statuses.append(plain(params)))
    client.init_result = await client.initialize_session(types.InitializeParams(
        capabilities=capabilities(editor, inline, encodings), initialization_options=settings))
    if wait_for is not None:
        await wait_until(lambda: any(s["state"] == wait_for for s in client.statuses),
                         f"status {wait_for}: got {client.statuses}")
    return client


async def stop_client(client: LanguageClient) -> int | None:
    """Shut down and exit the server; returns its exit code."""
    await client.shutdown_session()
    await client.stop()
    return client._server.returncode if client._server else None


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def open_document(client: LanguageClient, uri: str, text: str, language_id: str = "python", version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=version, text=text)))


def edit(client: LanguageClient, uri: str, line: int, start: int, end: int, text: str, version: int) -> None:
    """An incremental change replacing characters ``start..end`` of ``line`` by ``text``."""
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=line, character=start),
                              end=types.Position(line=line, character=end)), text=text)]))


def insert(client: LanguageClient, uri: str, line: int, character: int, text: str, version: int) -> None:
    """An incremental change inserting ``text`` at (line, character)."""
    edit(client, uri, line, character, character, text, version)


def inline_params(uri: str, line: int, character: int, invoked: bool = False,
                  token: str | None = None) -> types.InlineCompletionParams:
    kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=kind),
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        work_done_token=token,
    )


async def inline(client: LanguageClient, uri: str, line: int, character: int, **kwargs) -> types.InlineCompletionList:
    return await client.text_document_inline_completion_async(inline_params(uri, line, character, **kwargs))


def send_raw_request(client: LanguageClient, msg_id: str, method: str, params: Any) -> asyncio.Future:
    """Send a request whose params are written as given, valid or not; the future gets the server's answer."""
    future: Future = Future()
    client.protocol._request_futures[msg_id] = future
    client.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
    return asyncio.wrap_future(future)


def send_raw_notification(client: LanguageClient, method: str, params: Any) -> None:
    client.protocol._send_data({"jsonrpc": "2.0", "method": method, "params": params})


def send_bytes(client: LanguageClient, body: bytes) -> None:
    """A framed message with an arbitrary body (e.g. not JSON at all)."""
    client.protocol.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def stats(client: LanguageClient) -> dict[str, Any]:
    return plain(await client.protocol.send_request_async("diffgemma/stats", None))


def plain(value: Any) -> Any:
    """pygls hands custom params and results over as namedtuples; tests compare dicts."""
    if hasattr(value, "_asdict"):
        return {key: plain(item) for key, item in value._asdict().items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
