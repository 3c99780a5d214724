"""The infill pipeline: context -> model.infill -> post-processing -> ranking.

The model is an :class:`InfillModel`: the local :class:`~engine.Engine`, or a
:class:`~lsp_server.remote.RemoteModel` when the ``model`` setting is a server's URL.

The server and ``diffgemma-infill`` run the same stages. The server calls them one by one, because the stages
that read a :class:`~lsp_server.documents.Document` (context, post-processing, ranking) must run on the event
loop thread that owns the documents, while generation runs on the model worker and touches no document;
:meth:`InfillPipeline.complete` runs them in sequence for a one-shot completion.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

import engine
from engine import CanvasText, Engine, InfillCandidate, InfillResult
from engine.infill import infill_prompt
from lsp_server.completion_mode import CompletionMode
from lsp_server.context import ContextBudget, InfillContext, build_context
from lsp_server.document_candidates import line_candidates
from lsp_server.documents import Document
from lsp_server.positions import PositionLike
from lsp_server.postprocess import postprocess
from lsp_server.ranking import RankedCandidate, rank_candidates
from lsp_server.remote import RemoteModel, RemoteUnavailable
from lsp_server.settings import Settings, is_remote_model


def intra_op_threads(requested: int | None) -> int:
    """The model's intra-op threads: as requested, else every core this process may use but one (at least one).

    The spare core is for the JSON-RPC loop and the editor. OpenMP threads meet at a barrier after each of a denoising
    step's many small kernels, so one thread that another process pushes off its core stalls them all: with the
    other of two cores busy, two threads ran the MoE matmuls about 3x slower than one.
    """
    if requested is not None:
        return requested
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable - 1)


def request_seed(seed: int | None, prefix: str, suffix: str) -> int | None:
    """The sampling seed of one request: none stays none (fresh noise), a set seed is mixed with the prompt.

    Requests then share their noise only when they share their prompt, and stay reproducible. With the set seed
    itself every hole of a benchmark would get the same noise, and that one draw's luck would move every result
    together. 32 bits, which every back-end accepts (llama.cpp's seed is unsigned 32-bit).
    """
    if seed is None:
        return None
    digest = hashlib.blake2b(f"{seed}\0{prefix}\0{suffix}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def load_engine(settings: Settings) -> Engine:
    """Load the checkpoint the settings name, on their device and dtype, in their engine mode, with their canvas
    length."""
    loaded = engine.load(engine.resolve_model_path(settings.model), settings.device, settings.dtype,
                         mode=settings.engine_mode, compile=settings.compile, quantization=settings.quantization)
    if settings.canvas_length is not None:
        # The canvas length is no part of the weights (canvas positions come from RoPE): loading with another
        # one is the same as editing the checkpoint's config.json.
        loaded.model.config = replace(loaded.model.config, canvas_length=settings.canvas_length)
    return loaded


def warm_up(loaded: Engine, settings: Settings) -> None:
    """`Engine.warm_up` for the longest prompt the settings allow (the budget plus the layout's own tokens), so
    requests find the kernels initialised and (compiling) their denoising step's shape compiling already."""
    layout_tokens = len(infill_prompt(loaded, "", "")[1])
    loaded.warm_up(settings.max_prompt_tokens + layout_tokens, settings.candidates, settings.max_new_tokens)


class InfillModel(Protocol):
    """What the pipeline needs from a model; Engine and RemoteModel both have it."""

    @property
    def prompt_format(self) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def describe(self) -> str: ...

    def infill(self, prefix: str, suffix: str, *, max_new_tokens: int | None = None, num_candidates: int = 1,
               seed: int | None = None, on_canvas: Callable[[CanvasText], None] | None = None,
               cancelled: Callable[[], bool] | None = None, **generation_overrides: Any) -> InfillResult: ...


def load_model(settings: Settings) -> InfillModel:
    """The model the settings name: a checkpoint loaded here, or a connection to a server.

    A server that is down does not fail the load: the model is usable and its ``problem`` says what is wrong
    until a request gets through (the server may come up later).
    """
    if not is_remote_model(settings.model):
        loaded = load_engine(settings)
        warm_up(loaded, settings)
        return loaded
    remote = RemoteModel.from_settings(settings)
    try:
        remote.connect()
    except RemoteUnavailable:
        pass  # remote.problem has it
    return remote


@dataclass(frozen=True)
class Completion:
    """One completion made by :meth:`InfillPipeline.complete`."""

    context: InfillContext
    result: InfillResult | None  # None when the mode asked for no completion
    ranked: list[RankedCandidate]  # post-processed candidates, best first
    timings_ms: dict[str, float]  # context, generate, postprocess, total

    @property
    def text(self) -> str | None:
        return self.ranked[0].text if self.ranked else None


class InfillPipeline:
    """The stages of a completion for one loaded engine."""

    def __init__(self, model: InfillModel) -> None:
        self.model = model
        model.prompt_format  # noqa: B018 - fails here, at load, for a tokenizer that cannot infill

    @property
    def prompt_format(self) -> str:
        return self.model.prompt_format

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)

    def close(self) -> None:
        """Release what the model holds beyond memory (a remote model's connections and thread)."""
        if isinstance(self.model, RemoteModel):
            self.model.close()

    def context(
        self,
        document: Document,
        position: PositionLike,
        settings: Settings,
        other_documents: Iterable[Document] = (),
        invoked: bool = False,
    ) -> InfillContext:
        """Prefix, suffix and snippets within the prompt budget (reads the document: loop thread)."""
        budget = ContextBudget(max_tokens=settings.max_prompt_tokens)
        return build_context(document, position, self.count_tokens, budget, other_documents, invoked)

    def document_candidates(self, document: Document, position: PositionLike, settings: Settings,
                            other_documents: Iterable[Document] = ()) -> list[str]:
        """Line endings copied from the open documents (reads them: loop thread); judged with the model's own."""
        return line_candidates(document, document.offset_at(position), other_documents,
                               settings.document_candidates)

    def generate(
        self,
        context: InfillContext,
        settings: Settings,
        cancelled: Callable[[], bool] | None = None,
        on_canvas: Callable[[CanvasText], None] | None = None,
        extra_middles: Iterable[str] = (),
    ) -> InfillResult:
        """Run the model on a context (touches no document: any thread; sets that thread's intra-op threads).

        ``extra_middles`` (e.g. document candidates) join the model's candidates. With ``rerank`` every candidate
        is then scored by the model's likelihood of it between the prefix and the suffix, when there is more than
        one to choose from and the model can score (a remote model cannot: the extras rank after its own).
        """
        # OpenMP keeps the thread count per calling thread, so it is set here, on the thread that runs the model.
        threads = intra_op_threads(settings.threads)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        # The editor needs the model's distribution, not transformers' random stream: sample by inverse CDF.
        overrides: dict[str, Any] = {"sampling": "fast"}
        if settings.denoising_steps is not None:
            overrides["max_denoising_steps"] = settings.denoising_steps
        prefix = context.prompt_prefix()
        result = self.model.infill(
            prefix, context.suffix, max_new_tokens=settings.max_new_tokens, num_candidates=settings.candidates,
            seed=request_seed(settings.seed, prefix, context.suffix), on_canvas=on_canvas, cancelled=cancelled,
            **overrides,
        )
        known = {candidate.text for candidate in result.candidates}
        extras = [InfillCandidate(middle, float("-inf"), True) for middle in dict.fromkeys(extra_middles)
                  if middle not in known]
        candidates = [*result.candidates, *extras]
        if settings.rerank and len(candidates) > 1 and isinstance(self.model, Engine):
            scores = self.model.score_middles(prefix, context.suffix, [candidate.text for candidate in candidates])
            candidates = [replace(candidate, score=score) for candidate, score in zip(candidates, scores)]
        return replace(result, candidates=candidates)

    @staticmethod
    def rank(
        result: InfillResult, document: Document, position: PositionLike, mode: CompletionMode
    ) -> list[RankedCandidate]:
        """Post-process every candidate for the cursor and rank what remains (reads the document: loop thread)."""
        cleaned = ((postprocess(candidate.text, document, position, mode), candidate.score)
                   for candidate in result.candidates)
        return rank_candidates(document, position, [(text, score) for text, score in cleaned if text is not None])

    def complete(
        self,
        document: Document,
        position: PositionLike,
        settings: Settings,
        other_documents: Iterable[Document] = (),
        invoked: bool = True,
        on_canvas: Callable[[CanvasText], None] | None = None,
    ) -> Completion:
        """All stages in sequence, timed."""
        started = time.perf_counter()
        context = self.context(document, position, settings, other_documents, invoked)
        context_done = time.perf_counter()
        if context.mode is CompletionMode.NONE:
            elapsed = _ms(started, context_done)
            return Completion(context, None, [], {"context": elapsed, "total": elapsed})
        extras = self.document_candidates(document, position, settings, other_documents)
        result = self.generate(context, settings, on_canvas=on_canvas, extra_middles=extras)
        generated = time.perf_counter()
        ranked = self.rank(result, document, position, context.mode)
        finished = time.perf_counter()
        timings = {"context": _ms(started, context_done), "generate": _ms(context_done, generated),
                   "postprocess": _ms(generated, finished), "total": _ms(started, finished)}
        return Completion(context, result, ranked, timings)


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000.0
