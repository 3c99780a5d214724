"""The server over stdio as VS Code and Neovim see it: capabilities, result shapes, ranges, commands, settings."""

from __future__ import annotations

import pytest
import pytest_asyncio
from lsprotocol import types

from checkpoints import cached_checkpoint
from lsp_support import inline, open_document, start_client, stats, stop_client, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

ACCEPT = "diffgemma.acceptInlineCompletion"
SOURCE = "import os\n\n\ndef total(items):\n    result = 0\n    for item in items:\n        result += \n    return result\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant"))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def vscode(checkpoint):
    client = await start_client(checkpoint, settings={"diffgemma": {"denoisingSteps": 4}})
    yield client
    assert await stop_client(client) == 0  # shutdown then exit: exit code 0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def neovim(checkpoint):
    client = await start_client(checkpoint, editor="neovim")  # offers utf-8, utf-16, utf-32
    yield client
    await stop_client(client)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def legacy_neovim(checkpoint):
    client = await start_client(checkpoint, editor="neovim", inline=False)  # Neovim before 0.12
    yield client
    await stop_client(client)


async def test_capabilities_for_an_inline_client(vscode):
    capabilities = vscode.init_result.capabilities
    assert capabilities.inline_completion_provider is not None
    assert capabilities.completion_provider is None  # it has inline completion: no fallback items in its menu
    assert ACCEPT in capabilities.execute_command_provider.commands  # Neovim runs only listed commands
    assert capabilities.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert capabilities.text_document_sync.open_close is True
    assert capabilities.position_encoding == types.PositionEncodingKind.Utf16  # VS Code offers nothing else
    assert vscode.init_result.server_info.name == "diffgemma-lsp"


async def test_capabilities_without_inline_completion(legacy_neovim):
    capabilities = legacy_neovim.init_result.capabilities
    assert capabilities.completion_provider is not None
    assert capabilities.position_encoding == types.PositionEncodingKind.Utf8  # Neovim's first choice


async def test_inline_completion_result_shape(vscode):
    uri = "file:///shape.py"
    open_document(vscode, uri, SOURCE)
    result = await inline(vscode, uri, 6, 18)
    assert isinstance(result, types.InlineCompletionList) and len(result.items) == 1
    item = result.items[0]
    assert item.insert_text == "        result += " + "x" * 16
    assert item.range == types.Range(start=types.Position(line=6, character=0),
                                     end=types.Position(line=6, character=18))
    assert item.command.command == ACCEPT and isinstance(item.command.arguments[0], str)
    last_run = (await stats(vscode))["lastRun"]
    assert last_run["steps"] == 4  # initializationOptions: denoisingSteps 4
    assert last_run["blocks"] == 1 and last_run["tokensPerForward"] == 16 / 4 and last_run["wallMs"] > 0


async def test_replace_range_with_unicode_in_utf16(vscode):
    uri = "file:///unicode16.py"
    line = 's = "héllo 😀 wörld" + '
    open_document(vscode, uri, f"{line}\n")
    character = len(line.encode("utf-16-le")) // 2  # the emoji is two UTF-16 code units
    item = (await inline(vscode, uri, 0, character)).items[0]
    assert item.range.start == types.Position(line=0, character=0)
    assert item.range.end == types.Position(line=0, character=character)
    assert item.insert_text.startswith(line) and item.insert_text.endswith("x" * 16)


async def test_replace_range_with_unicode_in_utf8(neovim):
    uri = "file:///unicode8.py"
    line = 'label = "日本語 😀" + '
    open_document(neovim, uri, f"{line}\nprint(label)\n")
    character = len(line.encode("utf-8"))
    item = (await inline(neovim, uri, 0, character)).items[0]
    assert item.range.end == types.Position(line=0, character=character)
    assert item.insert_text == line + "x" * 16


async def test_position_splitting_a_character_is_rejected(neovim):
    uri = "file:///split.py"
    open_document(neovim, uri, "s = '😀'\n")
    with pytest.raises(Exception, match="invalid position .*splits a character"):
        await inline(neovim, uri, 0, 6)  # inside the emoji's four UTF-8 bytes


async def test_completion_fallback_item(legacy_neovim):
    uri = "file:///fallback.py"
    open_document(legacy_neovim, uri, "def f(items):\n    tot\n")
    result = await legacy_neovim.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=1, character=7)))
    assert isinstance(result, types.CompletionList) and result.is_incomplete is True
    (item,) = result.items
    assert item.text_edit.range == types.Range(start=types.Position(line=1, character=4),
                                               end=types.Position(line=1, character=7))  # the word "tot"
    assert item.text_edit.new_text == "tot" + "x" * 16 == item.filter_text
    assert item.label == item.text_edit.new_text
    assert item.command.command == ACCEPT


async def test_accept_command_is_counted(neovim):
    uri = "file:///accept.py"
    open_document(neovim, uri, SOURCE)
    item = (await inline(neovim, uri, 6, 18)).items[0]
    before = (await stats(neovim))["acceptances"]
    await neovim.workspace_execute_command_async(types.ExecuteCommandParams(
        command=item.command.command, arguments=item.command.arguments))
    assert (await stats(neovim))["acceptances"] == before + 1
    with pytest.raises(Exception, match="unknown completion id"):  # each suggestion is accepted once
        await neovim.workspace_execute_command_async(types.ExecuteCommandParams(
            command=item.command.command, arguments=item.command.arguments))


async def test_settings_change(vscode):
    uri = "file:///settings.py"
    open_document(vscode, uri, SOURCE)
    await inline(vscode, uri, 6, 18)
    runs = (await stats(vscode))["modelRuns"]
    vscode.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"diffgemma": {"maxNewTokens": 32, "candidates": 2, "denoisingSteps": "many"}}))
    await wait_until(lambda: any("denoisingSteps" in m.message for m in vscode.log_messages), "a settings warning")
    result = await inline(vscode, uri, 6, 18)  # same text, but the cached result was for other settings
    after = await stats(vscode)
    assert after["modelRuns"] == runs + 1
    assert after["lastRun"]["blocks"] == 2 and after["lastRun"]["steps"] == 2 * 4  # denoisingSteps kept its 4
    assert result.items[0].insert_text.endswith("x" * 32)  # two candidates, identical, merged by the ranking
    assert len(result.items) == 1
    vscode.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"diffgemma": {"maxNewTokens": None, "candidates": 1}}))
