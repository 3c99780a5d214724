"""Completion back-ends: the `Completer` protocol the runner drives, and `make_completer`, the one place they are built.

Back-ends: "server" (the default: starts `diffgemma-lsp --stdio` and acts as a headless LSP client), "direct"
(calls the engine in-process), "oracle" (returns each task's reference: a check of the harness itself, which
must then score pass@1 = 1.0 and exact match 1.0; it measures nothing about any model) and "empty" (fills every
hole with nothing: the floor a model must beat, since some holes are lines the tests never need).
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from lsprotocol import types
from pygls.lsp.client import LanguageClient

import engine
from lsp_server.bench import BenchError
from lsp_server.bench.tasks import InfillTask
from lsp_server.languages import LANGUAGES

if TYPE_CHECKING:
    from lsp_server.documents import Document
    from lsp_server.pipeline import InfillPipeline
    from lsp_server.settings import Settings

BACKENDS = ("server", "direct", "oracle", "empty")
# Back-ends that run no model (a --model for them is a mistake).
MODEL_FREE_BACKENDS = ("oracle", "empty")


@dataclass(frozen=True)
class Completion:
    text: str  # what fills the hole
    latency_ms: float  # end to end, request to usable text, as the user of this back-end waits for it
    # Engine-side measurements; None where the back-end has no engine or does not report them.
    engine_ms_per_canvas: float | None = None
    engine_ms_per_step: float | None = None
    tokens_per_forward: float | None = None
    peak_memory_mb: float | None = None


class CompletionError(Exception):
    """One request failed but the back-end can take the next (it is scored as a failed sample, with the message).
    Any other exception from `complete` stops the run; finished tasks stay in the output for a resumed run."""


class Completer(Protocol):
    name: str

    def complete(self, task: InfillTask) -> Completion:
        """Fill `task`'s hole given task.prefix and task.suffix (the document is prefix + suffix, opened as
        task.path in task.language, the cursor at len(prefix))."""

    def close(self) -> None:
        """Release the back-end (stop the server, free the model)."""


@dataclass(frozen=True)
class CompleterSettings:
    backend: str  # one of BACKENDS
    model: str | None  # checkpoint directory or name (--model); None: the back-end's default
    seed: int  # for back-ends that sample
    dtype: str = "auto"  # the server setting (auto: bfloat16 where the CPU multiplies it natively)
    engine_mode: str = "serving"  # the server settings engineMode and compile
    compile: bool = True
    server_log: Path | None = None  # the server back-end's log file; None: discarded


def make_completer(settings: CompleterSettings) -> Completer:
    """Build and start the back-end; the runner measures how long this takes as the start-up cost."""
    if settings.backend == "oracle":
        return FixedCompleter("oracle", lambda task: task.reference)
    if settings.backend == "empty":
        return FixedCompleter("empty", lambda task: "")
    if settings.backend == "direct":
        return DirectCompleter(settings)
    if settings.backend == "server":
        return ServerCompleter(settings)
    raise BenchError(f"unknown completer {settings.backend!r}; choose from {', '.join(BACKENDS)}")


class FixedCompleter:
    """A model-free back-end whose text for a task is `text_of(task)`: the reference (oracle) or nothing (empty)."""

    def __init__(self, name: str, text_of: Callable[[InfillTask], str]):
        self.name = name
        self._text_of = text_of

    def complete(self, task: InfillTask) -> Completion:
        started = time.perf_counter()
        text = self._text_of(task)
        return Completion(text=text, latency_ms=(time.perf_counter() - started) * 1000.0)

    def close(self) -> None:
        pass


def language_id(task: InfillTask) -> str:
    """The LSP languageId an editor would open the task's document with."""
    return next(spec.language_ids[0] for spec in LANGUAGES if spec.name == task.language)


def cursor_position(prefix: str) -> tuple[int, int]:
    """The LSP position (UTF-16 columns) of the cursor after `prefix`."""
    line = prefix.count("\n")
    return line, _utf16_length(prefix[prefix.rfind("\n") + 1 :])


def task_document(task: InfillTask) -> Document:
    """The task's document as an editor opens it: prefix + suffix, under its path, in its language."""
    from lsp_server.documents import Document

    return Document(f"file:///bench/{task.path}", task.prefix + task.suffix, language_id=language_id(task))


