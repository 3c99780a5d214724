"""The diffgemma language server: LSP 3.18 inline completion from the infill pipeline, with a completion fallback.

Threads: the asyncio loop owns the documents and answers every message; one worker thread (the
:class:`~lsp_server.scheduler.Scheduler`) owns the model. A completion request builds its context on the loop,
waits for the worker without blocking the loop, then post-processes on the loop. So ``initialize``,
``shutdown``, ``$/cancelRequest`` and new requests are answered while the model runs.

Custom protocol:

* ``diffgemma/stats`` (request): counters, latency and the last model run (see :mod:`lsp_server.stats`).
* ``diffgemma/status`` (notification): ``{state: loading|ready|busy|error, message, model}``.
* ``diffgemma/canvas`` (notification): ``{uri, position, requestId, block, step, maxSteps, text,
  acceptedFraction}`` after every denoising step; ``step`` counts from 1 across the canvases of a request.
* ``diffgemma.acceptInlineCompletion`` (command, argument: the completion id): sent by the client when a
  suggestion is accepted; items carry it as their ``command``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any, BinaryIO, NoReturn

import cattrs
from lsprotocol import types
from pygls.capabilities import get_capability
from pygls.exceptions import (
    FeatureNotificationError,
    FeatureRequestError,
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcServerNotInitialized,
)
from pygls.lsp.server import LanguageServer
from pygls.io_ import StdoutWriter
from pygls.protocol import LanguageServerProtocol, default_converter
from pygls.protocol.language_server import lsp_method

from engine import CanvasText, Engine, InfillResult
from lsp_server import VERSION
from lsp_server.completion_cache import ResultCache, TypedAhead
from lsp_server.completion_mode import CompletionMode
from lsp_server.context import InfillContext
from lsp_server.documents import Document, DocumentError, DocumentNotOpenError, DocumentStore
from lsp_server.jsonrpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    READ_CHUNK_BYTES,
    ChunkSource,
    Envelope,
    FrameReader,
    Rejection,
    parse_envelope,
    strict_converter,
)
from lsp_server.pipeline import InfillPipeline, load_model
from lsp_server.positions import PositionError, encode_text
from lsp_server.remote import RemoteError, RemoteModel
from lsp_server.scheduler import Job, JobCancelled, Scheduler
from lsp_server.settings import LOAD_FIELDS, Settings, apply_changes
from lsp_server.stats import LastRun, Stats

logger = logging.getLogger(__name__)


ACCEPT_COMMAND = "diffgemma.acceptInlineCompletion"
STATS_REQUEST = "diffgemma/stats"
STATUS_NOTIFICATION = "diffgemma/status"
CANVAS_NOTIFICATION = "diffgemma/canvas"
MODEL_JOB = "model"  # scheduler key of model loads: a newer load supersedes an older one
# Completion ids remembered for the accept command (older ones are forgotten).
ISSUED_IDS = 1024
_COMPLETION_LABEL_CHARS = 60
_WORD_BEFORE_CURSOR = re.compile(r"\w*\Z")


class Status(str, Enum):
    LOADING = "loading"
    READY = "ready"
    BUSY = "busy"
    ERROR = "error"


class DiffgemmaProtocol(LanguageServerProtocol):
    """pygls' protocol with these changes, each for the client's sake.

    * Messages arrive through :meth:`receive`, already framed and checked by :mod:`lsp_server.jsonrpc`, and the LSP
      lifecycle is enforced there: every request before ``initialize`` gets ServerNotInitialized (-32002), a second
      ``initialize`` and every request after ``shutdown`` get InvalidRequest (-32600), as does a notification
      method sent with an id; notifications other than ``exit`` before ``initialize`` or after ``shutdown`` are
      dropped. So every request is answered exactly once.
    * A request whose params do not deserialize gets an InvalidParams error response (pygls only logs it, and
      the client would wait for an answer forever); scalars are never coerced (``strict_converter``).
    * ``completionProvider`` is advertised only to clients without inline completion, which use it as fallback.
    * Text synchronisation goes to the server's own DocumentStore only: pygls' workspace would keep a second
      copy of every document and apply every keystroke twice.
    """

    def __init__(self, server: Any, converter: Any):
        super().__init__(server, converter)
        self._initialize_received = False

    def reject(self, rejection: Rejection) -> None:
        self._send_data(rejection.response())

    def receive(self, envelope: Envelope) -> None:
        """Handle one well-formed message (see the class docstring for what the lifecycle refuses)."""
        message, method = envelope.message, envelope.method
        if envelope.kind == "request":
            refusal = self._lifecycle_refusal(method)
            if refusal is not None:
                self.reject(Rejection(message["id"], *refusal))
                return
            self._initialize_received |= method == types.INITIALIZE
        elif envelope.kind == "notification" and method != types.EXIT and (
                self._shutdown or not self._initialize_received):
            logger.info("dropped the notification %s (%s)", method,
                        "after shutdown" if self._shutdown else "before initialize")
            return
        if envelope.kind != "response" and message.get("params") is None:
            message = {**message, "params": None}  # JSON-RPC lets a request omit params that it does not need
        try:
            structured = self.structure_message(message)
        except JsonRpcException:  # a request was answered with InvalidParams; a notification is logged
            logger.warning("unreadable %s %s", envelope.kind, method or message.get("id"))
            return
        self.handle_message(structured)

    def _lifecycle_refusal(self, method: str) -> tuple[int, str] | None:
        types_of = types.METHOD_TO_TYPES.get(method)
        if types_of is not None and types_of[0].__name__.endswith("Notification"):
            return INVALID_REQUEST, f"{method} is a notification: send it without an id"
        if self._shutdown:
            return INVALID_REQUEST, f"{method} after shutdown: only the exit notification is accepted now"
        if not self._initialize_received and method != types.INITIALIZE:
            return JsonRpcServerNotInitialized.CODE, f"{method} before initialize: the server is not initialized"
        if self._initialize_received and method == types.INITIALIZE:
            return INVALID_REQUEST, "initialize was already received: it may be sent once per connection"
        return None

    def structure_message(self, data: Any) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as error:
            if isinstance(data, dict) and "id" in data and "method" in data:
                cause = error.__cause__
                reason = "; ".join(cattrs.transform_error(cause)) if isinstance(cause, Exception) else str(error)
                self._send_response(
                    data["id"],
                    error=JsonRpcInvalidParams(f"invalid params for {data['method']}: {reason}").to_response_error(),
                )
            raise

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Generator[Any, Any, types.InitializeResult]:
        result = yield from super().lsp_initialize(params)
        if get_capability(params.capabilities, "text_document.inline_completion") is not None:
            result.capabilities.completion_provider = None
        return result

    def _user_handler(self, method: str, params: Any) -> Generator[Any, Any, None]:
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        yield from self._user_handler(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        yield from self._user_handler(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        yield from self._user_handler(types.TEXT_DOCUMENT_DID_CLOSE, params)


@dataclass(frozen=True)
class Answer:
    """Suggestions (best first) for a cursor, and what the client items are built from."""

    document: Document
    position: types.Position
    offset: int  # byte offset of the cursor
    suggestions: list[str]

    @property
    def line_before_cursor(self) -> str:
        return self.document.text_between(self.document.line_start(self.position.line), self.offset)


class DiffgemmaServer(LanguageServer):
    protocol: DiffgemmaProtocol

    def __init__(self) -> None:
        super().__init__("diffgemma-lsp", VERSION, protocol_cls=DiffgemmaProtocol,
                         converter_factory=lambda: strict_converter(default_converter()),
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.base_settings = Settings()  # from the command line; client settings apply over them
        self.settings = Settings()
        self.documents = DocumentStore()
        self.stats = Stats()
        self.results: ResultCache[InfillResult] = ResultCache(self.settings.cache_size)
        self.typed_ahead = TypedAhead()
        self.pipeline: InfillPipeline | None = None
        self.status = Status.LOADING
        self.scheduler: Scheduler | None = None
        self.shutdown_requested = False
        self._completion_ids = (f"dg-{n}" for n in itertools.count(1))
        self._request_numbers = itertools.count(1)
        self._newest_request: dict[str, int] = {}  # per document: the number of the newest completion request
        self._issued: OrderedDict[str, None] = OrderedDict()
        self._disabled_logged: set[str] = set()
        self._remote_problem: str | None = None  # the reason last logged for a remote model's failure

    # ------------------------------------------------------------------------------------------- messages

    def log(self, level: types.MessageType, message: str) -> None:
        logger.log({types.MessageType.Error: logging.ERROR, types.MessageType.Warning: logging.WARNING}
                   .get(level, logging.INFO), message)
        self.window_log_message(types.LogMessageParams(type=level, message=message))

    def report_server_error(self, error: Exception, source: Any) -> None:
        # Logged, never shown: a client that sends one bad message per keystroke must not get a dialog for each.
        what = {FeatureRequestError: "request failed", FeatureNotificationError: "notification failed"}
        self.log(types.MessageType.Error, f"{what.get(source, 'unreadable message')}: {error}")

    def set_status(self, status: Status, message: str) -> None:
        self.status = status
        self.protocol.notify(STATUS_NOTIFICATION, {"state": status.value, "message": message,
                                                    "model": self.settings.model})

    # ------------------------------------------------------------------------------------------ transport

    def start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        """Serve over stdio until the input ends (pygls' reader replaced by :mod:`lsp_server.jsonrpc`)."""
        stdin = stdin or sys.stdin.buffer
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        reading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsp-stdin")
        read = getattr(stdin, "read1", stdin.read)

        async def serve() -> None:
            loop = asyncio.get_running_loop()
            await self.serve_connection(ChunkSource(lambda: loop.run_in_executor(reading, read, READ_CHUNK_BYTES)))

        self._run_transport(serve)

    def start_tcp(self, host: str, port: int) -> None:
        """Serve one client over TCP (the connection ends the server, as with stdio)."""

        async def serve() -> None:
            reader, writer = await self._accept_one(host, port)
            self.protocol.set_writer(writer)
            await self.serve_connection(ChunkSource(lambda: reader.read(READ_CHUNK_BYTES)))

        self._run_transport(serve)

    @staticmethod
    async def _accept_one(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        connected: asyncio.Future = asyncio.get_running_loop().create_future()
        listener = await asyncio.start_server(lambda r, w: connected.done() or connected.set_result((r, w)), host, port)
        logger.info("listening on %s", ", ".join(str(sock.getsockname()) for sock in listener.sockets))
        reader, writer = await connected
        listener.close()
        return reader, writer

    def _run_transport(self, serve: Callable[[], Any]) -> None:
        self._stop_event = threading.Event()
        try:
            asyncio.run(serve())
        except BrokenPipeError:
            logger.error("the connection to the client is lost")
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.shutdown()

    async def serve_connection(self, source: ChunkSource) -> None:
        """Read, check and dispatch messages until the stream ends; nothing a client sends ends it earlier."""
        reader = FrameReader(source)
        while not self._stop_event.is_set():
            frame = await reader.next_frame()
            if frame is None:
                break
            try:
                envelope = (Rejection(None, PARSE_ERROR, f"Parse error: {frame.problem}") if frame.problem
                            else parse_envelope(frame.body))
                if isinstance(envelope, Rejection):
                    self.log(types.MessageType.Error, f"unreadable message: {envelope.message}")
                    self.protocol.reject(envelope)
                else:
                    self.protocol.receive(envelope)
            except Exception as error:  # noqa: BLE001 - one message's bug must not end the connection
                logger.exception("message handling failed")
                self.report_server_error(error, None)
            # Let the handlers this message started run before the next one, as when each message is a read.
            await asyncio.sleep(0)

    # ------------------------------------------------------------------------------------------ lifecycle

    def initialize(self, params: types.InitializeParams) -> None:
        encoding = self.workspace.position_encoding
        self.documents = DocumentStore(getattr(encoding, "value", encoding))  # pygls may give its enum
        self.scheduler = Scheduler(asyncio.get_running_loop(), self._on_worker_activity)
        self.settings, problems = apply_changes(self.base_settings, params.initialization_options)
        self.results.resize(self.settings.cache_size)
        for problem in problems:
            self.log(types.MessageType.Warning, f"initializationOptions: {problem} (ignored)")

    def exit_process(self) -> NoReturn:
        """End the process: code 0 after a shutdown request, 1 otherwise (LSP). Called on ``exit`` and when the
        connection ends. Immediately: tearing down torch's module graph takes about a second of garbage
        collection, and the model worker may be inside a forward pass."""
        logger.info("exiting (%s)", "after shutdown" if self.shutdown_requested else "without a shutdown request")
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0 if self.shutdown_requested else 1)

    def prepare_shutdown(self) -> None:
        """The client's shutdown request: stop the model work (pygls' own shutdown() stops the transport)."""
        self.shutdown_requested = True
        if self.scheduler is not None:
            self.scheduler.stop()

    async def load_model(self) -> None:
        """Load the model the settings name on the worker, reporting progress and status; never raises."""
        settings = self.settings
        previous, self.pipeline = self.pipeline, None
        self.set_status(Status.LOADING, f"loading {settings.model}")
        token = await self._create_progress()
        if token is not None:
            self.work_done_progress.begin(
                token, types.WorkDoneProgressBegin(title="diffgemma", message=f"loading {settings.model}"))

        def load(job: Job) -> InfillPipeline:
            if previous is not None:  # on the worker: no job of the previous model is running now
                previous.close()
            return InfillPipeline(load_model(settings))

        job = self.scheduler.submit(MODEL_JOB, load)
        try:
            pipeline = await job.future
        except JobCancelled:  # a newer load replaced this one; it reports for itself
            return
        except Exception as error:  # noqa: BLE001 - any load failure is reported to the user, the server serves on
            reason = f"could not load the model {settings.model!r}: {error}"
            self.set_status(Status.ERROR, reason)
            self.log(types.MessageType.Error, reason)
            self.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Error, message=f"diffgemma: {reason}"))
            return
        finally:
            if token is not None:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd())
        self.pipeline = pipeline
        description = pipeline.model.describe()
        self.log(types.MessageType.Info, f"model ready: {description}")
        if isinstance(pipeline.model, RemoteModel) and pipeline.model.problem is not None:
            self._remote_failed(RemoteError(pipeline.model.base_url, pipeline.model.problem))
        else:
            self.set_status(Status.READY, description)

    def _remote_failed(self, error: RemoteError) -> None:
        """Status error with the URL and the reason, logged when the reason changes (not once per keystroke)."""
        if self.status is not Status.ERROR or self._remote_problem != error.reason:
            self._remote_problem = error.reason
            self.log(types.MessageType.Warning, f"remote model unavailable: {error}")
        self.set_status(Status.ERROR, str(error))

    def _remote_recovered(self) -> None:
        if self.status is Status.ERROR and self.pipeline is not None:
            self._remote_problem = None
            description = self.pipeline.model.describe()
            self.log(types.MessageType.Info, f"remote model back: {description}")
            self.set_status(Status.READY, description)

    async def _create_progress(self) -> str | None:
        """A server-initiated work-done progress token, if the client supports them."""
        if not get_capability(self.client_capabilities, "window.work_done_progress", False):
            return None
        token = f"diffgemma-load-{uuid.uuid4()}"
        try:
            await self.work_done_progress.create_async(token)
        except Exception as error:  # noqa: BLE001 - a client that refuses the token just gets no progress bar
            self.log(types.MessageType.Warning, f"client refused a progress token: {error}")
            return None
        return token

    def change_settings(self, raw: Any) -> None:
        new, problems = apply_changes(self.settings, raw)
        for problem in problems:
            self.log(types.MessageType.Warning, f"settings: {problem} (ignored)")
        old, self.settings = self.settings, new
        changed = {name for name in vars(new) if getattr(old, name) != getattr(new, name)}
        self.results.resize(new.cache_size)
        if changed - {"enabled_languages", "cache_size", "canvas_notifications", "threads"}:
            self.results.clear()  # results of other generation settings must not answer for the new ones
            self.typed_ahead = TypedAhead()
        if changed & LOAD_FIELDS:
            asyncio.ensure_future(self.load_model())
        self.log(types.MessageType.Info, f"settings changed: {', '.join(sorted(changed)) or 'nothing'}")

    def _on_worker_activity(self, busy: bool) -> None:
        status = Status.BUSY if busy else Status.READY
        # Loads report their own status; a finished load may also report idle, after its READY.
        if self.pipeline is not None and self.status in (Status.READY, Status.BUSY) and status is not self.status:
            self.set_status(status, "generating" if busy else "idle")

    # ------------------------------------------------------------------------------------------ documents

    def open_document(self, params: types.DidOpenTextDocumentParams) -> None:
        item = params.text_document
        try:
            self.documents.open(item.uri, item.language_id, item.version, item.text)
        except DocumentError as error:
            self.log(types.MessageType.Error, f"cannot open {item.uri}: {error}")

    def change_document(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        try:
            self.documents.change(uri, params.text_document.version, params.content_changes)
        except DocumentNotOpenError as error:
            self.log(types.MessageType.Warning, f"change ignored: {error}")
        except (DocumentError, PositionError) as error:
            # Some changes may be applied and some not: the copy no longer matches the editor's, and completing
            # from it would insert text in the wrong place. Forget it until the client opens it again.
            self.close_document(uri)
            self.log(types.MessageType.Error, f"invalid change to {uri} ({error}); the document is closed "
                                              "on the server until the client opens it again")

    def close_document(self, uri: str) -> None:
        self.scheduler.supersede(uri)
        self.typed_ahead.forget(uri)
        self._newest_request.pop(uri, None)
        if uri in self.documents:
            self.documents.close(uri)

    # ----------------------------------------------------------------------------------------- completion

    async def inline_completion(self, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        answer = await self._answer(params.text_document.uri, params.position, invoked, params.work_done_token)
        if answer is None:
            return types.InlineCompletionList(items=[])
        # The range runs from the start of the cursor's line: VS Code shows an item only while the replaced text
        # is a prefix of insertText, and keeps showing it as the user types on; Neovim skips the common prefix.
        line_start = types.Position(line=answer.position.line, character=0)
        before = answer.line_before_cursor
        return types.InlineCompletionList(items=[
            types.InlineCompletionItem(
                insert_text=before + suggestion,
                range=types.Range(start=line_start, end=answer.position),
                command=self._accept_command(),
            )
            for suggestion in answer.suggestions
        ])

    async def completion(self, params: types.CompletionParams) -> types.CompletionList:
        """One item with a textEdit, for clients without inline completion."""
        invoked = params.context is None or params.context.trigger_kind == types.CompletionTriggerKind.Invoked
        answer = await self._answer(params.text_document.uri, params.position, invoked, params.work_done_token)
        if answer is None:
            return types.CompletionList(is_incomplete=True, items=[])
        word = _WORD_BEFORE_CURSOR.search(answer.line_before_cursor).group()
        word_start = answer.document.position_at(answer.offset - len(encode_text(word)))
        text = word + answer.suggestions[0]
        label = next(line.strip() for line in text.split("\n") if line.strip())  # a suggestion is never blank
        return types.CompletionList(
            # Incomplete: the suggestion depends on every character typed, so the client must ask again.
            is_incomplete=True,
            items=[types.CompletionItem(
                label=label[:_COMPLETION_LABEL_CHARS] + ("…" if len(label) > _COMPLETION_LABEL_CHARS else ""),
                kind=types.CompletionItemKind.Snippet,
                detail="diffgemma",
                filter_text=text,
                sort_text="0",
                insert_text_format=types.InsertTextFormat.PlainText,
                text_edit=types.TextEdit(
                    range=types.Range(start=types.Position(*word_start), end=answer.position), new_text=text),
                command=self._accept_command(),
            )],
        )

    def accept(self, completion_id: str) -> None:
        if completion_id not in self._issued:
            raise JsonRpcInvalidParams(f"unknown completion id {completion_id!r}")
        del self._issued[completion_id]
        self.stats.acceptances += 1

    def _accept_command(self) -> types.Command:
        completion_id = next(self._completion_ids)
        self._issued[completion_id] = None
        while len(self._issued) > ISSUED_IDS:
            self._issued.popitem(last=False)
        return types.Command(title="Accept diffgemma suggestion", command=ACCEPT_COMMAND, arguments=[completion_id])

    async def _answer(
        self, uri: str, position: types.Position, invoked: bool, work_done_token: types.ProgressToken | None
    ) -> Answer | None:
        if self.scheduler is None:
            raise JsonRpcServerNotInitialized("the server has not been initialized")
        started = time.perf_counter()
        self.stats.requests += 1
        try:
            answer = await self._suggest(uri, position, invoked, work_done_token)
        except JsonRpcException:  # an error response the client should see (e.g. a position outside the text)
            raise
        except Exception as error:  # noqa: BLE001 - a bug in context or post-processing costs one completion
            self.stats.errors += 1
            self.log(types.MessageType.Error,
                     f"completion for {uri} at {position.line}:{position.character} failed: {error!r}")
            return None
        if answer is not None:
            self.stats.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        return answer

    async def _suggest(
        self, uri: str, position: types.Position, invoked: bool, work_done_token: types.ProgressToken | None
    ) -> Answer | None:
        try:
            document = self.documents.get(uri)
        except DocumentNotOpenError as error:
            self.log(types.MessageType.Warning, f"no completion: {error}")
            return None
        try:
            offset = document.offset_at(position)
        except PositionError as error:
            raise JsonRpcInvalidParams(f"invalid position for {uri}: {error}") from None
        # A new request for a document supersedes the older one, however this one is answered.
        self.scheduler.supersede(uri)
        number = self._newest_request[uri] = next(self._request_numbers)
        if not self.settings.language_enabled(document.language_id, document.spec.name):
            if uri not in self._disabled_logged:
                self._disabled_logged.add(uri)
                self.log(types.MessageType.Info, f"no completions for {uri}: language "
                                                 f"{document.language_id or document.spec.name!r} is not enabled")
            return None
        pipeline, settings = self.pipeline, self.settings
        if pipeline is None:  # loading, or failed to load: the status notification says which
            return None

        source = document.source
        rest = self.typed_ahead.continuation(uri, source, offset)
        if rest is not None:
            self.stats.typed_ahead_hits += 1
            self.typed_ahead.remember(uri, source, offset, rest)
            return Answer(document, position, offset, [rest])

        context = pipeline.context(document, position, settings, self.documents.others(uri), invoked)
        if context.mode is CompletionMode.NONE:
            return None
        key = (context.prompt_prefix(), context.suffix)
        result = self.results.get(key)
        if result is not None:
            self.stats.cache_hits += 1
        else:
            revision = document.revision
            extras = pipeline.document_candidates(document, position, settings, self.documents.others(uri))
            result = await self._generate(pipeline, settings, context, extras, uri, position, work_done_token)
            if result is None:
                return None
            self.results.put(key, result)
            if self._newest_request.get(uri) != number:
                # The run finished, but a newer request arrived before this one could answer: it stays unanswered
                # like any superseded request, and its result stays cached.
                self.stats.cancellations += 1
                self.stats.superseded += 1
                return None
            current = self.documents.get(uri) if uri in self.documents else None
            if current is not document or document.revision != revision:
                # Edited while the model ran: post-processing needs the text the context was built from. The
                # result stays cached for a request that sees that text again.
                self.stats.stale += 1
                return None
        ranked = pipeline.rank(result, document, position, context.mode)
        if not ranked:
            return None
        self.typed_ahead.remember(uri, document.source, offset, ranked[0].text)
        return Answer(document, position, offset, [candidate.text for candidate in ranked])

    async def _generate(
        self,
        pipeline: InfillPipeline,
        settings: Settings,
        context: InfillContext,
        extras: list[str],
        uri: str,
        position: types.Position,
        work_done_token: types.ProgressToken | None,
    ) -> InfillResult | None:
        """Run the model on the worker; None when superseded or failed (each counted and logged)."""
        stream = _CanvasStream(self, uri, position, self.protocol.msg_id, work_done_token,
                               settings.canvas_notifications)
        job = self.scheduler.submit(uri, lambda job: pipeline.generate(
            context, settings, cancelled=job.cancelled, on_canvas=stream.callback(job), extra_middles=extras))
        stream.begin()
        try:
            result = await job.future
        except JobCancelled:
            self.stats.cancellations += 1
            self.stats.superseded += 1
            return None
        except asyncio.CancelledError:  # $/cancelRequest: pygls answers RequestCancelled; stop the model too
            self.scheduler.cancel(job)
            self.stats.cancellations += 1
            raise
        except RemoteError as error:  # down, slow or garbage: an empty completion and a status, no crash
            self.stats.errors += 1
            self._remote_failed(error)
            return None
        except Exception as error:  # noqa: BLE001 - an engine failure costs one completion, not the server
            self.stats.errors += 1
            self.log(types.MessageType.Error, f"model run for {uri} failed: {type(error).__name__}: {error}")
            return None
        finally:
            self.stats.model_runs += job.started
            stream.end()
        self._remote_recovered()
        generation = result.generation
        self.stats.last_run = LastRun(generation.prompt_tokens, generation.encoded_prompt_tokens, generation.steps,
                                      generation.blocks, generation.wall_time_s * 1000.0, generation.tokens_per_forward)
        return result


class _CanvasStream:
    """Streams one request's denoising steps: ``diffgemma/canvas`` notifications and ``$/progress`` reports."""

    def __init__(self, server: DiffgemmaServer, uri: str, position: types.Position, request_id: Any,
                 work_done_token: types.ProgressToken | None, notify: bool) -> None:
        self.server = server
        self.uri = uri
        self.position = position
        self.request_id = request_id
        self.token = work_done_token
        self.notify = notify
        self.steps = 0
        self._loop = asyncio.get_running_loop()

    def callback(self, job: Job) -> Callable[[CanvasText], None] | None:
        """The engine's on_canvas callback (called on the worker): hands each step to the loop, which owns the
        connection; None when nobody listens, which spares decoding the canvas at every step."""
        if not self.notify and self.token is None:
            return None
        return lambda canvas: self._loop.call_soon_threadsafe(self._step, job, canvas)

    def begin(self) -> None:
        if self.token is not None:
            self.server.protocol.notify(types.PROGRESS, types.ProgressParams(
                token=self.token, value=types.WorkDoneProgressBegin(title="diffgemma", message="denoising",
                                                                    cancellable=False, percentage=0)))

    def end(self) -> None:
        if self.token is not None:
            self.server.protocol.notify(types.PROGRESS, types.ProgressParams(
                token=self.token, value=types.WorkDoneProgressEnd(message=f"{self.steps} denoising steps")))

    def _step(self, job: Job, canvas: CanvasText) -> None:
        if job.cancelled():  # a superseded request shows nothing more
            return
        self.steps += 1
        if self.notify:
            self.server.protocol.notify(CANVAS_NOTIFICATION, {
                "uri": self.uri,
                "position": {"line": self.position.line, "character": self.position.character},
                "requestId": self.request_id,
                "block": canvas.block,
                "step": self.steps,
                "maxSteps": canvas.max_steps,
                "text": canvas.text,
                "acceptedFraction": canvas.accepted_fraction,
            })
        if self.token is not None:
            self.server.protocol.notify(types.PROGRESS, types.ProgressParams(
                token=self.token, value=types.WorkDoneProgressReport(
                    message=f"canvas {canvas.block + 1}, step {canvas.step}/{canvas.max_steps}",
                    percentage=min(100, round(100 * canvas.step / canvas.max_steps)))))


SERVER = DiffgemmaServer()


@SERVER.feature(types.INITIALIZE)
def _initialize(server: DiffgemmaServer, params: types.InitializeParams) -> None:
    server.initialize(params)


@SERVER.feature(types.INITIALIZED)
async def _initialized(server: DiffgemmaServer, params: types.InitializedParams) -> None:
    await server.load_model()  # after initialize has returned, so a slow load never delays it


@SERVER.feature(types.SHUTDOWN)
def _shutdown(server: DiffgemmaServer, params: None) -> None:
    server.prepare_shutdown()


@SERVER.feature(types.EXIT)
def _exit(server: DiffgemmaServer, params: None) -> None:
    server.exit_process()  # before pygls' own exit, which raises SystemExit inside the event loop


@SERVER.feature(types.TEXT_DOCUMENT_DID_OPEN)
def _did_open(server: DiffgemmaServer, params: types.DidOpenTextDocumentParams) -> None:
    server.open_document(params)


@SERVER.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def _did_change(server: DiffgemmaServer, params: types.DidChangeTextDocumentParams) -> None:
    server.change_document(params)


@SERVER.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def _did_close(server: DiffgemmaServer, params: types.DidCloseTextDocumentParams) -> None:
    server.close_document(params.text_document.uri)


@SERVER.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def _did_change_configuration(server: DiffgemmaServer, params: types.DidChangeConfigurationParams) -> None:
    server.change_settings(params.settings)


@SERVER.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def _inline_completion(server: DiffgemmaServer, params: types.InlineCompletionParams):
    return await server.inline_completion(params)


@SERVER.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
async def _completion(server: DiffgemmaServer, params: types.CompletionParams):
    return await server.completion(params)


@SERVER.command(ACCEPT_COMMAND)
def _accept(server: DiffgemmaServer, completion_id: str) -> None:
    server.accept(completion_id)


@SERVER.feature(STATS_REQUEST)
def _stats(server: DiffgemmaServer, params: Any) -> dict[str, Any]:
    model = server.pipeline.model if server.pipeline is not None else None
    return server.stats.to_wire(server.status.value, model.compile_status() if isinstance(model, Engine) else None)
