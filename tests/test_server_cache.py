"""Answers without a model run (typed-ahead, result cache) and the encoder's prompt-prefix KV cache."""

from __future__ import annotations

import pytest
import pytest_asyncio

from checkpoints import cached_checkpoint
from lsp_support import inline, insert, open_document, start_client, stats, stop_client

pytestmark = pytest.mark.asyncio(loop_scope="module")

LINE = "        result += "
SOURCE = f"def total(items):\n    result = 0\n    for item in items:\n{LINE}\n    return result\n\n\nprint(total([1]))\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(tmp_path_factory):
    checkpoint = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant")
    # Only the model's candidate: copied lines from the other tests' documents would join it.
    client = await start_client(str(checkpoint), settings={"documentCandidates": 0})
    yield client
    await stop_client(client)


async def test_typing_the_suggestion_reuses_it_without_a_model_run(client):
    uri = "file:///typed_ahead.py"
    open_document(client, uri, SOURCE)
    first = await inline(client, uri, 3, len(LINE))
    assert first.items[0].insert_text == LINE + "x" * 16
    before = await stats(client)

    insert(client, uri, 3, len(LINE), "x", version=2)  # the user types the suggestion's first character
    second = await inline(client, uri, 3, len(LINE) + 1)
    insert(client, uri, 3, len(LINE) + 1, "xxx", version=3)  # ... and three more
    third = await inline(client, uri, 3, len(LINE) + 4)
    middle = await stats(client)
    assert second.items[0].insert_text == LINE + "x" * 16  # the line so far + the rest of the suggestion
    assert third.items[0].insert_text == LINE + "x" * 16
    assert middle["typedAheadHits"] - before["typedAheadHits"] == 2
    assert middle["modelRuns"] == before["modelRuns"]

    insert(client, uri, 3, len(LINE) + 4, "y", version=4)  # something the suggestion did not say
    fourth = await inline(client, uri, 3, len(LINE) + 5)
    after = await stats(client)
    assert fourth.items[0].insert_text == LINE + "xxxxy" + "x" * 16
    assert after["modelRuns"] == middle["modelRuns"] + 1 and after["typedAheadHits"] == middle["typedAheadHits"]


async def test_typing_at_the_cursor_reencodes_only_what_changed(client):
    uri = "file:///prefix_cache.py"
    long_prefix = "".join(f"def helper_{i}(value):\n    return value * {i}\n\n\n" for i in range(20))
    open_document(client, uri, long_prefix + SOURCE)
    line = long_prefix.count("\n") + 3
    await inline(client, uri, line, len(LINE))
    cold = (await stats(client))["lastRun"]
    insert(client, uri, line, len(LINE), "y", version=2)
    await inline(client, uri, line, len(LINE) + 1)
    warm = (await stats(client))["lastRun"]
    assert cold["encodedPromptTokens"] > 0.9 * cold["promptTokens"]  # another document was encoded before
    assert warm["promptTokens"] >= cold["promptTokens"]
    assert 0 < warm["encodedPromptTokens"] < cold["encodedPromptTokens"] / 4  # the cursor's end of the prompt


async def test_same_text_again_is_answered_from_the_result_cache(client):
    uri = "file:///result_cache.py"
    open_document(client, uri, SOURCE)
    await inline(client, uri, 3, len(LINE))
    await inline(client, uri, 1, len("    result = 0"))  # elsewhere: the typed-ahead memory moves on
    before = await stats(client)
    again = await inline(client, uri, 3, len(LINE))
    after = await stats(client)
    assert again.items[0].insert_text == LINE + "x" * 16
    assert after["cacheHits"] - before["cacheHits"] == 1 and after["modelRuns"] == before["modelRuns"]