def load_pipeline(settings: CompleterSettings) -> tuple[InfillPipeline, Settings]:
    """The server's pipeline on the checkpoint the settings name, with the server settings it runs under."""
    from lsp_server.pipeline import InfillPipeline, load_engine, warm_up
    from lsp_server.settings import Settings

    server_settings = Settings(seed=settings.seed, dtype=settings.dtype, engine_mode=settings.engine_mode,
                               compile=settings.compile, **({"model": settings.model} if settings.model else {}))
    try:
        loaded = load_engine(server_settings)
        warm_up(loaded, server_settings)
        return InfillPipeline(loaded), server_settings
    except (engine.CheckpointError, ValueError) as exc:
        raise BenchError(f"cannot load the model: {exc}") from None


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _engine_figures(steps: int, blocks: int, wall_ms: float) -> dict[str, float | None]:
    return {"engine_ms_per_canvas": wall_ms / blocks if blocks else None,
            "engine_ms_per_step": wall_ms / steps if steps else None}


class DirectCompleter:
    """The server's pipeline (context -> Engine.infill -> post-processing -> ranking), in this process."""

    name = "direct"

    def __init__(self, settings: CompleterSettings):
        self.pipeline, self.settings = load_pipeline(settings)

    def complete(self, task: InfillTask) -> Completion:
        document = task_document(task)
        started = time.perf_counter()
        try:
            done = self.pipeline.complete(document, cursor_position(task.prefix), self.settings, invoked=True)
        except engine.GenerationCancelled as exc:
            raise CompletionError(f"generation cancelled: {exc}") from None
        latency = (time.perf_counter() - started) * 1000.0
        if done.result is None:  # the context decided no completion belongs here
            return Completion(text="", latency_ms=latency, peak_memory_mb=_peak_memory_mb())
        generation = done.result.generation
        return Completion(text=done.text or "", latency_ms=latency,
                          tokens_per_forward=generation.tokens_per_forward, peak_memory_mb=_peak_memory_mb(),
                          **_engine_figures(generation.steps, generation.blocks, generation.wall_time_s * 1000.0))

    def close(self) -> None:
        self.pipeline = None


class _BenchClient(LanguageClient):
    """The LSP client, keeping the end of the server's stderr: where a server that crashes leaves its traceback
    (its log goes to a file, so nothing else fills that pipe, which nobody reads while the server runs)."""

    STDERR_TAIL_CHARS = 2000

    def __init__(self) -> None:
        super().__init__("diffgemma-bench", "1")
        self.exited = threading.Event()
        self.stderr_tail = ""

    async def server_exit(self, server: asyncio.subprocess.Process) -> None:
        error_output = await server.stderr.read()
        self.stderr_tail = error_output.decode("utf-8", "replace").strip()[-self.STDERR_TAIL_CHARS:]
        self.exited.set()


