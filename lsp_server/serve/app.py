"""diffgemma-serve: the engine behind an OpenAI/vLLM-compatible and a llama.cpp-compatible HTTP API.

Endpoints (every error is ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status as code):

* ``GET /health``: ``{"status": "loading"|"ready"|"error", "model", "message", "queue", "busy", "completed",
  "cancelled", "failed", "version"}``, 200 when ready, else 503. Never needs the API key (as in vLLM).
* ``GET /v1/models``: the served model, with a ``diffgemma`` object (prompt format, canvas length, denoising
  steps, ...) by which a client recognises this server.
* ``POST /v1/completions``: vLLM's completion API: text or token-id prompts (one or several), ``suffix`` (a
  fill-in-the-middle prompt, which vLLM refuses), ``max_tokens``, ``n``, ``seed``, ``stop``, ``stop_token_ids``,
  ``stream`` + ``stream_options.include_usage``, ``return_token_ids``, ``add_special_tokens`` and
  ``vllm_xargs: {"diffusion_max_steps": N}``. A stream carries the first candidate's text canvas by canvas (a
  committed canvas never changes), then every choice's rest with its finish_reason, as vLLM streams a block-wise
  model.
* ``POST /v1/canvas``: the same body; an SSE stream of every denoising step of the first candidate, then the
  complete response (with each choice's ``score`` and ``token_ids`` and a ``diffgemma`` statistics object).
* ``POST /infill``: llama.cpp's infill API as llama.vim and llama.vscode use it (warm-ups with ``n_predict: 0``
  encode the prompt into the engine's prefix cache; ``response_fields`` projects the answer).

Sampling: ``temperature``, ``top_p``, ``top_k`` and the penalties are accepted and ignored: the diffusion sampler's
temperature schedule and entropy bound come from the checkpoint's generation config, as vLLM takes a model's
sampler defaults from it. Like the language server, every run samples with ``sampling="fast"``, so a completion
over HTTP is the in-process one for the same seed. ``max_tokens`` is exact: the engine denoises whole canvases,
and the tokens past ``max_tokens`` are dropped (finish_reason "length").

One worker thread owns the model (lsp_server.scheduler): requests run one at a time in arrival order, and a client
that goes away cancels its run within one denoising step (a queued run is dropped without running).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from tokenizers import Tokenizer

from engine import EMBEDDED_MODEL, CanvasText, Engine, InfillResult
from engine.infill import CHAT_FORMAT, complete_prompt, decode_middle, infill_prompt, prompt_format
from engine.infill import text_tokenizer
from lsp_server import VERSION
from lsp_server.languages import language_for
from lsp_server.pipeline import load_engine
from lsp_server.scheduler import Job, JobCancelled, Scheduler
from lsp_server.serve.requests import (
    VLLM_XARGS,
    ApiError,
    CompletionRequest,
    ExtraChunk,
    InfillRequest,
    Prompt,
    RequestError,
    parse_completion,
    parse_infill,
    read_json,
)
from lsp_server.settings import Settings

logger = logging.getLogger(__name__)

CANVAS_PATH = "/v1/canvas"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of a stream
SSE_DONE = "data: [DONE]\n\n"
# Every run samples like the language server (see InfillPipeline.generate), so HTTP and in-process agree.
GENERATION_OVERRIDES: dict[str, Any] = {"sampling": "fast"}

# Worker-thread callback that hands a (prompt index, CanvasText) event to the loop; None when nobody streams.
Post = Callable[[tuple[int, CanvasText]], None]


class Plan(Protocol):
    """A request resolved against the model: what its job runs on the worker thread."""

    id: str  # for the log

    def work(self, cancelled: Callable[[], bool], post: Post | None) -> Any: ...


@dataclass(frozen=True)
class ServeConfig:
    model: str = EMBEDDED_MODEL  # checkpoint directory, or "embedded"
    served_model_name: str = EMBEDDED_MODEL
    api_key: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    engine_mode: str = "serving"
    compile: bool = True
    quantization: str | None = None
    threads: int = 1  # the model's intra-op threads


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, "unavailable_error")


def error_body(error: BaseException) -> dict[str, Any]:
    """The JSON error object for any failure of a request."""
    if isinstance(error, ApiError):
        return error.body()
    if isinstance(error, JobCancelled):
        return unavailable("the server is shutting down").body()
    return ApiError(500, str(error) or type(error).__name__, "internal_server_error").body()


# ------------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class LoadedModel:
    engine: Engine
    prompt_format: str  # FIM_FORMAT or CHAT_FORMAT: which stop tokens end a candidate, how its text is decoded
    prompt_tokenizer: Tokenizer  # a copy that parses special-token strings in text prompts

    @classmethod
    def load(cls, config: ServeConfig) -> LoadedModel:
        loaded = load_engine(Settings(model=config.model, device=config.device, dtype=config.dtype,
                                      engine_mode=config.engine_mode, compile=config.compile,
                                      quantization=config.quantization))
        chosen = prompt_format(text_tokenizer(loaded))  # fails here, at load, for a tokenizer that cannot infill
        # text_tokenizer() sets the shared tokenizer to read "<eos>" in source code as text; a client that sends
        # a laid-out prompt as text ("<bos><fim_prefix>...") needs those strings parsed, so it gets its own copy.
        parsing = Tokenizer.from_str(loaded.tokenizer.to_str())
        parsing.encode_special_tokens = False
        return cls(loaded, chosen, parsing)

    @property
    def vocab_size(self) -> int:
        return self.engine.config.vocab_size

    @property
    def streams_canvases(self) -> bool:
        """Whether committed canvases may be streamed: a chat checkpoint's answer loses its Markdown fence only
        once complete, so its text is final only at the end."""
        return self.prompt_format != CHAT_FORMAT

    def info(self) -> dict[str, Any]:
        return {
            "prompt_format": self.prompt_format,
            "canvas_length": self.engine.config.canvas_length,
            "max_denoising_steps": self.engine.generation_config.max_denoising_steps,
            "max_new_tokens": self.engine.generation_config.max_new_tokens,
            "vocab_size": self.vocab_size,
        }

    def check_ids(self, ids: Iterable[int], param: str) -> None:
        if any(t >= self.vocab_size for t in ids):
            raise RequestError(f"{param} token ids must be in [0, {self.vocab_size})", param)

    def prompt_ids(self, prompt: Prompt, suffix: str | None, add_special_tokens: bool) -> list[int]:
        """A request prompt as token ids: ids as given, text with a suffix as a FIM prompt, else tokenized."""
        if isinstance(prompt, tuple):
            self.check_ids(prompt, "prompt")
            return list(prompt)
        if suffix is not None:
            return infill_prompt(self.engine, prompt, suffix)[1]
        ids = self.prompt_tokenizer.encode(prompt, add_special_tokens=False).ids
        bos = self.engine.config.bos_token_id
        if add_special_tokens and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        if not ids:
            raise RequestError("prompt is empty", "prompt")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Generated tokens as text, decoded as complete_prompt decodes a candidate."""
        return decode_middle(text_tokenizer(self.engine), list(ids), self.prompt_format)


