"""The remote backend against servers that misbehave: real HTTP on loopback, each failure a real answer.

diffgemma-serve never sends garbage, so these servers do: HTTP 500s, refused keys, malformed SSE, streams that
stop early, answers slower than the timeout. The backend must turn each into a RemoteUnavailable with the reason,
back off instead of retrying at once, cancel by closing the stream, and parse vLLM's per-canvas stream.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine import GenerationCancelled
from http_support import serve_in_thread
from lsp_server.remote import BACKOFF_FIRST_S, RemoteModel, RemoteRequestRejected, RemoteUnavailable


class Misbehaving:
    """A vLLM-shaped server whose /v1/completions answers as ``mode`` says; it records what it receives."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.xargs = False  # whether vllm_xargs are accepted (newer vLLM builds) or answered with 400
        self.models = ["served-model"]
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.disconnected = threading.Event()
        self.app = Starlette(routes=[Route("/v1/models", self.list_models),
                                     Route("/v1/completions", self.complete, methods=["POST"])])

    async def list_models(self, request: Request) -> Response:
        self.headers.append(dict(request.headers))
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model"} for name in self.models]})

    async def complete(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        mode = self.mode
        if "vllm_xargs" in body and not self.xargs:
            return JSONResponse({"error": {"message": "unknown vllm_xargs key diffusion_max_steps"}}, 400)
        if mode == "500":
            return JSONResponse({"error": {"message": "EngineCore died", "type": "InternalServerError"}}, 500)
        if mode == "401":
            return JSONResponse({"error": {"message": "Unauthorized"}}, 401)
        if mode == "400":
            return JSONResponse({"error": {"message": "prompt is too long"}}, 400)
        if mode == "slow":
            await asyncio.sleep(3)
        return StreamingResponse(self.events(mode, body), media_type="text/event-stream")

    async def events(self, mode: str, body: dict):
        def chunk(index: int, text: str, finish: str | None = None) -> str:
            # Not ASCII-escaped, as vLLM's pydantic JSON: U+2028 and U+0085 arrive raw inside strings.
            return "data: " + json.dumps({"id": "cmpl-1", "object": "text_completion", "choices": [
                {"index": index, "text": text, "logprobs": None, "finish_reason": finish}]},
                ensure_ascii=False) + "\r\n\r\n"

        if mode == "unicode":
            yield chunk(0, "s = 'a\u2028b\x85c'", finish="stop")
            yield "data: [DONE]\n\n"
            return
        if mode == "garbage":
            yield "data: {this is not json\n\n"
            return
        if mode == "trickle":  # one canvas, then a long wait: the client must close the stream to cancel
            yield chunk(0, "first canvas")
            try:
                await asyncio.sleep(30)
            finally:
                self.disconnected.set()
            return
        for index in range(body.get("n", 1)):  # vLLM: one chunk per committed canvas, then the finish
            yield chunk(index, f"canvas one of {index};")
            yield chunk(index, f" canvas two of {index}", finish="stop" if index == 0 else "length")
        if mode == "no-done":
            return
        yield "data: " + json.dumps({"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": 12}}) + "\n\n"
        yield "data: [DONE]\n\n"


@pytest.fixture(scope="module")
def server():
    misbehaving = Misbehaving()
    with serve_in_thread(misbehaving.app) as url:
        misbehaving.url = url + "/v1"
        yield misbehaving


@pytest.fixture
def remote(server):
    server.mode, server.models, server.xargs = "ok", ["served-model"], False
    server.requests.clear()
    server.headers.clear()
    server.disconnected.clear()
    model = RemoteModel(server.url, api_key="sekrit-key", timeout=1.0)
    yield model
    model.close()


def test_a_vllm_stream_becomes_candidates_and_one_canvas_per_chunk(server, remote):
    canvases = []
    result = remote.infill("def f():\n    return ", "\n", num_candidates=2, seed=3, max_new_tokens=32,
                           on_canvas=canvases.append, sampling="fast")
    assert [c.text for c in result.candidates] == ["canvas one of 0; canvas two of 0",
                                                   "canvas one of 1; canvas two of 1"]
    assert [c.finished for c in result.candidates] == [True, False]  # "stop" vs "length"
    assert [c.text for c in canvases] == ["canvas one of 0;", "canvas one of 0; canvas two of 0"]
    assert [c.block for c in canvases] == [0, 1]
    assert result.generation.prompt_tokens == 12
    (body,) = server.requests
    assert body["model"] == "served-model" and body["n"] == 2 and body["seed"] == 3 and body["stream"] is True
    assert body["max_tokens"] == 32
    # No local tokenizer: the prompt goes as text in the chat layout (vLLM's checkpoints have no FIM tokens).
    assert body["prompt"].startswith("<bos><|turn>user\n") and body["add_special_tokens"] is False
    assert "def f():\n    return <FILL_HERE>\n" in body["prompt"]
    assert all(h["authorization"] == "Bearer sekrit-key" for h in server.headers)
    assert "sekrit" not in remote.describe()


