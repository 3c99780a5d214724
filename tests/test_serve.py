"""diffgemma-serve over loopback HTTP: a real server subprocess, the OpenAI client, llama.vim's exact requests."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from tokenizers import Tokenizer

import engine
from checkpoints import cached_checkpoint
from engine.infill import complete_prompt, infill_prompt

API_KEY = "secret"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
STARTUP_TIMEOUT_S = 60


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log: Path
    startup_health: list[tuple[int, dict[str, Any]]]  # /health answers seen while it started

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(model: str, log: Path, *args: str, env: dict[str, str] | None = None,
                 wait_ready: bool = True) -> ServerProcess:
    # --no-compile: the compiled step rounds differently from the eager one, and it would be ready at a moment that
    # depends on the machine's load, so a request's answer for a seed would too (the in-process reference is eager)
    process = subprocess.Popen(
        [sys.executable, "-m", "lsp_server.serve", "--no-compile", "--port", "0", "--model", model, "--threads", "1",
         "--log-level", "info", *args],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_TIMEOUT_S)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("diffgemma-serve listening on http://"):
        process.kill()
        raise AssertionError(f"no listening line (got {line!r}); log:\n{log.read_text()}")
    # Nothing else is written to stdout, but drain it so a stray print can never block the server.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    server = ServerProcess(process, line.split()[-1], log, [])
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        answer = httpx.get(f"{server.url}/health", timeout=10)
        server.startup_health.append((answer.status_code, answer.json()))
        if answer.json()["status"] != "loading" or not wait_ready:
            break
        assert time.monotonic() < deadline, f"the model did not load; log:\n{log.read_text()}"
        time.sleep(0.05)
    return server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random", canvas_length=16, denoising_steps=8)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory) -> Iterator[ServerProcess]:
    """The random checkpoint, with the API key from the environment (every request below sends it)."""
    started = start_server(str(checkpoint), tmp_path_factory.mktemp("serve") / "server.log",
                           env={"DIFFGEMMA_API_KEY": API_KEY})
    yield started
    started.stop()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A constant checkpoint of 64 steps per canvas that never stops early: runs of known, long length."""
    slow = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant", canvas_length=16, denoising_steps=64)
    started = start_server(str(slow), tmp_path_factory.mktemp("serve") / "slow.log")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def name(checkpoint) -> str:
    return checkpoint.name


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The same checkpoint in this process: what the server must answer for the same seed."""
    torch.set_num_threads(1)
    return engine.load(checkpoint, "cpu", "auto", mode="serving")  # the server's mode


def text_prompt_ids(loaded, text: str) -> list[int]:
    """A text prompt as the server tokenizes it: special-token strings parsed, <bos> first."""
    tokenizer = Tokenizer.from_str(loaded.tokenizer.to_str())
    tokenizer.encode_special_tokens = False
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return ids if ids[:1] == [loaded.config.bos_token_id] else [loaded.config.bos_token_id, *ids]


def in_process(loaded, ids: list[int], max_new_tokens: int, seed: int, **options):
    return complete_prompt(loaded, ids, "fim", max_new_tokens=max_new_tokens, seed=seed, sampling="fast", **options)


def complete(http: httpx.Client, **body) -> dict[str, Any]:
    answer = http.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def sse(answer: httpx.Response) -> list[Any]:
    assert answer.headers["content-type"].startswith("text/event-stream")
    return [line[len("data: "):] if line == "data: [DONE]" else json.loads(line[len("data: "):])
            for line in answer.iter_lines() if line.startswith("data: ")]


def health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=10).json()


def wait_health(url: str, done, timeout: float) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    while not done(state := health(url)):
        assert time.monotonic() - started < timeout, f"health stuck at {state}"
        time.sleep(0.02)
    return state, time.monotonic() - started


# ------------------------------------------------------------------------------------------ models, health


def test_health_and_models(server, client, name):
    for status, body in server.startup_health[:-1]:  # if the load was slow enough to be seen
        assert status == 503 and body["status"] == "loading"
    answer = httpx.get(f"{server.url}/health")  # no API key needed
    assert answer.status_code == 200
    state = answer.json()
    assert state["status"] == "ready" and state["model"] == name and "fim prompts" in state["message"]
    assert {"queue", "busy", "completed", "cancelled"} <= set(state) and state["queue"] == 0

    models = client.get("/v1/models").json()
    (card,) = models["data"]
    assert models["object"] == "list" and card["id"] == card["root"] == name and card["object"] == "model"
    assert card["owned_by"] == "diffgemma" and isinstance(card["created"], int) and card["max_model_len"] is None
    extension = card["diffgemma"]
    assert extension["prompt_format"] == "fim" and extension["canvas_length"] == 16
    assert extension["max_denoising_steps"] == 8 and extension["max_new_tokens"] == 16
    assert extension["vocab_size"] == 512 and extension["canvas_stream"] == "/v1/canvas"
    assert extension["xargs"] == ["diffusion_max_steps"]


def test_a_checkpoint_that_fails_to_load(tmp_path):
    broken = start_server(str(tmp_path / "missing"), tmp_path / "broken.log")
    try:
        answer = httpx.get(f"{broken.url}/health")
        assert answer.status_code == 503 and answer.json()["status"] == "error"
        assert "not a checkpoint directory" in answer.json()["message"]
        refused = httpx.post(f"{broken.url}/v1/completions", json={"prompt": "x"})
        assert refused.status_code == 503 and "not a checkpoint directory" in refused.json()["error"]["message"]
        assert httpx.get(f"{broken.url}/v1/models").json()["data"][0]["id"] == "missing"
    finally:
        broken.stop()


def test_engine_errors_answer_500_and_the_server_carries_on(tmp_path_factory):
    # A mis-packaged checkpoint: its tokenizer makes ids the model's vocabulary lacks, which the engine rejects.
    misfit = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random", model_vocab_size=256)
    broken = start_server(str(misfit), tmp_path_factory.mktemp("serve") / "misfit.log")
    try:
        request = {"prompt": "def total(items):\n    return sum(items)\n", "max_tokens": 16}
        answer = httpx.post(f"{broken.url}/v1/completions", json=request)
        assert answer.status_code == 500 and "[0, 256)" in answer.json()["error"]["message"]
        with httpx.stream("POST", f"{broken.url}/v1/completions", json={**request, "stream": True}) as streamed:
            assert streamed.status_code == 200  # the error came after the stream started
            error, done = sse(streamed)
        assert error["error"]["code"] == 500 and "[0, 256)" in error["error"]["message"] and done == "[DONE]"
        assert httpx.post(f"{broken.url}/v1/completions", json={"prompt": [2, 3, 4]}).status_code == 200
        state = health(broken.url)
        assert state["status"] == "ready" and state["failed"] == 2 and state["completed"] == 1
    finally:
        broken.stop()


def test_cli_refuses_a_server_url_as_its_model():
    run = subprocess.run([sys.executable, "-m", "lsp_server.serve", "--model", "http://gpu-box:8000/v1"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2 and "not a URL" in run.stderr and not run.stdout


# ------------------------------------------------------------------------------------------ /v1/completions


def test_text_prompt_matches_the_in_process_engine(client, reference, name):
    prompt = "def add(a, b):\n"
    body = complete(client, model=name, prompt=prompt, max_tokens=32, seed=7, return_token_ids=True)
    expected = in_process(reference, text_prompt_ids(reference, prompt), 32, 7).candidates[0]
    (choice,) = body["choices"]
    assert choice["text"] == expected.text and choice["token_ids"] == list(expected.token_ids)
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == ("stop" if expected.finished else "length")
    assert body["object"] == "text_completion" and body["model"] == name and body["id"].startswith("cmpl-")
    prompt_tokens = len(text_prompt_ids(reference, prompt))
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": len(choice["token_ids"]) +
                             expected.finished, "total_tokens": prompt_tokens + len(choice["token_ids"]) +
                             expected.finished}


def test_token_ids_suffix_and_special_token_text_are_the_same_prompt(client, reference):
    _, ids = infill_prompt(reference, "def square(x):\n    return ", "\n\nprint(square(3))\n")
    expected = in_process(reference, ids, 16, 3).candidates[0].text
    assert complete(client, prompt=ids, max_tokens=16, seed=3)["choices"][0]["text"] == expected
    with_suffix = complete(client, prompt="def square(x):\n    return ", suffix="\n\nprint(square(3))\n",
                           max_tokens=16, seed=3)
    assert with_suffix["choices"][0]["text"] == expected
    laid_out = reference.tokenizer.decode(ids, skip_special_tokens=False)  # "<bos><fim_prefix>..." as text
    assert laid_out.startswith("<bos><fim_prefix>")
    as_text = complete(client, prompt=laid_out, max_tokens=16, seed=3)
    assert as_text["choices"][0]["text"] == expected and as_text["usage"]["prompt_tokens"] == len(ids)


def test_n_choices_and_several_prompts(client):
    body = complete(client, prompt="import os\n", n=3, max_tokens=16, seed=1, return_token_ids=True)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["text"] for c in body["choices"]}) > 1  # one batch of different candidates
    generated = sum(len(c["token_ids"]) + (c["finish_reason"] == "stop") for c in body["choices"])
    assert body["usage"]["completion_tokens"] == generated
    several = complete(client, prompt=["import os\n", "import sys\n"], n=2, max_tokens=16, seed=1)
    assert [c["index"] for c in several["choices"]] == [0, 1, 2, 3]
    # Each prompt is its own run with the request's seed (a batch of n draws its noise per row: n=2 is not n=3).
    alone = complete(client, prompt="import sys\n", n=2, max_tokens=16, seed=1)
    assert [c["text"] for c in several["choices"][2:]] == [c["text"] for c in alone["choices"]]


def test_max_tokens_is_exact(client, reference):
    prompt = "class Stack:\n"
    body = complete(client, prompt=prompt, max_tokens=5, seed=2, return_token_ids=True)
    full = in_process(reference, text_prompt_ids(reference, prompt), 16, 2).candidates[0]
    (choice,) = body["choices"]
    assert choice["token_ids"] == list(full.token_ids[:5])
    if len(full.token_ids) >= 5:
        assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 5


def test_stop_strings_cut_the_text(client):
    base = complete(client, prompt="for i in range(10):\n", max_tokens=32, seed=4)["choices"][0]["text"]
    assert len(base) > 12
    stop = base[8:10]
    cut = complete(client, prompt="for i in range(10):\n", max_tokens=32, seed=4, stop=[stop, "\u2603never"])
    (choice,) = cut["choices"]
    assert choice["text"] == base[:base.find(stop)]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop


def test_stop_token_ids_end_a_candidate(client):
    body = complete(client, prompt="while True:\n", max_tokens=16, seed=5, return_token_ids=True)
    ids = body["choices"][0]["token_ids"]
    k = next(k for k in range(2, len(ids)) if ids[k] not in ids[:k])
    stopped = complete(client, prompt="while True:\n", max_tokens=16, seed=5, return_token_ids=True,
                       stop_token_ids=[ids[k]])
    (choice,) = stopped["choices"]
    assert choice["token_ids"] == ids[:k]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == ids[k]
    assert stopped["usage"]["completion_tokens"] == k + 1


def test_openai_client_streams_the_same_text(server, name):
    openai_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    request = dict(model=name, prompt="def fib(n):\n", max_tokens=48, seed=11)
    whole = openai_client.completions.create(**request)
    chunks = list(openai_client.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    content = [chunk for chunk in chunks if chunk.choices]
    assert len(content) >= 3  # two committed canvases stream before the end of three
    assert "".join(chunk.choices[0].text for chunk in content) == whole.choices[0].text
    assert all(chunk.choices[0].finish_reason is None for chunk in content[:-1])
    assert content[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    stop = whole.choices[0].text[20:23]  # in the second canvas: streamed text must never pass it
    stopped = openai_client.completions.create(**request, stop=[stop])
    streamed = openai_client.completions.create(**request, stop=[stop], stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == stopped.choices[0].text


def test_stream_with_several_choices(client):
    request = dict(prompt="x = [", max_tokens=32, seed=8, n=2)
    whole = complete(client, **request)
    with client.stream("POST", "/v1/completions", json={**request, "stream": True}) as answer:
        events = sse(answer)
    assert events[-1] == "[DONE]"
    texts = {0: "", 1: ""}
    for event in events[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    assert [texts[0], texts[1]] == [c["text"] for c in whole["choices"]]


# ------------------------------------------------------------------------------------------ /v1/canvas


def test_canvas_streams_every_step_then_the_response(client):
    request = dict(prompt="def mean(xs):\n", max_tokens=32, seed=6)
    expected = complete(client, **request)
    with client.stream("POST", "/v1/canvas", json=request) as answer:
        events = sse(answer)
    *steps, final, done = events
    assert done == "[DONE]" and all(step["object"] == "diffgemma.canvas" for step in steps)
    assert [(s["block"], s["step"]) for s in steps] == [(b, k) for b in range(2) for k in range(1, 9)]
    assert all(s["max_steps"] == 8 and 0.0 <= s["accepted_fraction"] <= 1.0 for s in steps)
    assert steps[-1]["text"] == final["choices"][0]["text"] == expected["choices"][0]["text"]
    assert final["choices"][0]["score"] > 0 and final["choices"][0]["token_ids"]
    assert final["usage"] == expected["usage"] and final["object"] == "text_completion"
    stats = final["diffgemma"]
    assert stats["steps"] == 16 and stats["blocks"] == 2 and stats["wall_time_ms"] > 0
    assert stats["prompt_tokens"] == expected["usage"]["prompt_tokens"] and stats["tokens_per_forward"] > 0


def test_diffusion_max_steps_override(client):
    request = dict(prompt="def mean(xs):\n", max_tokens=16, seed=6, vllm_xargs={"diffusion_max_steps": 3})
    with client.stream("POST", "/v1/canvas", json=request) as answer:
        events = sse(answer)
    assert [(s["step"], s["max_steps"]) for s in events[:-2]] == [(1, 3), (2, 3), (3, 3)]
    assert events[-2]["diffgemma"]["steps"] == 3


# ------------------------------------------------------------------------------------------ /infill

LLAMA_VIM_EXTRA = [{"text": "def helper():\n    return 42\n", "time": 123, "filename": "helpers.py"}]
LLAMA_VIM_FIELDS = ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                    "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                    "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated", "tokens_cached"]


def test_llama_vim_warm_up_and_request(client):
    prefix, suffix = "import math\n\ndef area(r):\n", "\n\nprint(area(2))\n"
    warm_up = {"input_prefix": prefix, "input_suffix": suffix, "input_extra": LLAMA_VIM_EXTRA, "prompt": "",
               "n_predict": 0, "temperature": 0.0, "stream": False, "samplers": [], "cache_prompt": True,
               "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""]}
    answer = client.post("/infill", json=warm_up)
    assert answer.status_code == 200 and answer.json() == {}  # llama.cpp drops paths that do not exist
    completed = health(str(client.base_url))["completed"]

    request = {"input_prefix": prefix, "input_suffix": suffix, "input_extra": LLAMA_VIM_EXTRA,
               "prompt": "    return ", "n_predict": 128, "n_indent": 4, "top_k": 40, "top_p": 0.99,
               "stream": False, "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True,
               "t_max_prompt_ms": 500, "t_max_predict_ms": 1000, "response_fields": LLAMA_VIM_FIELDS,
               "model": "fim-qwen-7b-default"}  # newer llama.vim sends its model_fim; llama.cpp's router uses it
    answer = client.post("/infill", json=request)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == set(LLAMA_VIM_FIELDS)  # flat "timings/prompt_n" keys, as llama.cpp projects them
    assert isinstance(body["content"], str) and body["truncated"] is False
    assert 0 < body["timings/prompt_n"] <= body["tokens_cached"] and body["timings/predicted_n"] > 0
    assert health(str(client.base_url))["completed"] == completed + 1


def test_infill_matches_the_in_process_engine(client, reference, name):
    prefix, suffix = "def double(x):\n", "\n"
    body = client.post("/infill", json={"input_prefix": prefix, "input_suffix": suffix, "prompt": "    return ",
                                        "n_predict": 16, "seed": 9}).json()
    expected = reference.infill(prefix + "    return ", suffix, max_new_tokens=16, seed=9, sampling="fast")
    assert body["content"] == expected.middle and body["stop"] is True and body["model"] == name
    assert body["tokens_evaluated"] == expected.generation.prompt_tokens
    assert body["timings"]["predicted_n"] == body["tokens_predicted"] > 0
    assert body["stop_type"] in ("eos", "limit")

    with_extra = client.post("/infill", json={"input_prefix": prefix, "input_suffix": suffix, "prompt": "    return ",
                                              "n_predict": 16, "seed": 9, "input_extra": LLAMA_VIM_EXTRA}).json()
    label = "# Path: helpers.py\n" + LLAMA_VIM_EXTRA[0]["text"] + "\n"
    expected = reference.infill(label + prefix + "    return ", suffix, max_new_tokens=16, seed=9, sampling="fast")
    assert with_extra["tokens_evaluated"] == expected.generation.prompt_tokens > body["tokens_evaluated"]
    assert with_extra["content"] == expected.middle


def test_infill_several_completions_and_stream(client):
    request = {"input_prefix": "def f():\n", "input_suffix": "\n", "n_predict": 48, "seed": 2}
    several = client.post("/infill", json={**request, "n_cmpl": 2}).json()
    assert isinstance(several, list) and [item["index"] for item in several] == [0, 1]  # llama.cpp's array
    single = client.post("/infill", json=request).json()
    with client.stream("POST", "/infill", json={**request, "stream": True}) as answer:
        events = sse(answer)
    *partials, final = events
    assert len(partials) >= 2 and all(event["stop"] is False for event in partials)
    assert "".join(event["content"] for event in partials) == single["content"]
    assert final["stop"] is True and final["content"] == "" and "timings" in final


# ------------------------------------------------------------------------------------------ errors


def test_api_key_is_required(server, name):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/infill")):
            answer = httpx.request(method, f"{server.url}{path}", headers=headers, json={"prompt": "x"})
            assert answer.status_code == 401, (headers, path)
            assert answer.json()["error"]["code"] == 401 and answer.json()["error"]["type"]
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH).status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert API_KEY not in server.log.read_text()


@pytest.mark.parametrize("body, param, words", [
    ({"prompt": [1, 2, 512]}, "prompt", "[0, 512)"),
    ({"prompt": "x", "vllm_xargs": {"diffusion_temperature": 1}}, "vllm_xargs", "diffusion_temperature"),
    ({"prompt": "x", "vllm_xargs": {"diffusion_max_steps": 0}}, "vllm_xargs.diffusion_max_steps", ">= 1"),
    ({"prompt": [2, 3], "suffix": "x"}, "suffix", "text prompt"),
    ({"prompt": "x", "n": 0}, "n", ">= 1"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", ">= 1"),
    ({"prompt": "x", "max_tokens": "ten"}, "max_tokens", "integer"),
    ({"prompt": "x", "echo": True}, "echo", "echo"),
    ({"prompt": "x", "logprobs": 1}, "logprobs", "logprobs"),
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": [[1], "x"]}, "prompt", "list"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"prompt": "x", "stop_token_ids": [600]}, "stop_token_ids", "[0, 512)"),
    ({}, "prompt", "required"),
])
def test_invalid_requests_answer_400(client, body, param, words):
    answer = client.post("/v1/completions", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and words in error["message"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error"


def test_bad_json_unknown_model_and_accepted_ignored_fields(client):
    answer = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "JSON" in answer.json()["error"]["message"]
    assert client.post("/infill", content=b"[1, 2]").status_code == 400
    answer = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"})
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "model"
    ignored = {"temperature": 0.2, "top_p": 0.9, "top_k": 10, "presence_penalty": 0, "frequency_penalty": 0,
               "user": "me", "best_of": 1, "logit_bias": None, "vllm_xargs": {"diffusion_max_steps": 2}}
    assert len(complete(client, prompt="x", max_tokens=4, **ignored)["choices"]) == 1


# ------------------------------------------------------------------------------------------ cancellation

LONG_RUN = {"prompt": "x", "max_tokens": 16 * 60, "vllm_xargs": {"diffusion_max_steps": 64}}  # ~60 canvases


def test_a_disconnected_stream_cancels_its_run(slow_server):
    before = health(slow_server.url)
    with httpx.Client(base_url=slow_server.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json={**LONG_RUN, "stream": True}) as answer:
            first = next(line for line in answer.iter_lines() if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["text"] == "x" * 16  # the first committed canvas
    state, elapsed = wait_health(slow_server.url, lambda s: not s["busy"] and s["cancelled"] > before["cancelled"],
                                 timeout=5)
    assert state["completed"] == before["completed"]
    answer = httpx.post(f"{slow_server.url}/v1/completions", json={"prompt": "x", "max_tokens": 16}, timeout=30)
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == "x" * 16


def test_a_client_timeout_cancels_a_running_and_a_queued_request(slow_server):
    before = health(slow_server.url)
    with httpx.Client(base_url=slow_server.url, timeout=30) as streaming:
        with streaming.stream("POST", "/v1/completions", json={**LONG_RUN, "stream": True}) as running:
            wait_health(slow_server.url, lambda s: s["busy"], timeout=5)
            with pytest.raises(httpx.ReadTimeout):  # queued behind the stream, and given up
                httpx.post(f"{slow_server.url}/v1/completions", json=LONG_RUN, timeout=0.5)
            state, _ = wait_health(slow_server.url, lambda s: s["cancelled"] == before["cancelled"] + 1, timeout=5)
            assert state["busy"] and state["queue"] == 0  # dropped from the queue while the stream runs
            next(running.iter_lines())
    wait_health(slow_server.url, lambda s: not s["busy"] and s["cancelled"] == before["cancelled"] + 2, timeout=5)

    with pytest.raises(httpx.ReadTimeout):  # now running when the client gives up
        httpx.post(f"{slow_server.url}/v1/completions", json=LONG_RUN, timeout=1.0)
    state, _ = wait_health(slow_server.url, lambda s: not s["busy"] and s["cancelled"] == before["cancelled"] + 3,
                           timeout=5)
    assert state["completed"] == before["completed"]


def test_concurrent_clients_all_get_their_answers(server, client):
    requests = [dict(prompt=f"def f{i}(x):\n", max_tokens=32, seed=i) for i in range(4)]
    expected = [complete(client, **request)["choices"][0]["text"] for request in requests]

    def own_client(request: dict[str, Any]) -> dict[str, Any]:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
            return complete(http, **request)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(own_client, requests))
    assert [answer["choices"][0]["text"] for answer in answers] == expected