class ModelWorker:
    """The scheduler's worker thread with the model it loads at startup, and the counts /health reports."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.status = "loading"
        self.message = f"loading {config.model}"
        self.loaded: LoadedModel | None = None
        self.busy = False
        self.completed = self.cancelled = self.failed = 0
        self._scheduler: Scheduler | None = None
        self._jobs: set[Job] = set()
        self._keys = itertools.count()  # a unique key per request: requests never supersede one another

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduler = Scheduler(loop, on_activity=self._set_busy)
        # The load is a job like any other, so the first requests queue behind it on the same thread.
        self._scheduler.submit("load", self._load).future.add_done_callback(self._loaded)

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()

    def _load(self, job: Job) -> LoadedModel:
        # OpenMP keeps the thread count per calling thread: set it on the thread that runs every job.
        torch.set_num_threads(self.config.threads)
        return LoadedModel.load(self.config)

    def _loaded(self, future: asyncio.Future) -> None:
        error = future.exception()
        if error is not None:
            self.status, self.message = "error", f"the model failed to load: {error}"
            logger.error("%s", self.message)
            return
        self.loaded = future.result()
        engine = self.loaded.engine
        self.status = "ready"
        self.message = (f"{engine.path} on {engine.device} ({str(engine.dtype).removeprefix('torch.')}), "
                        f"canvas {engine.config.canvas_length}, {self.loaded.prompt_format} prompts")
        logger.info("model ready: %s", self.message)

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy

    def model(self) -> LoadedModel:
        """The loaded model, or a 503 while it loads or after it failed to."""
        if self.loaded is None:
            raise unavailable("the model is loading" if self.status == "loading" else self.message)
        return self.loaded

    def submit(self, work: Callable[[Job], Any]) -> Job:
        assert self._scheduler is not None, "the worker starts with the app's lifespan"
        job = self._scheduler.submit(next(self._keys), work)
        self._jobs.add(job)
        job.future.add_done_callback(functools.partial(self._settled, job))
        return job

    def cancel(self, job: Job) -> None:
        """Stop the job (a queued one is dropped at once); a no-op once it has finished."""
        if self._scheduler is not None:
            self._scheduler.cancel(job)

    def _settled(self, job: Job, future: asyncio.Future) -> None:
        self._jobs.discard(job)
        if future.cancelled():  # nothing cancels these futures but the scheduler's exceptions; be safe
            self.cancelled += 1
            return
        error = future.exception()  # also marks it retrieved: nobody may be awaiting a cancelled request's job
        if error is None:
            self.completed += 1
        elif isinstance(error, JobCancelled):
            self.cancelled += 1
        else:
            self.failed += 1

    def health(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "model": self.config.served_model_name,
            "message": self.message,
            "queue": sum(not job.started for job in self._jobs),
            "busy": self.busy,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "version": VERSION,
        }


# ------------------------------------------------------------------------------------------ runs


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


_END = object()


class Run:
    """One request's job on the model worker, and the canvas events it posts back to the event loop."""

    def __init__(self, worker: ModelWorker, plan: Plan, stream: bool) -> None:
        loop = asyncio.get_running_loop()
        self._worker = worker
        self._id = plan.id
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        post: Post | None = None
        if stream:
            def post(event: tuple[int, CanvasText]) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: the server is exiting
                    loop.call_soon_threadsafe(self._events.put_nowait, event)
        self.job = worker.submit(lambda job: plan.work(job.cancelled, post))
        # Settling the future is posted after the job's last event, so the end marker follows every event.
        self.job.future.add_done_callback(lambda _: self._events.put_nowait(_END))

    async def events(self) -> AsyncIterator[tuple[int, CanvasText]]:
        while (event := await self._events.get()) is not _END:
            yield event

    def cancel(self) -> None:
        """Stop the run if it has not finished (the client went away); a no-op once it has."""
        if not self.job.future.done():
            logger.info("%s: the client went away; %s", self._id,
                        "run cancelled" if self.job.started else "dropped from the queue")
            self._worker.cancel(self.job)