@pytest.mark.parametrize("accepted", [False, True])
def test_vllm_xargs_are_probed_once_and_sent_only_where_accepted(server, remote, accepted):
    server.xargs = accepted
    for _ in range(2):
        remote.infill("a", "b", max_denoising_steps=4)
    probe, *requests = server.requests
    assert probe["max_tokens"] == 1 and probe["vllm_xargs"] == {"diffusion_max_steps": 4}
    assert len(requests) == 2 and all(("vllm_xargs" in body) == accepted for body in requests)
    remote.infill("a", "b")  # no step count asked: nothing to probe or send
    assert "vllm_xargs" not in server.requests[-1] and len(server.requests) == 4


def test_unicode_line_separators_inside_json_strings_do_not_split_events(server, remote):
    server.mode = "unicode"
    assert remote.infill("a", "b").candidates[0].text == "s = 'a\u2028b\x85c'"


def test_http_500_is_unavailable_with_the_reason_and_backs_off(server, remote):
    server.mode = "500"
    with pytest.raises(RemoteUnavailable, match="HTTP 500: EngineCore died") as first:
        remote.infill("a", "b")
    assert first.value.url == server.url and remote.problem == "HTTP 500: EngineCore died"
    sent = len(server.requests)
    with pytest.raises(RemoteUnavailable, match=r"next try in \d"):  # within the backoff: no request at all
        remote.infill("a", "b")
    assert len(server.requests) == sent
    server.mode = "ok"
    time.sleep(BACKOFF_FIRST_S + 0.1)
    assert remote.infill("a", "b").candidates[0].text.startswith("canvas one")  # recovered
    assert remote.problem is None


def test_a_refused_key_names_the_cause(server, remote):
    server.mode = "401"
    with pytest.raises(RemoteUnavailable, match=r"refused the API key \(HTTP 401: Unauthorized\)") as error:
        remote.infill("a", "b")
    assert "sekrit" not in str(error.value)


def test_a_rejected_request_fails_alone_without_backoff(server, remote):
    server.mode = "400"
    with pytest.raises(RemoteRequestRejected, match="prompt is too long"):
        remote.infill("a", "b")
    server.mode = "ok"
    assert remote.infill("a", "b").candidates  # at once: the server is fine


@pytest.mark.parametrize("mode, reason", [
    ("garbage", "malformed answer: an event that is not JSON"),
    ("no-done", "malformed answer: the stream ended without data: \\[DONE\\]"),
    ("slow", "no answer within 1 s"),
])
def test_malformed_and_slow_answers_are_unavailable(server, remote, mode, reason):
    server.mode = mode
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable, match=reason):
        remote.infill("a", "b")
    assert time.monotonic() - started < 2.5  # the timeout holds, whatever the server does


def test_no_server_listening_is_cannot_connect():
    with serve_in_thread(Starlette()) as url:
        pass  # the port is free again
    model = RemoteModel(url + "/v1", timeout=1.0)
    try:
        with pytest.raises(RemoteUnavailable, match="cannot connect"):
            model.connect()
    finally:
        model.close()


def test_several_served_models_need_remote_model(server, remote):
    server.models = ["big", "small"]
    with pytest.raises(RemoteUnavailable, match="serves 2 models \\(big, small\\): set remoteModel"):
        remote.connect()
    chosen = RemoteModel(server.url, model_name="small", timeout=1.0)
    try:
        assert chosen.connect().name == "small"
        missing = RemoteModel(server.url, model_name="medium", timeout=1.0)
        with pytest.raises(RemoteUnavailable, match="does not serve 'medium'"):
            missing.connect()
        missing.close()
    finally:
        chosen.close()


def test_cancelling_closes_the_stream_and_the_server_sees_it(server, remote):
    server.mode = "trickle"
    first_canvas = threading.Event()
    cancel_at: list[float] = []

    def on_canvas(canvas):
        first_canvas.set()
        cancel_at.append(time.monotonic())

    with pytest.raises(GenerationCancelled):
        remote.infill("a", "b", on_canvas=on_canvas, cancelled=first_canvas.is_set)
    assert time.monotonic() - cancel_at[0] < 0.5  # the poll, not the server's 30 s
    assert server.disconnected.wait(5), "the server never saw the client go away"
    server.mode = "ok"
    assert remote.infill("a", "b").candidates  # a cancellation is no failure: no backoff


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with serve_in_thread(Misbehaving().app, ssl_keyfile=str(key), ssl_certfile=str(cert)) as url:
        yield url + "/v1", cert


def test_tls_certificates_are_verified_unless_told_otherwise(self_signed, monkeypatch):
    url, cert = self_signed
    verified = RemoteModel(url, timeout=2.0)
    with pytest.raises(RemoteUnavailable, match="cannot connect.*CERTIFICATE_VERIFY_FAILED"):
        verified.connect()
    verified.close()
    unverified = RemoteModel(url, timeout=2.0, verify=False)
    assert unverified.connect().name == "served-model"
    unverified.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the usual way to trust a private CA
    trusted = RemoteModel(url, timeout=2.0)
    assert trusted.connect().name == "served-model"
    trusted.close()
