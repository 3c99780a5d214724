"""JSON-RPC 2.0 / LSP base protocol robustness: raw bytes to the real server over stdio, every request answered once.

Each test starts ``python -m lsp_server --stdio`` on a tiny checkpoint and talks to it in bytes, so it can send what
no well-behaved client library would: broken frames, bad JSON, bad envelopes, requests out of the LSP lifecycle.
Most tests never send ``initialized``, so the model is never loaded and the server answers in milliseconds.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from checkpoints import cached_checkpoint

NOT_INITIALIZED, INVALID_REQUEST, PARSE_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND = -32002, -32600, -32700, -32602, -32601
MISSING = object()
INITIALIZE_PARAMS = {"processId": None, "rootUri": None,
                     "capabilities": {"textDocument": {"inlineCompletion": {"dynamicRegistration": False}}}}
SOURCE = "def total(items):\n    result = 0\n    for item in items:\n        result += \n    return result\n"


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"the server wrote {name}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def frame(payload) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def request(msg_id, method: str, params=MISSING) -> dict:
    message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not MISSING:
        message["params"] = params
    return message


def notification(method: str, params=MISSING) -> dict:
    message = {"jsonrpc": "2.0", "method": method}
    if params is not MISSING:
        message["params"] = params
    return message


class RawServer:
    """The real server process, fed bytes; everything it writes is parsed strictly and kept in order."""

    def __init__(self, model: str, log: Path):
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lsp_server", "--stdio", "--no-compile", "--model", model, "--log-level", "INFO"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.received: list[dict] = []
        self._mark = 0
        self._arrivals: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stdout = self.process.stdout
        while True:
            length = None
            while True:
                line = stdout.readline()
                if not line:
                    return
                if line == b"\r\n":
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self._arrivals.put(_strict_json(stdout.read(length).decode("utf-8")))

    def send(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send_message(self, payload) -> None:
        self.send(frame(payload))

    def _drain(self, timeout: float) -> bool:
        try:
            self.received.append(self._arrivals.get(timeout=timeout))
            return True
        except queue.Empty:
            return False

    def mark(self) -> None:
        """Later calls of `responses` see only what arrives from now on (a server shared by several tests)."""
        self.responses()
        self._mark = len(self.received)

    def responses(self, msg_id=MISSING) -> list[dict]:
        """Responses received since the mark (to `msg_id`), server notifications and requests left out."""
        while self._drain(0):
            pass
        answers = [m for m in self.received[self._mark:] if "method" not in m]
        return answers if msg_id is MISSING else [m for m in answers if m.get("id") == msg_id]

    def response(self, msg_id, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while not self.responses(msg_id):
            if not self._drain(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"no response to {msg_id!r} within {timeout} s; got {self.responses()}")
        return self.responses(msg_id)[0]

    def call(self, msg_id, method: str, params=MISSING) -> dict:
        self.send_message(request(msg_id, method, params))
        return self.response(msg_id)

    def initialize(self) -> None:
        assert "result" in self.call("init", "initialize", INITIALIZE_PARAMS)

    def serves(self) -> bool:
        """A fresh request still gets its answer (diffgemma/stats needs no model)."""
        msg_id = f"probe-{time.monotonic_ns()}"
        return "result" in self.call(msg_id, "diffgemma/stats")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant"))


@pytest.fixture
def server(model, tmp_path):
    raw = RawServer(model, tmp_path / "server.log")
    yield raw
    raw.close()


@pytest.fixture
def ready(server):
    server.initialize()
    return server


@pytest.fixture(scope="module")
def initialized_server(model, tmp_path_factory):
    raw = RawServer(model, tmp_path_factory.mktemp("shared") / "server.log")
    raw.initialize()
    yield raw
    raw.close()


@pytest.fixture
def shared(initialized_server):
    """One initialized server for the tests that leave its lifecycle alone; each sees only its own answers."""
    assert initialized_server.process.poll() is None, "an earlier test ended the shared server"
    initialized_server.mark()
    return initialized_server


def error_code(response: dict) -> int | None:
    return response.get("error", {}).get("code")


# ------------------------------------------------------------------------------------------------- framing


def test_a_huge_content_length_is_refused_without_reading_it(shared):
    shared.send(b"Content-Length: 1099511627776\r\n\r\n")
    shared.send_message(request(1, "diffgemma/stats"))
    assert "result" in shared.response(1)
    refused = [r for r in shared.responses() if r.get("id") is None]
    assert refused and error_code(refused[0]) == PARSE_ERROR and "exceeds the limit" in refused[0]["error"]["message"]
    assert shared.process.poll() is None and shared.serves()


@pytest.mark.parametrize("bad_frame", [
    pytest.param(lambda body: b"Content-Length: %d\r\n\r\n" % (len(body) - 5) + body, id="short length"),
    pytest.param(lambda body: b"Content-Length: %d\r\n\r\n" % (len(body) + 300) + body, id="long length"),
    pytest.param(lambda body: b"Content-Length: %d\n\n" % len(body) + body, id="LF-only line ends"),
    pytest.param(lambda body: b"content-length: %d\r\n\r\n" % len(body) + body, id="lower-case header"),
    pytest.param(lambda body: b"garbage\r\n" + b"Content-Length: %d\r\n\r\n" % len(body) + body, id="junk line"),
    pytest.param(lambda body: b"Content-Length: 12\r\nContent-Length: x\r\n\r\n" + body, id="unreadable length"),
])
def test_one_bad_frame_loses_no_later_message(shared, bad_frame):
    tag = time.monotonic_ns()  # ids of their own: the server is shared with the other cases
    body = json.dumps(request(f"in-bad-frame-{tag}", "diffgemma/stats")).encode()
    shared.send(bad_frame(body))
    for n in range(3):
        shared.send_message(request(f"after-{n}-{tag}", "diffgemma/stats"))
    for n in range(3):
        assert "result" in shared.response(f"after-{n}-{tag}")
    # The request inside the bad frame is answered exactly once where its frame can be read at all, never twice.
    assert len(shared.responses(f"in-bad-frame-{tag}")) <= 1


@pytest.mark.parametrize("framing", [b"Content-Length: %d\n\n", b"content-length: %d\r\n\r\n",
                                     b"CONTENT-LENGTH: %d\r\nContent-Type: application/vscode-jsonrpc\r\n\r\n"])
def test_lenient_framing_is_read_as_the_message_it_is(shared, framing):
    body = json.dumps(request("lenient", "diffgemma/stats")).encode()
    shared.send(framing % len(body) + body)
    assert "result" in shared.response("lenient")


def test_a_frame_longer_than_what_was_sent_is_answered_when_the_client_waits(shared):
    body = json.dumps(request("overlong", "diffgemma/stats")).encode()
    shared.send(b"Content-Length: %d\r\n\r\n" % (len(body) + 50) + body)  # then nothing: the client waits
    assert "result" in shared.response("overlong", timeout=10)
    assert shared.serves()


# ------------------------------------------------------------------------------------------ parse and envelope


@pytest.mark.parametrize(("body", "code"), [
    (b"{this is not json", PARSE_ERROR),
    (b'{"jsonrpc": "2.0", "id": NaN, "method": "diffgemma/stats"}', PARSE_ERROR),
    (b'{"jsonrpc": "2.0", "id": Infinity, "method": "diffgemma/stats"}', PARSE_ERROR),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "diffgemma/stats", "params": {"s": "\xed\xa0\x80"}}', PARSE_ERROR),
    (b"\xff\xfe{}", PARSE_ERROR),
    (b'{"foo": 1}', INVALID_REQUEST),
    (b"[1, 2]", INVALID_REQUEST),
    (b"[]", INVALID_REQUEST),
    (b'"a string"', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": [1], "method": "diffgemma/stats"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": true, "method": "diffgemma/stats"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": null, "method": "diffgemma/stats"}', INVALID_REQUEST),
    (b'{"jsonrpc": "2.0", "id": 1.5, "method": "diffgemma/stats"}', INVALID_REQUEST),
])
def test_unreadable_messages_get_an_error_with_id_null(shared, body, code):
    """-32700 / -32600 with "id": null (JSON-RPC 2.0 section 5): the id is unknown or unusable."""
    shared.send_message(body)
    assert shared.serves()
    answers = [r for r in shared.responses() if "error" in r]
    assert len(answers) == 1 and error_code(answers[0]) == code
    assert "id" in answers[0] and answers[0]["id"] is None


@pytest.mark.parametrize(("message", "code"), [
    ({"jsonrpc": "1.0", "id": 7, "method": "diffgemma/stats"}, INVALID_REQUEST),
    ({"id": 7, "method": "diffgemma/stats"}, INVALID_REQUEST),
    ({"jsonrpc": "2.0", "id": 7, "method": 42}, INVALID_REQUEST),
    ({"jsonrpc": "2.0", "id": 7, "method": "diffgemma/stats", "params": 3}, INVALID_REQUEST),
    ({"jsonrpc": "2.0", "id": 7, "method": "diffgemma/stats", "params": {"s": "\ud800"}}, INVALID_PARAMS),
    ({"jsonrpc": "2.0", "id": 7, "method": "no/suchMethod"}, METHOD_NOT_FOUND),
])
def test_invalid_requests_with_a_usable_id_are_answered_under_it(shared, message, code):
    shared.send_message(message)
    assert error_code(shared.response(7)) == code
    assert len(shared.responses(7)) == 1 and shared.serves()


def test_a_jsonrpc_key_inside_params_is_just_data(shared):
    nested = {"jsonrpc": "2.0", "id": 99, "method": "shutdown"}
    answer = shared.call(5, "diffgemma/stats", {"nested": nested, "list": [nested]})
    assert "result" in answer
    time.sleep(0.2)
    assert shared.responses(99) == [] and shared.serves()  # and the server was not shut down by it


def test_requests_may_omit_params_they_do_not_need(ready):
    assert "result" in ready.call("stats", "diffgemma/stats")
    assert ready.call("bye", "shutdown") == {"jsonrpc": "2.0", "id": "bye", "result": None}


@pytest.mark.parametrize("line", ["4", 1.5, True, None])
def test_ill_typed_params_are_refused_not_coerced(shared, line):
    shared.send_message(notification("textDocument/didOpen", {"textDocument": {
        "uri": "file:///typed.py", "languageId": "python", "version": 1, "text": SOURCE}}))
    answer = shared.call("typed", "textDocument/inlineCompletion", {
        "textDocument": {"uri": "file:///typed.py"}, "position": {"line": line, "character": 0},
        "context": {"triggerKind": 1}})
    assert error_code(answer) == INVALID_PARAMS, answer


# ------------------------------------------------------------------------------------------------- lifecycle


def test_requests_before_initialize_get_server_not_initialized(server):
    for msg_id, method, params in [(1, "diffgemma/stats", MISSING),
                                   (2, "workspace/executeCommand", {"command": "diffgemma.acceptInlineCompletion",
                                                                     "arguments": ["dg-1"]}),
                                   (3, "shutdown", MISSING)]:
        assert error_code(server.call(msg_id, method, params)) == NOT_INITIALIZED
    assert "result" in server.call("init", "initialize", INITIALIZE_PARAMS)  # and initialize is still answered
    assert server.serves()


def test_a_second_initialize_is_refused_and_keeps_the_documents(ready):
    ready.send_message(notification("initialized", {}))
    ready.send_message(notification("textDocument/didOpen", {"textDocument": {
        "uri": "file:///kept.py", "languageId": "python", "version": 1, "text": SOURCE}}))
    assert error_code(ready.call("again", "initialize", INITIALIZE_PARAMS)) == INVALID_REQUEST
    deadline = time.monotonic() + 60
    while True:  # the model loads after `initialized`
        answer = ready.call(f"complete-{time.monotonic_ns()}", "textDocument/inlineCompletion", {
            "textDocument": {"uri": "file:///kept.py"}, "position": {"line": 3, "character": 18},
            "context": {"triggerKind": 1}})
        items = answer["result"]["items"] if isinstance(answer.get("result"), dict) else answer.get("result")
        if items or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert items and items[0]["insertText"].startswith("        result += ")


def test_notification_methods_sent_with_an_id_get_an_error(shared):
    answer = shared.call(11, "textDocument/didOpen", {"textDocument": {
        "uri": "file:///n.py", "languageId": "python", "version": 1, "text": "x = 1\n"}})
    assert error_code(answer) == INVALID_REQUEST and "notification" in answer["error"]["message"]


def test_every_request_after_shutdown_gets_invalid_request(ready):
    assert ready.call("bye", "shutdown")["result"] is None
    for msg_id, method in [(21, "diffgemma/stats"), (22, "shutdown"), (23, "initialize"),
                           (24, "textDocument/inlineCompletion")]:
        assert error_code(ready.call(msg_id, method, {})) == INVALID_REQUEST
    ready.send_message(notification("exit"))
    assert ready.process.wait(timeout=10) == 0


# -------------------------------------------------------------------------------------------------- fuzzing


def _fuzz_messages(rng: random.Random, count: int):
    """(bytes, id or None): a well-framed tracked request that must be answered exactly once, or noise that
    may be anything (a broken frame, bad JSON, a bad envelope, a notification, a stray response)."""
    methods = ["diffgemma/stats", "no/such", "textDocument/didOpen", "textDocument/inlineCompletion", "initialize",
               "workspace/executeCommand", "$/cancelRequest", "textDocument/completion"]
    junk_values = [None, True, 1.5, -1, "x", [], {}, {"jsonrpc": "2.0", "id": 0, "method": "shutdown"}, "\u00e9" * 3]
    for n in range(count):
        choice = rng.random()
        if choice < 0.45:
            method = rng.choice(methods)
            params = rng.choice([MISSING, None, {}, [], {"textDocument": {"uri": rng.choice(junk_values)}},
                                 {"textDocument": {"uri": "file:///f.py"}, "position": {
                                     "line": rng.choice(junk_values + [0, 3]), "character": rng.choice([0, 2, 1e3])}},
                                 {"command": rng.choice(junk_values)}, {"nested": rng.choice(junk_values)}])
            msg_id = rng.choice([n, f"fuzz-{n}"])
            yield frame(request(msg_id, method, params)), msg_id
        elif choice < 0.60:
            body = json.dumps(rng.choice([
                notification(rng.choice(methods), rng.choice(junk_values)),
                {"jsonrpc": "2.0", "id": f"stray-{n}", "result": rng.choice(junk_values)},
                {"jsonrpc": rng.choice(["1.0", 2, None]), "id": f"noise-{n}", "method": "diffgemma/stats"},
                {"jsonrpc": "2.0", "id": rng.choice([True, 1.5, [n], {"n": n}, None]), "method": "x"},
                [request(f"batch-{n}", "diffgemma/stats")],
            ])).encode()
            yield frame(body), None
        elif choice < 0.75:
            body = bytearray(json.dumps(request(f"broken-{n}", "diffgemma/stats")).encode())
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            yield frame(bytes(body)), None
        else:
            body = json.dumps(request(f"bad-frame-{n}", "diffgemma/stats")).encode()
            yield rng.choice([
                b"Content-Length: %d\r\n\r\n" % max(0, len(body) - rng.randint(1, len(body))) + body,
                b"Content-Length: %d\r\n\r\n" % (len(body) + rng.randint(40, 5000)) + body,
                b"Content-Length: %d\n\n" % len(body) + body,
                b"cOnTeNt-LeNgTh: %d\r\n\r\n" % len(body) + body,
                bytes(rng.randrange(256) for _ in range(rng.randint(1, 80))).replace(b"\n", b" ") + b"\r\n",
                b"Content-Length: %d\r\n\r\n" % rng.choice([10 ** 12, 2 ** 40, 99999999999]),
                b"\r\n\r\n",
            ]), None


def test_fuzzed_messages_every_tracked_request_is_answered_exactly_once(ready):
    rng = random.Random(20261201)
    tracked = []
    started = time.monotonic()
    chunk = bytearray()
    for data, msg_id in _fuzz_messages(rng, 3000):
        chunk += data
        if msg_id is not None:
            tracked.append(msg_id)
        if len(chunk) > 16384:
            ready.send(bytes(chunk))
            chunk.clear()
    ready.send(bytes(chunk))
    ready.send_message(request("last", "diffgemma/stats"))
    ready.response("last", timeout=120)
    time.sleep(0.5)
    answers = ready.responses()
    counts = {}
    for answer in answers:
        counts[answer.get("id")] = counts.get(answer.get("id"), 0) + 1
    missing = [msg_id for msg_id in tracked if msg_id not in counts]
    twice = [msg_id for msg_id in tracked if counts.get(msg_id, 0) > 1]
    assert len(tracked) > 1000 and not missing and not twice, (missing[:10], twice[:10])
    assert all(("result" in a) != ("error" in a) for a in answers)
    assert ready.process.poll() is None and ready.serves()
    assert time.monotonic() - started < 120
