"""The remote backend: a model served over HTTP (vLLM, diffgemma-serve, any OpenAI-compatible server).

:class:`RemoteModel` has the local :class:`~engine.Engine`'s ``infill`` interface, so the pipeline, the scheduler
and everything the server does around a completion (context, post-processing, ranking, typed-ahead, the result
cache) stay as they are. The prompt is rendered here, in the layout of the local engine (``engine.infill``): as
token ids when a local tokenizer is configured (vLLM answers the OpenAI ``suffix`` field with HTTP 400, so FIM
clients render the prompt themselves), else as text with the control tokens spelled out.

Requests go to ``/v1/completions`` with ``stream: true`` and ``n`` candidates. When the server is diffgemma-serve
(its ``/v1/models`` entry carries a ``diffgemma`` object) and someone listens to the canvas, they go to
``/v1/canvas`` instead, which streams every denoising step; vLLM streams one chunk per committed canvas.

HTTP runs on a private event loop thread. The model worker that calls ``infill`` waits for the request's future
and polls its ``cancelled`` callback meanwhile: a superseded or cancelled request closes its stream, which aborts
the request on vLLM and on diffgemma-serve. A sync client could not do that: closing a socket from another
thread does not wake a blocked read.

Failures (down, slow, refused, garbage) raise :class:`RemoteUnavailable` and start a backoff (0.5 s doubling to
30 s) during which requests fail at once without touching the network: an editor asks on every keystroke, and
the server must not be hammered while it restarts. The first request after the backoff tries again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tokenizers import Tokenizer

from engine import CanvasText, GenerationCancelled, GenerationResult, InfillCandidate, InfillResult
from engine.infill import CHAT_FORMAT, TURN_CLOSE, prompt_format, prompt_ids, prompt_text, strip_code_fence
from lsp_server import VERSION
from lsp_server.settings import Settings

API_KEY_ENVIRONMENT = "DIFFGEMMA_API_KEY"
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
CANCEL_POLL_S = 0.01  # how often a waiting request checks whether it was superseded
# Without a local tokenizer, prompt budgets are counted at this many UTF-8 bytes per token (code averages 3-4):
# an overestimate keeps the prompt inside the remote model's budget.
BYTES_PER_TOKEN_GUESS = 3
DEFAULT_MAX_TOKENS = 64  # when neither the settings nor the server say how long one canvas is


class RemoteError(RuntimeError):
    """A remote request failed; ``str()`` names the server and the reason (never the API key)."""

    def __init__(self, url: str, reason: str, retry_in: float | None = None) -> None:
        super().__init__(f"{url}: {reason}" + (f" (next try in {retry_in:.1f} s)" if retry_in else ""))
        self.url = url
        self.reason = reason


class RemoteUnavailable(RemoteError):
    """The server is down, slow, refuses us or answers garbage: requests back off until it recovers."""


class RemoteRequestRejected(RemoteError):
    """The server rejected one request (HTTP 400/422, e.g. a prompt over its context length); no backoff."""


@dataclass(frozen=True)
class ServedModel:
    """What ``/v1/models`` says about the model the requests name."""

    name: str
    diffgemma: bool  # served by diffgemma-serve: /v1/canvas streams every step
    prompt_format: str | None  # diffgemma-serve tells; vLLM does not
    max_new_tokens: int | None  # one canvas, as the local engine's default
    xargs: frozenset[str] | None  # vllm_xargs keys the server accepts: diffgemma-serve lists them; None: probe


def load_tokenizer(path: str) -> Tokenizer:
    """A tokenizer.json, or the one in a checkpoint directory; encodes special-token strings in code as text."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise ValueError(f"tokenizer {path!r}: no tokenizer.json there")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as error:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
        raise ValueError(f"tokenizer {path!r} cannot be read: {error}") from None
    tokenizer.encode_special_tokens = True
    return tokenizer


