"""JSON-RPC 2.0 over the LSP base protocol, read strictly, before pygls sees a message.

pygls' reader trusts its input: it allocates whatever Content-Length says, matches the header name case-sensitively
with CRLF only, loses every later message after one bad frame, structures every nested object that has a
``"jsonrpc"`` key as a message of its own, accepts NaN, Infinity and CESU-8, and answers neither parse errors nor
invalid requests. This module replaces that layer:

* :class:`FrameReader` splits the byte stream into message bodies. Header names are case-insensitive, lines may end
  in LF alone, bodies above :data:`MAX_BODY_BYTES` are refused without being read, and after a frame whose length
  was wrong it finds the next ``Content-Length`` header again: a short length leaves the body's tail glued to the
  next header, a long one swallows the next message (or waits for bytes that never come).
* :func:`parse_envelope` decodes one body (strict UTF-8, strict JSON) and checks the JSON-RPC envelope, returning
  the message or the error response it must get (``-32700`` parse error, ``-32600`` invalid request; ``id`` null
  when the request's own id cannot be known).
* :func:`strict_converter` makes params structuring refuse ill-typed values (``"line": "4"``, ``1.5``, ``true``)
  instead of coercing them, so they get ``-32602``.

What the lifecycle allows (before ``initialize``, after ``shutdown``) is the protocol's business
(``lsp_server.server.DiffgemmaProtocol``); this module knows nothing about LSP methods.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cattrs

MAX_BODY_BYTES = 64 * 1024 * 1024
# A header line longer than this is junk: no real header is, and a reader must not buffer an endless line.
MAX_HEADER_LINE_BYTES = 8 * 1024
# A client that declared a longer body than it sent waits for an answer: once a complete JSON value has arrived
# and the stream has been quiet this long, the frame ends there.
OVERLONG_FRAME_IDLE_S = 0.25
READ_CHUNK_BYTES = 64 * 1024

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602

_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The next message's header inside a body that was declared too long. "Content-Length" can only stand outside a JSON
# string there, and a raw line feed cannot occur inside one, so no valid body matches.
_EMBEDDED_HEADER = re.compile(rb"content-length[ \t]*:[ \t]*\d+[ \t]*\r?\n", re.IGNORECASE)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Frame:
    """One framed message body, or a framing problem the client is told about (as a parse error, id null)."""

    body: bytes | None = None
    problem: str | None = None


class ChunkSource:
    """Chunks from `read` (b"" at end of stream), with a timeout that never loses a chunk still in flight."""

    def __init__(self, read: Callable[[], Awaitable[bytes]]):
        self._read = read
        self._pending: asyncio.Future[bytes] | None = None

    async def next(self, timeout: float | None = None) -> bytes | None:
        """The next chunk; None if `timeout` passed first (the read goes on and its chunk comes next time)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._read())
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return None
        chunk, self._pending = self._pending.result(), None
        return chunk