class ServerCompleter:
    """A headless LSP client: starts `diffgemma-lsp --stdio`, opens each task's document, asks for an inline
    completion at the hole (as an editor's explicit invocation) and applies the returned edit."""

    name = "server"
    READY_TIMEOUT_S = 300.0
    REQUEST_TIMEOUT_S = 300.0
    EXIT_POLL_S = 0.2  # how often the wait for the model checks that the server is still running
    EXIT_REPORT_TIMEOUT_S = 10.0  # for the client to collect what a server that exited wrote

    def __init__(self, settings: CompleterSettings):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-lsp-client", daemon=True)
        self._thread.start()
        self._client = _BenchClient()
        self._status: dict = {}
        self._ready = threading.Event()
        self._documents = 0

        @self._client.feature("diffgemma/status")
        def on_status(params):
            self._status = {"state": _field(params, "state"), "message": _field(params, "message")}
            if self._status["state"] in ("ready", "error"):
                self._ready.set()

        @self._client.feature(types.WINDOW_LOG_MESSAGE)
        @self._client.feature(types.WINDOW_SHOW_MESSAGE)
        def on_message(params):
            """Accepted and dropped: the server's log file has every message."""

        log_file = str(settings.server_log) if settings.server_log else os.devnull
        command = [sys.executable, "-m", "lsp_server", "--stdio", "--log-file", log_file]
        if settings.model:
            command += ["--model", settings.model]
        options = {"seed": settings.seed, "dtype": settings.dtype, "engineMode": settings.engine_mode,
                   "compile": settings.compile, "canvasNotifications": False}
        try:
            try:
                self._run(self._start(command, options), self.READY_TIMEOUT_S)
            except RuntimeError:  # pygls fails the pending initialize request when the server process exits
                if self._client.exited.wait(self.EXIT_REPORT_TIMEOUT_S):
                    raise self._exited_early() from None
                raise
            self._wait_for_model()
        except BaseException:
            self.close()
            raise

    def _wait_for_model(self) -> None:
        deadline = time.monotonic() + self.READY_TIMEOUT_S
        while not self._ready.wait(self.EXIT_POLL_S):
            if self._client.exited.is_set():
                raise self._exited_early()
            if time.monotonic() > deadline:
                raise BenchError(f"the server did not load its model within {self.READY_TIMEOUT_S:.0f} s")
        if self._status.get("state") == "error":
            raise BenchError(f"the server could not load the model: {self._status.get('message')}")

    def _exited_early(self) -> BenchError:
        return BenchError("the server exited before its model was ready; its error output: "
                          + (self._client.stderr_tail or "(none)"))

    def _run(self, coroutine, timeout: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self, command: list[str], options: dict) -> None:
        await self._client.start_io(*command)
        capabilities = types.ClientCapabilities(
            text_document=types.TextDocumentClientCapabilities(
                inline_completion=types.InlineCompletionClientCapabilities()),
            general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
        )
        await self._client.initialize_async(types.InitializeParams(
            capabilities=capabilities, initialization_options=options, process_id=os.getpid()))
        self._client.initialized(types.InitializedParams())

    def complete(self, task: InfillTask) -> Completion:
        return self._run(self._complete(task), self.REQUEST_TIMEOUT_S)

    async def _complete(self, task: InfillTask) -> Completion:
        self._documents += 1
        uri = f"file:///bench/{self._documents}/{task.path}"
        client = self._client
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=uri, language_id=language_id(task), version=1,
            text=task.prefix + task.suffix)))
        line, character = cursor_position(task.prefix)
        before_runs = await self._last_run_count()
        started = time.perf_counter()
        try:
            answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=line, character=character)))
        except Exception as exc:  # an LSP error response for this request: the next task can still run
            raise CompletionError(f"inline completion failed: {exc}") from None
        latency = (time.perf_counter() - started) * 1000.0
        stats = await client.protocol.send_request_async("diffgemma/stats", None)
        client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri=uri)))
        text = _applied_middle(answer, task.prefix, line, character)
        figures: dict = {}
        last = _field(stats, "lastRun")
        if last is not None and _field(stats, "modelRuns") > before_runs:
            figures = _engine_figures(_field(last, "steps"), _field(last, "blocks"), _field(last, "wallMs"))
            figures["tokens_per_forward"] = _field(last, "tokensPerForward")
        return Completion(text=text, latency_ms=latency, **figures)

    async def _last_run_count(self) -> int:
        stats = await self._client.protocol.send_request_async("diffgemma/stats", None)
        return _field(stats, "modelRuns")

    def close(self) -> None:
        try:
            if self._client.stopped is False:
                self._run(self._stop(), 30.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _stop(self) -> None:
        try:
            await self._client.shutdown_async(None)
            self._client.exit(None)
        finally:
            await self._client.stop()


def _field(message, name: str):
    """A field of a custom LSP message, which pygls hands over as a namedtuple-like Object (or a dict)."""
    return message.get(name) if isinstance(message, dict) else getattr(message, name, None)


def _applied_middle(answer, prefix: str, line: int, character: int) -> str:
    """What the first inline item inserts at the cursor: its insertText minus the text it replaces before the
    cursor (the server's range runs from a point on the cursor's line to the cursor)."""
    items = answer.items if isinstance(answer, types.InlineCompletionList) else (answer or [])
    if not items:
        return ""
    item = items[0]
    insert = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
    if item.range is None:
        return insert
    if item.range.start.line != line or (item.range.end.line, item.range.end.character) != (line, character):
        raise CompletionError(f"the server's replace range {item.range} does not end at the cursor")
    current_line = prefix[prefix.rfind("\n") + 1 :].encode("utf-16-le")
    replaced = current_line[2 * item.range.start.character :].decode("utf-16-le")
    if not insert.startswith(replaced):
        raise CompletionError("the inline item's text does not start with the text it replaces")
    return insert[len(replaced):]
