"""The server's parts on their own: settings, result cache, typed-ahead, and the model worker's scheduling."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import torch

from checkpoints import cached_checkpoint
from lsp_server.completion_cache import ResultCache, TypedAhead
from lsp_server.documents import Document
from lsp_server.pipeline import InfillPipeline, intra_op_threads, load_engine, request_seed
from lsp_server.scheduler import JobCancelled, Scheduler
from lsp_server.settings import Settings, apply_changes

# ------------------------------------------------------------------------------------------------ settings


def test_settings_are_fully_defaulted_and_camel_case_on_the_wire():
    wire = Settings().to_wire()
    assert wire == {
        "model": "embedded", "device": "auto", "dtype": "auto", "engineMode": "serving", "compile": True,
        "quantization": None, "canvasLength": None, "maxPromptTokens": 256,
        "maxNewTokens": None, "denoisingSteps": None, "candidates": 1, "seed": None, "threads": None,
        "enabledLanguages": ["*"],
        "cacheSize": 256, "canvasNotifications": False,
        "documentCandidates": 4, "rerank": True,
        "apiKey": None, "remoteModel": None, "requestTimeout": 10.0, "tlsVerify": True, "tokenizer": None,
    }
    assert apply_changes(Settings(), wire) == (Settings(), [])  # the wire form reads back unchanged


def test_settings_changes_flat_or_under_the_section():
    flat, problems = apply_changes(Settings(), {"candidates": 3, "dtype": "bf16", "enabledLanguages": ["python"]})
    sectioned, _ = apply_changes(Settings(), {"diffgemma": {"candidates": 3, "dtype": "bf16", "enabledLanguages": ["python"]}})
    assert problems == [] and flat == sectioned
    assert flat.candidates == 3 and flat.dtype == "bf16"
    assert apply_changes(flat, {"dtype": None})[0].dtype == "auto"  # null means the default
    assert flat.language_enabled("python") and not flat.language_enabled("go", "Go")
    assert Settings().language_enabled("anything")


def test_bad_settings_keep_their_previous_value_and_are_reported():
    base = Settings(candidates=2)
    changed, problems = apply_changes(base, {
        "candidates": 0, "maxNewTokens": True, "device": "gpu", "dtype": "int8", "seed": -1,
        "enabledLanguages": "python", "canvasNotifications": "yes", "temperature": 0.2, "denoisingSteps": 12,
    })
    assert changed == Settings(candidates=2, denoising_steps=12)
    assert len(problems) == 8
    assert any("'temperature' is not a setting" in problem for problem in problems)
    assert any(problem.startswith("'device': expected auto, cpu, cuda or cuda:N") for problem in problems)
    assert apply_changes(base, ["not", "an", "object"]) == (base, ["settings must be an object, got list"])
    assert apply_changes(base, None) == (base, [])


def test_model_threads_leave_a_core_to_the_loop_and_are_set_on_the_thread_that_runs_the_model(tmp_path_factory):
    usable = len(os.sched_getaffinity(0))
    assert intra_op_threads(None) == max(1, usable - 1)
    assert intra_op_threads(3) == 3
    checkpoint = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant")
    settings = Settings(model=str(checkpoint), threads=1, compile=False)  # no compile outliving the test
    pipeline = InfillPipeline(load_engine(settings))
    document = Document("file:///t.py", "def f():\n    return \n")
    context = pipeline.context(document, (1, 11), settings, invoked=True)
    seen = []

    def worker() -> None:
        torch.set_num_threads(2)
        pipeline.generate(context, settings)
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1] and torch.get_num_threads() == before  # OpenMP keeps a count per thread


def test_a_set_seed_is_mixed_with_the_prompt_so_holes_do_not_share_their_noise(tmp_path_factory):
    assert request_seed(None, "a", "b") is None  # a fresh seed per request
    seeds = {request_seed(3, prefix, "\n") for prefix in ("def f():\n    return ", "x = ", "import ")}
    assert len(seeds) == 3 and all(0 <= seed < 2**32 for seed in seeds)
    assert request_seed(3, "x = ", "") == request_seed(3, "x = ", "") != request_seed(4, "x = ", "")
    assert request_seed(3, "x", " = 1") != request_seed(3, "x ", "= 1")  # where the hole is counts

    checkpoint = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random")
    # compile=False: the compiled step, ready between two calls, would round differently from the eager one
    settings = Settings(model=str(checkpoint), seed=3, threads=1, rerank=False, document_candidates=0, compile=False)
    pipeline = InfillPipeline(load_engine(settings))
    context = pipeline.context(Document("file:///t.py", "def f():\n    return \n"), (1, 11), settings, invoked=True)
    texts = [c.text for c in pipeline.generate(context, settings).candidates]
    assert texts == [c.text for c in pipeline.generate(context, settings).candidates]  # reproducible
    direct = pipeline.model.infill(context.prompt_prefix(), context.suffix, sampling="fast",
                                   seed=request_seed(3, context.prompt_prefix(), context.suffix))
    assert texts == [c.text for c in direct.candidates]  # the engine got the mixed seed


# ------------------------------------------------------------------------------------------------- caches


def test_result_cache_evicts_the_least_recently_used():
    cache = ResultCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    cache.resize(1)
    assert len(cache) == 1 and cache.get("c") == 3


def test_typed_ahead_continues_only_what_was_typed_of_the_suggestion():
    shown = "def f():\n    return |\n".encode()
    cursor = shown.index(b"|")
    source = shown.replace(b"|", b"")
    typed_ahead = TypedAhead()
    typed_ahead.remember("u", source, cursor, "héllo(1)")

    def after_typing(text: str) -> bytes:
        return source[:cursor] + text.encode() + source[cursor:]

    assert typed_ahead.continuation("u", source, cursor) == "héllo(1)"
    assert typed_ahead.continuation("u", after_typing("hé"), cursor + len("hé".encode())) == "llo(1)"
    assert typed_ahead.continuation("u", after_typing("hx"), cursor + 2) is None  # not the suggestion
    assert typed_ahead.continuation("u", after_typing("héllo(1)"), cursor + len("héllo(1)".encode())) is None
    assert typed_ahead.continuation("u", b"#" + after_typing("h"), cursor + 2) is None  # an edit elsewhere
    assert typed_ahead.continuation("other", source, cursor) is None
    typed_ahead.remember("u", source, cursor, "x  ")
    assert typed_ahead.continuation("u", after_typing("x"), cursor + 1) is None  # only whitespace left
    typed_ahead.forget("u")
    assert typed_ahead.continuation("u", source, cursor) is None


# ---------------------------------------------------------------------------------------------- scheduler


async def test_scheduler_supersedes_and_cancels():
    activity = []
    scheduler = Scheduler(asyncio.get_running_loop(), activity.append)
    started, release = threading.Event(), threading.Event()

    def blocking(job):
        started.set()
        while not job.cancelled() and not release.is_set():
            release.wait(0.01)
        return "finished"

    running = scheduler.submit("doc", blocking)
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    queued = scheduler.submit("other", lambda job: "other done")
    newest = scheduler.submit("doc", lambda job: "newest done")  # supersedes the running "doc" job
    with pytest.raises(JobCancelled):
        await running.future  # it stopped at its next check, and a cancelled job never answers
    assert await queued.future == "other done"
    assert await newest.future == "newest done"

    pending_blocker = scheduler.submit("block", blocking)
    waiting = scheduler.submit("waiting", lambda job: "never")
    assert scheduler.supersede("waiting") is True and scheduler.supersede("waiting") is False
    assert waiting.future.done() and isinstance(waiting.future.exception(), JobCancelled)  # at once, not started
    release.set()
    assert await pending_blocker.future == "finished"

    failing = scheduler.submit("doc", lambda job: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        await failing.future
    await asyncio.sleep(0.05)
    assert activity[0] is True and activity[-1] is False

    scheduler.stop()
    with pytest.raises(JobCancelled, match="shutting down"):
        await scheduler.submit("doc", lambda job: "late").future