class FrameReader:
    """LSP base-protocol frames (``Content-Length: N`` headers, a blank line, N bytes) from a byte stream."""

    def __init__(self, source: ChunkSource):
        self._source = source
        self._buffer = bytearray()
        self._ended = False
        # One report per run of bad bytes: a skipped oversized body must not answer with an error per line.
        self._junk_reported = False

    async def next_frame(self) -> Frame | None:
        """The next frame, or None at the end of the stream."""
        while True:
            length = await self._read_headers()
            if isinstance(length, Frame):
                if self._junk_reported:
                    continue
                self._junk_reported = True
                return length
            if length is None:
                return None
            body = await self._read_body(length)
            return None if body is None else Frame(body=body)

    # ------------------------------------------------------------------------------------------ headers

    async def _read_headers(self) -> int | Frame | None:
        content_length: int | None = None
        problem: str | None = None
        header_seen = False
        while True:
            line = await self._read_line()
            if line is None:
                return None
            if not line.strip():
                if content_length is not None:
                    return Frame(problem=problem) if problem else content_length
                if header_seen:
                    return Frame(problem="a message header without Content-Length")
                continue  # blank lines between messages
            name, separator, value = line.partition(b":")
            if not separator or not _HEADER_NAME.fullmatch(name.strip()):
                # Junk: the tail of a body whose Content-Length was too short, glued to the next header, or noise.
                start = line.lower().find(b"content-length")
                if start < 0:
                    if not header_seen:
                        return Frame(problem=f"unreadable bytes where a message header belongs: {bytes(line[:60])!r}")
                    problem = f"an unreadable header line: {bytes(line[:60])!r}"
                    continue
                name, _, value = line[start:].partition(b":")
            header_seen = True
            if name.strip().lower() != b"content-length":
                continue  # Content-Type and unknown headers carry nothing we need
            digits = value.strip()
            if not digits.isdigit():
                problem = f"Content-Length is not a number: {bytes(digits[:30])!r}"
                content_length = 0
            elif int(digits) > MAX_BODY_BYTES:
                # Never read: its bytes are skipped like junk until the next header.
                return Frame(problem=f"a message of {int(digits)} bytes exceeds the limit of {MAX_BODY_BYTES}")
            else:
                content_length = int(digits)

    async def _read_line(self) -> bytearray | None:
        """A line without its LF (and CR), or None at the end of the stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = self._buffer[:end]
                del self._buffer[:end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > MAX_HEADER_LINE_BYTES:
                # Keep a tail: it may hold the start of the next header.
                junk = self._buffer[:-64]
                del self._buffer[:-64]
                return junk
            if not await self._fill():
                if not self._buffer:
                    return None
                line, self._buffer = self._buffer, bytearray()
                return line

    # --------------------------------------------------------------------------------------------- body

    async def _read_body(self, length: int) -> bytes | None:
        scanned = 0
        while True:
            # An over-long frame that swallowed the next message: end this one before that message's header (no
            # valid body holds one, so the cut is always right; what precedes it may still be a whole message).
            window = min(len(self._buffer), length)
            embedded = _EMBEDDED_HEADER.search(self._buffer, max(0, scanned - 64), window)
            scanned = window
            if embedded:
                return self._take(embedded.start())
            if len(self._buffer) >= length:
                return self._take(length)
            arrived = await self._fill(OVERLONG_FRAME_IDLE_S)
            if arrived is None and _is_complete_json(self._buffer):
                return self._take(len(self._buffer))  # the client sent less than it declared and awaits the answer
            if arrived is False:
                return None

    def _take(self, size: int) -> bytes:
        body = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._junk_reported = False
        return body

    async def _fill(self, timeout: float | None = None) -> bool | None:
        """Append the next chunk: True, False at the end of the stream, None if `timeout` passed first."""
        if self._ended:
            return False
        chunk = await self._source.next(timeout)
        if chunk is None:
            return None
        if not chunk:
            self._ended = True
            return False
        self._buffer += chunk
        return True


def _is_complete_json(data: bytes | bytearray) -> bool:
    if not data.strip():
        return False
    try:
        json.loads(bytes(data).decode("utf-8"))
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class Envelope:
    """A well-formed JSON-RPC message: kind is "request", "notification" or "response"."""

    kind: str
    message: dict[str, Any]

    @property
    def method(self) -> str | None:
        return self.message.get("method")


@dataclass(frozen=True)
class Rejection:
    """The error response a message gets instead of being handled."""

    id: str | int | None
    code: int
    message: str

    def response(self) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": self.id, "error": {"code": self.code, "message": self.message}}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def parse_envelope(body: bytes) -> Envelope | Rejection:
    """The message in `body`, or how to refuse it (JSON-RPC 2.0, section 5.1)."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as error:
        return Rejection(None, PARSE_ERROR, f"Parse error: the message is not UTF-8 ({error.reason})")
    except ValueError as error:
        return Rejection(None, PARSE_ERROR, f"Parse error: {error}")
    if isinstance(value, list):
        return Rejection(None, INVALID_REQUEST, "Invalid Request: batches are not part of LSP")
    if not isinstance(value, dict):
        return Rejection(None, INVALID_REQUEST, f"Invalid Request: a message is a JSON object, not {type(value).__name__}")
    has_id = "id" in value
    if has_id and not _valid_id(value["id"]):
        return Rejection(None, INVALID_REQUEST, f"Invalid Request: id must be a string or an integer, got {value['id']!r}")
    msg_id = value.get("id")
    if value.get("jsonrpc") != "2.0":
        return Rejection(msg_id, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"')
    if "method" in value:
        if not isinstance(value["method"], str):
            return Rejection(msg_id, INVALID_REQUEST, "Invalid Request: method must be a string")
        # null is not JSON-RPC 2.0, but clients (pygls among them) send it for "no params": taken as omitted.
        if value.get("params") is not None and not isinstance(value["params"], (dict, list)):
            return Rejection(msg_id, INVALID_REQUEST, "Invalid Request: params must be an object or an array")
        if _has_lone_surrogate(value.get("params")):
            return Rejection(msg_id, INVALID_PARAMS, "Invalid params: a string holds a lone UTF-16 surrogate")
        return Envelope("request" if has_id else "notification", value)
    if has_id and ("result" in value) != ("error" in value):
        return Envelope("response", value)
    return Rejection(msg_id if has_id else None, INVALID_REQUEST,
                     "Invalid Request: neither a request (method) nor a response (result or error)")


# ------------------------------------------------------------------------------------------------ converter


def _exactly(kind: type, *also: type) -> Callable[[Any, type], Any]:
    accepted = (kind, *also)

    def structure(value: Any, _: type) -> Any:
        if isinstance(value, bool) and kind is not bool or not isinstance(value, accepted):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    return structure


def strict_converter(converter: cattrs.Converter) -> cattrs.Converter:
    """`converter` with JSON's scalars structured as they are: no "4" for an integer, no 1.5 or true for one."""
    converter.register_structure_hook(int, _exactly(int))
    converter.register_structure_hook(float, _exactly(float, int))
    converter.register_structure_hook(str, _exactly(str))
    converter.register_structure_hook(bool, _exactly(bool))
    return converter