class RemoteModel:
    """A model behind an OpenAI-compatible ``/v1`` base URL, with Engine's ``infill`` interface."""

    def __init__(self, base_url: str, *, api_key: str | None = None, model_name: str | None = None,
                 timeout: float = 10.0, verify: bool = True, tokenizer: Tokenizer | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.requested_name = model_name
        self.timeout = timeout
        self.tokenizer = tokenizer
        self._tokenizer_format = prompt_format(tokenizer) if tokenizer is not None else None
        self.served: ServedModel | None = None
        self._probed: dict[str, bool] = {}  # vllm_xargs keys tried on a server that does not list them
        self.problem: str | None = None  # the last failure, until a request succeeds
        self._failures = 0
        self._retry_at = 0.0
        headers = {"User-Agent": f"diffgemma-lsp/{VERSION}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="diffgemma-remote", daemon=True)
        self._thread.start()
        # Proxies and CA bundles come from the usual environment variables (trust_env).
        self._client = self._wait(self._make_client(headers, verify))

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteModel:
        tokenizer = load_tokenizer(settings.tokenizer) if settings.tokenizer else None
        return cls(settings.model, api_key=settings.api_key or os.environ.get(API_KEY_ENVIRONMENT),
                   model_name=settings.remote_model, timeout=settings.request_timeout,
                   verify=settings.tls_verify, tokenizer=tokenizer)

    async def _make_client(self, headers: dict[str, str], verify: bool) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=headers, verify=verify, trust_env=True,
                                 timeout=httpx.Timeout(self.timeout))

    # ----------------------------------------------------------------------------- the model interface

    @property
    def prompt_format(self) -> str:
        """The local tokenizer's format, else what diffgemma-serve says, else Gemma 4 chat (vLLM's checkpoints)."""
        if self._tokenizer_format is not None:
            return self._tokenizer_format
        if self.served is not None and self.served.prompt_format is not None:
            return self.served.prompt_format
        return CHAT_FORMAT

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN_GUESS)

    def describe(self) -> str:
        name = self.served.name if self.served else self.requested_name or "model not known yet"
        steps = "every denoising step streamed" if self.served and self.served.diffgemma else "canvases streamed"
        prompts = "token-id" if self.tokenizer is not None else "text"
        return f"{self.base_url} ({name}), {self.prompt_format} {prompts} prompts, {steps}"

    def connect(self) -> ServedModel:
        """Ask ``/v1/models`` which model to use (raises RemoteUnavailable); every request does it until it works."""
        self._check_backoff()
        return self._wait(self._guarded(self._connect()))

    def infill(
        self,
        prefix: str,
        suffix: str,
        *,
        max_new_tokens: int | None = None,
        num_candidates: int = 1,
        seed: int | None = None,
        on_canvas: Callable[[CanvasText], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        max_denoising_steps: int | None = None,
        **ignored: Any,  # local sampler options (e.g. sampling="fast"): the server's sampler decides
    ) -> InfillResult:
        """The middle between ``prefix`` and ``suffix`` from the server, like Engine.infill (GenerationCancelled
        when ``cancelled()`` turns true; RemoteError when the server fails)."""
        self._check_backoff()

        async def request() -> InfillResult:
            served = self.served or await self._connect()
            chosen = self.prompt_format
            body: dict[str, Any] = {
                "model": served.name,
                "max_tokens": max_new_tokens or served.max_new_tokens or DEFAULT_MAX_TOKENS,
                "n": num_candidates,
                "stream": True,
            }
            if self.tokenizer is not None:
                bos = self.tokenizer.token_to_id("<bos>")
                body["prompt"] = prompt_ids(self.tokenizer, chosen, bos, prefix, suffix)
                if chosen == CHAT_FORMAT and (turn_close := self.tokenizer.token_to_id(TURN_CLOSE)) is not None:
                    body["stop_token_ids"] = [turn_close]
            else:
                body["prompt"] = prompt_text(chosen, prefix, suffix)
                body["add_special_tokens"] = False  # the text starts with <bos> already
            if seed is not None:
                body["seed"] = seed
            if max_denoising_steps is not None and await self._accepts_xarg(
                    served, "diffusion_max_steps", max_denoising_steps):
                body["vllm_xargs"] = {"diffusion_max_steps": max_denoising_steps}
            if served.diffgemma and on_canvas is not None:
                return await self._canvas_request(body, chosen, on_canvas)
            return await self._completion_request(body, chosen, on_canvas)

        return self._wait(self._guarded(request()), cancelled)

    def close(self) -> None:
        """Close the connections and stop the loop thread."""
        if self._loop.is_closed():
            return
        self._wait(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    # ------------------------------------------------------------------------------------- the requests

    async def _connect(self) -> ServedModel:
        models = await self._get_json("/models")
        entries = models.get("data") if isinstance(models, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str)
                                                    for e in entries):
            raise _Malformed(f"/models answered {_preview(models)}")
        names = [entry["id"] for entry in entries]
        if self.requested_name is not None:
            if self.requested_name not in names:
                raise RemoteUnavailable(self.base_url, f"the server does not serve {self.requested_name!r} "
                                                       f"(it serves {', '.join(names) or 'nothing'})")
            entry = entries[names.index(self.requested_name)]
        elif len(entries) == 1:
            entry = entries[0]
        else:
            raise RemoteUnavailable(self.base_url, f"the server serves {len(names)} models "
                                                   f"({', '.join(names) or 'none'}): set remoteModel to one of them")
        extension = entry.get("diffgemma") if isinstance(entry.get("diffgemma"), dict) else {}
        max_new_tokens = extension.get("max_new_tokens")
        self.served = ServedModel(
            name=entry["id"],
            diffgemma=bool(extension),
            prompt_format=extension.get("prompt_format") if extension.get("prompt_format") in ("fim", "chat")
            else None,
            max_new_tokens=max_new_tokens if isinstance(max_new_tokens, int) and max_new_tokens > 0 else None,
            xargs=frozenset(key for key in extension.get("xargs", ()) if isinstance(key, str)) if extension
            else None,
        )
        self._probed = {}
        return self.served

    async def _accepts_xarg(self, served: ServedModel, key: str, value: Any) -> bool:
        """Whether the server takes ``vllm_xargs[key]``: listed by diffgemma-serve, else one tiny request, once.

        Newer vLLM builds take per-request diffusion settings there and validate them; others answer 400 or
        ignore them, and an ignored key is harmless. Never required.
        """
        if served.xargs is not None:
            return key in served.xargs
        if key not in self._probed:
            body = {"model": served.name, "prompt": "\n", "max_tokens": 1, "vllm_xargs": {key: value}}
            response = await self._client.post(self.base_url + "/completions", json=body)
            if response.status_code not in (200, 400, 422):
                raise _status_error(self.base_url, response.status_code, response.text)
            self._probed[key] = response.status_code == 200
        return self._probed[key]

    async def _completion_request(self, body: dict[str, Any], chosen: str,
                                  on_canvas: Callable[[CanvasText], None] | None) -> InfillResult:
        """``/v1/completions`` streamed: deltas per choice; each chunk of the first choice is one committed canvas."""
        started = time.perf_counter()
        texts: dict[int, str] = {}
        finish: dict[int, str | None] = {}
        token_ids: dict[int, list[int]] = {}
        prompt_tokens, chunks = 0, 0
        async for event in self._stream("/completions", body):
            if isinstance(event.get("usage"), dict):
                prompt_tokens = event["usage"].get("prompt_tokens") or prompt_tokens
            for choice in _choices(event):
                index = choice["index"]
                texts[index] = texts.get(index, "") + choice.get("text", "")
                token_ids.setdefault(index, []).extend(choice.get("token_ids") or ())
                if choice.get("finish_reason") is not None:
                    finish[index] = choice["finish_reason"]
                if index == 0 and choice.get("text") and on_canvas is not None:
                    on_canvas(CanvasText(chunks, 1, 1, _middle(texts[0], chosen), 1.0))
                    chunks += 1
        expected = range(body["n"])
        if sorted(texts) != list(expected) or any(finish.get(i) is None for i in expected):
            raise _Malformed(f"the stream ended before every choice finished (got choices {sorted(texts)})")
        candidates = [InfillCandidate(_middle(texts[i], chosen), 0.0, finish[i] == "stop", tuple(token_ids[i]))
                      for i in expected]
        return InfillResult(candidates, chosen, _generation(candidates, prompt_tokens, prompt_tokens, 0,
                                                            max(chunks, 1), started))

    async def _canvas_request(self, body: dict[str, Any], chosen: str,
                              on_canvas: Callable[[CanvasText], None]) -> InfillResult:
        """diffgemma-serve's ``/v1/canvas``: every denoising step, then the whole completion."""
        started = time.perf_counter()
        final: dict[str, Any] | None = None
        async for event in self._stream("/canvas", {key: v for key, v in body.items() if key != "stream"}):
            if event.get("object") == "diffgemma.canvas":
                try:
                    on_canvas(CanvasText(int(event["block"]), int(event["step"]), int(event["max_steps"]),
                                         str(event["text"]), float(event["accepted_fraction"])))
                except (KeyError, TypeError, ValueError):
                    raise _Malformed(f"a canvas event without its fields: {_preview(event)}") from None
            else:
                final = event
        if final is None:
            raise _Malformed("the canvas stream ended without the completion")
        choices = sorted(_choices(final), key=lambda choice: choice["index"])
        if [choice["index"] for choice in choices] != list(range(body["n"])):
            raise _Malformed(f"the completion has choices {[c['index'] for c in choices]}, not {body['n']}")
        candidates = [InfillCandidate(_middle(choice.get("text", ""), chosen), float(choice.get("score") or 0.0),
                                      choice.get("finish_reason") == "stop", tuple(choice.get("token_ids") or ()))
                      for choice in choices]
        stats = final.get("diffgemma") if isinstance(final.get("diffgemma"), dict) else {}
        usage = final.get("usage") if isinstance(final.get("usage"), dict) else {}
        prompt_tokens = int(stats.get("prompt_tokens") or usage.get("prompt_tokens") or 0)
        return InfillResult(candidates, chosen, _generation(
            candidates, prompt_tokens, int(stats.get("encoded_prompt_tokens") or prompt_tokens),
            int(stats.get("steps") or 0), int(stats.get("blocks") or 1), started))

    async def _get_json(self, path: str) -> Any:
        response = await self._client.get(self.base_url + path)
        if response.status_code != 200:
            raise _status_error(self.base_url, response.status_code, response.text)
        try:
            return response.json()
        except ValueError:
            raise _Malformed(f"{path} answered {_preview(response.text)}") from None

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The JSON events of a server-sent-event response, up to ``data: [DONE]``."""
        async with self._client.stream("POST", self.base_url + path, json=body) as response:
            if response.status_code != 200:
                raise _status_error(self.base_url, response.status_code, (await response.aread()).decode(
                    "utf-8", "replace"))
            data: list[str] = []
            async for line in _sse_lines(response):
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                    continue
                if line or not data:  # comments, other fields, keep-alive blank lines
                    continue
                payload, data = "\n".join(data), []
                if payload == "[DONE]":
                    return
                try:
                    event = json.loads(payload)
                except ValueError:
                    raise _Malformed(f"an event that is not JSON: {_preview(payload)}") from None
                if not isinstance(event, dict):
                    raise _Malformed(f"an event that is not an object: {_preview(payload)}")
                if isinstance(event.get("error"), dict):
                    raise RemoteUnavailable(self.base_url, f"failed mid-stream: {event['error'].get('message')}")
                yield event
        raise _Malformed("the stream ended without data: [DONE]")

    # ---------------------------------------------------------------------- failures, backoff, threads

    async def _guarded(self, work: Coroutine[Any, Any, Any]) -> Any:
        """Run ``work`` within the request timeout; map every failure to a RemoteError and keep the backoff."""
        try:
            result = await asyncio.wait_for(work, self.timeout)
        except RemoteRequestRejected:
            raise
        except RemoteUnavailable as error:
            raise self._failed(error.reason) from None
        except _Malformed as error:
            raise self._failed(f"malformed answer: {error}") from None
        except (TimeoutError, httpx.TimeoutException):
            raise self._failed(f"no answer within {self.timeout:g} s") from None
        except httpx.ConnectError as error:
            raise self._failed(f"cannot connect ({error or type(error).__name__})") from None
        except httpx.HTTPError as error:
            raise self._failed(f"{type(error).__name__}: {error or 'the connection failed'}") from None
        self._failures, self.problem = 0, None
        return result

    def _failed(self, reason: str) -> RemoteUnavailable:
        self._failures += 1
        self._retry_at = time.monotonic() + min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures - 1))
        self.problem = reason
        self.served = None  # ask /v1/models again: the server may come back with another model
        return RemoteUnavailable(self.base_url, reason)

    def _check_backoff(self) -> None:
        wait = self._retry_at - time.monotonic()
        if self.problem is not None and wait > 0:
            raise RemoteUnavailable(self.base_url, self.problem, retry_in=wait)

    def _wait(self, work: Coroutine[Any, Any, Any], cancelled: Callable[[], bool] | None = None) -> Any:
        """Run ``work`` on the loop thread and wait for it; cancel it (closing its stream) when ``cancelled()``."""
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        while True:
            try:
                return future.result(timeout=CANCEL_POLL_S if cancelled is not None else None)
            except concurrent.futures.TimeoutError:
                if cancelled():
                    future.cancel()
                    raise GenerationCancelled() from None


async def _sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of an event stream, split only where SSE ends a line (LF, CRLF; a CR alone is not seen in practice).

    httpx's ``aiter_lines`` also splits at U+2028, U+0085 and other Unicode line boundaries, which JSON carries
    unescaped inside strings, so a canvas holding one would arrive cut in two.
    """
    pending = b""
    async for chunk in response.aiter_bytes():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
    if pending:
        yield pending.removesuffix(b"\r").decode("utf-8", "replace")


class _Malformed(Exception):
    """The server's answer does not have the shape the API promises."""


def _status_error(url: str, status: int, body: str) -> RemoteError:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = _preview(body)
    if status in (401, 403):
        return RemoteUnavailable(url, f"the server refused the API key (HTTP {status}: {message})")
    if status in (400, 422):
        return RemoteRequestRejected(url, f"the server rejected the request (HTTP {status}: {message})")
    return RemoteUnavailable(url, f"HTTP {status}: {message}")


def _choices(event: dict[str, Any]) -> list[dict[str, Any]]:
    choices = event.get("choices")
    if not isinstance(choices, list) or not all(
            isinstance(c, dict) and isinstance(c.get("index"), int) and isinstance(c.get("text", ""), str)
            for c in choices):
        raise _Malformed(f"an event without valid choices: {_preview(event)}")
    return choices


def _middle(text: str, chosen: str) -> str:
    return strip_code_fence(text) if chosen == CHAT_FORMAT else text


def _generation(candidates: list[InfillCandidate], prompt_tokens: int, encoded: int, steps: int, blocks: int,
                started: float) -> GenerationResult:
    rows = [list(candidate.token_ids) for candidate in candidates]
    scores = [candidate.score for candidate in candidates]
    wall = time.perf_counter() - started
    return GenerationResult(tokens=rows[0], tokens_per_forward=scores[0], candidates=rows,
                            candidates_tokens_per_forward=scores, steps=steps, blocks=blocks,
                            prompt_tokens=prompt_tokens, encoded_prompt_tokens=encoded, wall_time_s=wall,
                            encoder_time_s=0.0, decoder_time_s=0.0)


def _preview(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"