async def _client_gone(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect (uvicorn sends it when the socket closes).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def result_or_cancel(request: Request, run: Run) -> Any:
    """The run's result; the client disconnecting first cancels the run (a non-streaming request)."""
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((run.job.future, gone), return_when=asyncio.FIRST_COMPLETED)
        if not run.job.future.done():
            raise ClientGone()
        return run.job.future.result()
    finally:
        gone.cancel()
        run.cancel()


class StreamRenderer(Protocol):
    """Turns a run's canvas events and its result into the JSON payloads of one endpoint's SSE stream."""

    # Whether the run should post every denoising step: decoding and posting a step costs the model worker time,
    # so streams that only send committed canvases skip it when the answer fits in one canvas.
    wants_steps: bool

    def on_canvas(self, prompt_index: int, event: CanvasText) -> Iterable[Any]: ...

    def on_result(self, result: Any) -> Iterable[Any]: ...


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'), allow_nan=False)}\n\n"


async def sse_events(worker: ModelWorker, plan: Plan, renderer: StreamRenderer,
                     done_marker: bool) -> AsyncIterator[str]:
    """The SSE stream of a run. Starlette cancels it when the client disconnects, and the finally cancels the run."""
    # Submitted once the stream runs: a response that never starts streaming never queues a job.
    run = Run(worker, plan, stream=renderer.wants_steps)
    try:
        try:
            async for prompt_index, event in run.events():
                for payload in renderer.on_canvas(prompt_index, event):
                    yield sse(payload)
            payloads = list(renderer.on_result(run.job.future.result()))
        except Exception as error:  # the stream has started: the error becomes its last event
            if not isinstance(error, ApiError):
                logger.error("%s failed: %s", plan.id, error, exc_info=not isinstance(error, JobCancelled))
            payloads = [error_body(error)]
        for payload in payloads:
            yield sse(payload)
        if done_marker:
            yield SSE_DONE
    finally:
        run.cancel()


def stream_response(worker: ModelWorker, plan: Plan, renderer: StreamRenderer, done_marker: bool) -> Response:
    return StreamingResponse(sse_events(worker, plan, renderer, done_marker), media_type="text/event-stream",
                             headers=SSE_HEADERS)


def log_run(plan_id: str, result: InfillResult) -> None:
    run = result.generation
    logger.info("%s: %d candidate(s), %d prompt tokens (%d encoded), %d steps in %.0f ms", plan_id,
                len(result.candidates), run.prompt_tokens, run.encoded_prompt_tokens, run.steps, run.wall_time_s * 1000)


# ------------------------------------------------------------------------------------------ text


def find_stop(text: str, stops: Iterable[str]) -> tuple[int, str] | None:
    """(start, stop string) of the stop that completes first in `text` (then the earliest), as a stream sees them."""
    best: tuple[int, str] | None = None
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (best is None or (at + len(stop), at) < (best[0] + len(best[1]), best[0])):
            best = (at, stop)
    return best


def held_back(text: str, stops: Iterable[str]) -> int:
    """The length of the longest tail of `text` that could be the start of a stop string."""
    return max((k for stop in stops for k in range(min(len(stop) - 1, len(text)), 0, -1)
                if text.endswith(stop[:k])), default=0)


class CommittedText:
    """The first candidate's text that can no longer change: every canvas committed before the current one.

    A CanvasText holds the committed canvases plus the current canvas's argmax; the last event of a canvas is its
    committed form, so when a new canvas starts, the previous event's text is final (a prefix of the answer:
    decoding drops only a character cut at its end).
    """

    def __init__(self) -> None:
        self._block = 0
        self._last = ""

    def update(self, event: CanvasText) -> str | None:
        """The newly committed text when `event` starts a new canvas, else None."""
        committed = self._last if event.block != self._block else None
        self._block, self._last = event.block, event.text
        return committed


class TextDeltas:
    """What one choice has streamed so far: never text past a stop string, nor a tail that may begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._sent = ""
        self._stopped = False

    def committed(self, text: str) -> str:
        """The delta to send for newly committed text."""
        if self._stopped:
            return ""
        found = find_stop(text, self._stops)
        if found is not None:
            text, self._stopped = text[:found[0]], True
        else:
            text = text[:len(text) - held_back(text, self._stops)]
        return self._advance(text)

    def final(self, text: str) -> str:
        """The rest of the choice's final text."""
        return self._advance(text)

    def _advance(self, text: str) -> str:
        if not text.startswith(self._sent):  # cannot happen (see CommittedText); never resend text
            logger.warning("streamed text %r is not a prefix of %r", self._sent, text)
            return ""
        delta, self._sent = text[len(self._sent):], text
        return delta


@dataclass(frozen=True)
class Choice:
    """One candidate as answered: cut to max_tokens and at the first stop string."""

    index: int
    text: str
    token_ids: tuple[int, ...]  # generated tokens up to max_tokens, without the stop token
    finish_reason: str  # "stop" (a stop token or string) or "length"
    stop_reason: str | int | None  # the stop string, or the stop_token_ids token; None for EOS and "length"
    generated_tokens: int  # token_ids plus the stop token
    score: float  # tokens per forward of its row

    @property
    def stop_type(self) -> str:
        """llama.cpp's name for the finish: eos, word (a stop string) or limit."""
        if isinstance(self.stop_reason, str):
            return "word"
        return "eos" if self.finish_reason == "stop" else "limit"


def finish_choice(model: LoadedModel, result: InfillResult, row: int, index: int, max_tokens: int,
                  stops: tuple[str, ...], stop_token_ids: tuple[int, ...]) -> Choice:
    candidate = result.candidates[row]
    ids, text = candidate.token_ids, candidate.text
    # The engine denoises whole canvases: a stop token past max_tokens does not count.
    on_token = candidate.finished and len(ids) < max_tokens
    if len(ids) > max_tokens:
        ids = ids[:max_tokens]
        text = model.decode(ids)
    stop_reason: str | int | None = None
    if on_token:
        token = result.generation.candidates[row][len(ids)]
        stop_reason = token if token in stop_token_ids else None  # vLLM names a stop_token_ids token, not EOS
    finish_reason = "stop" if on_token else "length"
    found = find_stop(text, stops)
    if found is not None:
        text, finish_reason, stop_reason = text[:found[0]], "stop", found[1]
    return Choice(index, text, ids, finish_reason, stop_reason, len(ids) + on_token, candidate.score)


# ------------------------------------------------------------------------------------------ /v1/completions


class CompletionPlan:
    """A completion request resolved against the loaded model: prompt ids, generation settings, response shapes."""

    def __init__(self, model: LoadedModel, request: CompletionRequest, name: str) -> None:
        self.model, self.request, self.name = model, request, name
        self.id = f"cmpl-{secrets.token_hex(16)}"
        self.created = int(time.time())
        model.check_ids(request.stop_token_ids, "stop_token_ids")
        self.prompt_ids = [model.prompt_ids(p, request.suffix, request.add_special_tokens) for p in request.prompts]
        self.max_tokens = request.max_tokens or model.engine.generation_config.max_new_tokens
        self.overrides = dict(GENERATION_OVERRIDES)
        if request.max_denoising_steps is not None:
            self.overrides["max_denoising_steps"] = request.max_denoising_steps

    def work(self, cancelled: Callable[[], bool], post: Post | None) -> list[InfillResult]:
        """Every prompt in turn, `n` candidates each as one batch (on the worker thread)."""
        results = []
        for index, ids in enumerate(self.prompt_ids):
            on_canvas = None if post is None else (lambda event, i=index: post((i, event)))
            results.append(complete_prompt(
                self.model.engine, ids, self.model.prompt_format, max_new_tokens=self.max_tokens,
                num_candidates=self.request.n, seed=self.request.seed, on_canvas=on_canvas, cancelled=cancelled,
                extra_stop_ids=self.request.stop_token_ids, **self.overrides,
            ))
            log_run(self.id, results[-1])
        return results

    def choices(self, results: list[InfillResult]) -> list[Choice]:
        n = self.request.n
        return [finish_choice(self.model, result, row, prompt_index * n + row, self.max_tokens, self.request.stop,
                              self.request.stop_token_ids)
                for prompt_index, result in enumerate(results) for row in range(n)]

    def choice_json(self, choice: Choice, text: str, extended: bool = False) -> dict[str, Any]:
        item: dict[str, Any] = {"index": choice.index, "text": text, "logprobs": None,
                                "finish_reason": choice.finish_reason, "stop_reason": choice.stop_reason}
        if self.request.return_token_ids or extended:
            item["token_ids"] = list(choice.token_ids)
        if extended:
            item["score"] = choice.score
        return item

    def delta_json(self, index: int, text: str) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": None, "stop_reason": None}

    def envelope(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.name,
                "choices": choices, **extra}

    def usage(self, choices: list[Choice]) -> dict[str, int]:
        prompt_tokens = sum(len(ids) for ids in self.prompt_ids)
        completion_tokens = sum(choice.generated_tokens for choice in choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def response(self, results: list[InfillResult], extended: bool = False) -> dict[str, Any]:
        """The non-streaming response; `extended` adds scores, token ids and run statistics (/v1/canvas)."""
        choices = self.choices(results)
        body = self.envelope([self.choice_json(choice, choice.text, extended) for choice in choices],
                             usage=self.usage(choices))
        if extended:
            runs = [result.generation for result in results]
            body["diffgemma"] = {
                "steps": sum(run.steps for run in runs),
                "blocks": sum(run.blocks for run in runs),
                "prompt_tokens": sum(run.prompt_tokens for run in runs),
                "encoded_prompt_tokens": sum(run.encoded_prompt_tokens for run in runs),
                "wall_time_ms": sum(run.wall_time_s for run in runs) * 1000,
                "tokens_per_forward": sum(run.tokens_per_forward for run in runs) / len(runs),
            }
        return body

class CompletionStream:
    """`/v1/completions` with stream: the first candidate canvas by canvas, then each choice's rest, then usage."""

    def __init__(self, plan: CompletionPlan) -> None:
        self.plan = plan
        self.wants_steps = plan.model.streams_canvases and plan.max_tokens > plan.model.engine.config.canvas_length
        self.canvases = [CommittedText() for _ in plan.prompt_ids]
        self.deltas = [TextDeltas(plan.request.stop) for _ in range(len(plan.prompt_ids) * plan.request.n)]

    def on_canvas(self, prompt_index: int, event: CanvasText) -> Iterator[dict[str, Any]]:
        committed = self.canvases[prompt_index].update(event)
        if committed is None or not self.plan.model.streams_canvases:
            return
        index = prompt_index * self.plan.request.n
        if delta := self.deltas[index].committed(committed):
            yield self.plan.envelope([self.plan.delta_json(index, delta)])

    def on_result(self, results: list[InfillResult]) -> Iterator[dict[str, Any]]:
        choices = self.plan.choices(results)
        for choice in choices:
            yield self.plan.envelope([self.plan.choice_json(choice, self.deltas[choice.index].final(choice.text))])
        if self.plan.request.include_usage:
            yield self.plan.envelope([], usage=self.plan.usage(choices))


class CanvasStream:
    """`/v1/canvas`: every denoising step of the first candidate, then the complete, extended response."""

    wants_steps = True

    def __init__(self, plan: CompletionPlan) -> None:
        self.plan = plan

    def on_canvas(self, prompt_index: int, event: CanvasText) -> Iterator[dict[str, Any]]:
        found = find_stop(event.text, self.plan.request.stop)
        yield {"object": "diffgemma.canvas", "index": prompt_index * self.plan.request.n, "block": event.block,
               "step": event.step, "max_steps": event.max_steps,
               "text": event.text if found is None else event.text[:found[0]],
               "accepted_fraction": event.accepted_fraction}

    def on_result(self, results: list[InfillResult]) -> Iterator[dict[str, Any]]:
        yield self.plan.response(results, extended=True)


# ------------------------------------------------------------------------------------------ /infill


def render_extra(chunk: ExtraChunk) -> str:
    """An input_extra chunk labelled as the language server labels a cross-file snippet (lsp_server.context)."""
    comment = language_for(uri=chunk.filename).line_comment
    label = f"{comment} Path: {chunk.filename}\n" if comment else f"Path: {chunk.filename}\n"
    return f"{label}{chunk.text}\n"


@dataclass(frozen=True)
class WarmUp:
    """A warm-up's outcome: the prompt tokens encoded into the prefix cache (the rest were cached)."""

    encoded: int
    seconds: float


def project(body: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """llama.cpp's response_fields (json_get_nested_values): each "a/b" path that exists, as a flat "a/b" key."""
    if not paths:
        return body
    projected = {}
    for path in paths:
        value: Any = body
        for key in path.split("/"):
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            projected[path] = value
    return projected


def timings(prompt_n: int, prompt_ms: float, predicted_n: int, predicted_ms: float, cache_n: int) -> dict[str, Any]:
    """llama.cpp's timings object; rates over nothing are 0 (llama.cpp would send null for its inf/nan)."""

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    return {
        "cache_n": cache_n,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": ratio(prompt_ms, prompt_n),
        "prompt_per_second": ratio(1000.0 * prompt_n, prompt_ms),
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": ratio(predicted_ms, predicted_n),
        "predicted_per_second": ratio(1000.0 * predicted_n, predicted_ms),
    }


class InfillPlan:
    """An infill request resolved against the loaded model."""

    def __init__(self, model: LoadedModel, request: InfillRequest, name: str) -> None:
        self.model, self.request, self.name = model, request, name
        self.id = f"infill-{secrets.token_hex(8)}"
        prefix = "".join(map(render_extra, request.input_extra)) + request.input_prefix + request.prompt
        _, self.prompt_ids = infill_prompt(model.engine, prefix, request.input_suffix)
        self.max_tokens = request.n_predict or model.engine.generation_config.max_new_tokens

    def work(self, cancelled: Callable[[], bool], post: Post | None) -> InfillResult | WarmUp:
        if self.request.warm_up:
            started = time.perf_counter()
            encoded = self.model.engine.prefill(self.prompt_ids)
            logger.info("%s: warm-up, %d prompt tokens (%d encoded)", self.id, len(self.prompt_ids), encoded)
            return WarmUp(encoded, time.perf_counter() - started)
        on_canvas = None if post is None else (lambda event: post((0, event)))
        result = complete_prompt(
            self.model.engine, self.prompt_ids, self.model.prompt_format, max_new_tokens=self.max_tokens,
            num_candidates=self.request.n_cmpl, seed=self.request.seed, on_canvas=on_canvas, cancelled=cancelled,
            **GENERATION_OVERRIDES,
        )
        log_run(self.id, result)
        return result

    def choices(self, result: InfillResult) -> list[Choice]:
        return [finish_choice(self.model, result, row, row, self.max_tokens, self.request.stop, ())
                for row in range(len(result.candidates))]

    def result_json(self, index: int, content: str, predicted_n: int, stop_type: str, stopping_word: str,
                    timing: dict[str, Any]) -> dict[str, Any]:
        prompt_tokens = len(self.prompt_ids)
        body = {
            "index": index,
            "content": content,
            "stop": True,
            "model": self.name,
            "tokens_predicted": predicted_n,
            "tokens_evaluated": prompt_tokens,
            "has_new_line": "\n" in content,
            "truncated": False,  # the whole prompt is encoded
            "stop_type": stop_type,
            "stopping_word": stopping_word,
            "tokens_cached": prompt_tokens + predicted_n,
            "timings": timing,
        }
        return project(body, self.request.response_fields)

    def finals(self, result: InfillResult | WarmUp, stream: bool) -> list[tuple[Choice | None, dict[str, Any]]]:
        """Each completion's final object (llama.cpp sends content "" in a stream's final chunk)."""
        prompt_tokens = len(self.prompt_ids)
        if isinstance(result, WarmUp):
            timing = timings(result.encoded, result.seconds * 1000, 0, 0.0, prompt_tokens - result.encoded)
            return [(None, self.result_json(0, "", 0, "limit", "", timing))]
        run = result.generation
        finals = []
        for choice in self.choices(result):
            timing = timings(run.encoded_prompt_tokens, run.encoder_time_s * 1000, choice.generated_tokens,
                             run.decoder_time_s * 1000, prompt_tokens - run.encoded_prompt_tokens)
            stopping_word = choice.stop_reason if isinstance(choice.stop_reason, str) else ""
            finals.append((choice, self.result_json(choice.index, "" if stream else choice.text,
                                                    choice.generated_tokens, choice.stop_type, stopping_word,
                                                    timing)))
        return finals

    def response(self, result: InfillResult | WarmUp) -> Any:
        """One object, or llama.cpp's array of objects for several completions (n_cmpl > 1)."""
        bodies = [body for _, body in self.finals(result, stream=False)]
        return bodies[0] if len(bodies) == 1 else bodies


class InfillStream:
    """`/infill` with stream: `{"content": delta, "stop": false}` chunks, then each completion's final object."""

    def __init__(self, plan: InfillPlan) -> None:
        self.plan = plan
        self.wants_steps = plan.model.streams_canvases and plan.max_tokens > plan.model.engine.config.canvas_length
        self.canvas = CommittedText()
        self.deltas = [TextDeltas(plan.request.stop) for _ in range(plan.request.n_cmpl)]

    @staticmethod
    def partial(index: int, content: str) -> dict[str, Any]:
        return {"index": index, "content": content, "stop": False}

    def on_canvas(self, prompt_index: int, event: CanvasText) -> Iterator[dict[str, Any]]:
        committed = self.canvas.update(event)
        if committed is not None and self.plan.model.streams_canvases:
            if delta := self.deltas[0].committed(committed):
                yield self.partial(0, delta)

    def on_result(self, result: InfillResult | WarmUp) -> Iterator[dict[str, Any]]:
        for choice, final in self.plan.finals(result, stream=True):
            if choice is not None and (delta := self.deltas[choice.index].final(choice.text)):
                yield self.partial(choice.index, delta)
            yield final


# ------------------------------------------------------------------------------------------ the app


class HttpServer:
    """The HTTP routes over one ModelWorker."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.worker = ModelWorker(config)
        self.created = int(time.time())
        self._key = config.api_key.encode() if config.api_key else None

    def app(self) -> Starlette:
        routes = [
            Route("/health", self._endpoint(self.health, authenticated=False), methods=["GET"]),
            Route("/v1/models", self._endpoint(self.models), methods=["GET"]),
            Route("/v1/completions", self._endpoint(self.completions), methods=["POST"]),
            Route(CANVAS_PATH, self._endpoint(self.canvas), methods=["POST"]),
            Route("/infill", self._endpoint(self.infill), methods=["POST"]),
        ]
        return Starlette(routes=routes, lifespan=self._lifespan,
                         exception_handlers={HTTPException: self._http_error})  # type: ignore[dict-item]

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.worker.start(asyncio.get_running_loop())  # the scheduler needs the running loop
        try:
            yield
        finally:
            self.worker.stop()

    # -------------------------------------------------------------------------------------- routes

    async def health(self, request: Request) -> Response:
        health = self.worker.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ready" else 503)

    async def models(self, request: Request) -> Response:
        extension: dict[str, Any] = {"status": self.worker.status, "version": VERSION,
                                     "canvas_stream": CANVAS_PATH, "xargs": list(VLLM_XARGS)}
        if self.worker.loaded is not None:
            extension.update(self.worker.loaded.info())
        name = self.config.served_model_name
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "diffgemma", "root": name,
                "parent": None, "max_model_len": None, "diffgemma": extension}
        return JSONResponse({"object": "list", "data": [card]})

    async def completions(self, request: Request) -> Response:
        plan = await self._completion_plan(request)
        if plan.request.stream:
            return stream_response(self.worker, plan, CompletionStream(plan), done_marker=True)
        results = await result_or_cancel(request, Run(self.worker, plan, stream=False))
        return JSONResponse(plan.response(results))

    async def canvas(self, request: Request) -> Response:
        plan = await self._completion_plan(request)
        return stream_response(self.worker, plan, CanvasStream(plan), done_marker=True)

    async def infill(self, request: Request) -> Response:
        infill_request = parse_infill(read_json(await request.body()))
        plan = InfillPlan(self.worker.model(), infill_request, self.config.served_model_name)
        if infill_request.stream:  # llama.cpp ends its native streams without [DONE]
            return stream_response(self.worker, plan, InfillStream(plan), done_marker=False)
        result = await result_or_cancel(request, Run(self.worker, plan, stream=False))
        return JSONResponse(plan.response(result))

    # -------------------------------------------------------------------------------------- plumbing

    async def _completion_plan(self, request: Request) -> CompletionPlan:
        completion = parse_completion(read_json(await request.body()))
        name = self.config.served_model_name
        if completion.model is not None and completion.model != name:
            raise ApiError(404, f"The model `{completion.model}` does not exist; this server serves `{name}`.",
                           "not_found_error", "model")
        return CompletionPlan(self.worker.model(), completion, name)

    def _authorize(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            raise ApiError(401, "invalid or missing API key: send Authorization: Bearer <key>",
                           "authentication_error")

    def _endpoint(self, handler: Callable[[Request], Any], authenticated: bool = True) -> Callable[[Request], Any]:
        """`handler` with the API key check and every failure answered as a JSON error; the server never crashes."""

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                if authenticated:
                    self._authorize(request)
                return await handler(request)
            except ApiError as error:
                return JSONResponse(error.body(), status_code=error.status)
            except ClientGone:
                return Response(status_code=499)  # nginx's "client closed request": nobody reads it
            except Exception as error:
                logger.error("%s %s failed: %s", request.method, request.url.path, error,
                             exc_info=not isinstance(error, JobCancelled))
                body = error_body(error)
                return JSONResponse(body, status_code=body["error"]["code"])

        return endpoint

    async def _http_error(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        body = ApiError(error.status_code, str(error.detail), kind).body()
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)


def create_app(config: ServeConfig) -> Starlette:
    """The ASGI app; it loads the model on its worker thread when the server starts (the ASGI lifespan)."""
    return HttpServer(config).app()
