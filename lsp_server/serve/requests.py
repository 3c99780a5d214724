"""Request bodies of diffgemma-serve, parsed and validated into dataclasses; every problem is a 400 `ApiError`.

Parsing needs no model: what depends on the checkpoint (token ids below its vocabulary size, the tokenization of
text prompts) is checked by the app once the model is loaded. Fields this server does not use are accepted and
ignored, as vLLM and llama.cpp ignore what they do not know; fields it cannot honour (`echo`, `logprobs`, a
`best_of` other than `n`, a non-empty `logit_bias`) are refused, so a client never silently gets less than it
asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MAX_STOP_STRINGS = 4  # as the OpenAI API
VLLM_XARGS = ("diffusion_max_steps",)  # the vllm_xargs keys this server understands
# llama.cpp's LLAMA_DEFAULT_SEED: what its clients send for "a random seed".
LLAMA_RANDOM_SEED = 0xFFFFFFFF

Prompt = str | tuple[int, ...]


class ApiError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with HTTP status `status`."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


class RequestError(ApiError):
    """An invalid request (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(400, message, "invalid_request_error", param)


@dataclass(frozen=True)
class CompletionRequest:
    """`/v1/completions` and `/v1/canvas`: the vLLM completion fields this server acts on."""

    prompts: tuple[Prompt, ...]  # each a text or a list of token ids
    model: str | None = None
    suffix: str | None = None  # text prompts only: the prompt becomes a fill-in-the-middle prompt
    max_tokens: int | None = 16  # None: the checkpoint's max_new_tokens
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    stream: bool = False
    include_usage: bool = False
    add_special_tokens: bool = True
    return_token_ids: bool = False
    max_denoising_steps: int | None = None  # vllm_xargs.diffusion_max_steps


@dataclass(frozen=True)
class ExtraChunk:
    """One `input_extra` entry of a llama.cpp infill request: text from another file."""

    filename: str
    text: str


@dataclass(frozen=True)
class InfillRequest:
    """`/infill`: the llama.cpp infill fields this server acts on."""

    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: tuple[ExtraChunk, ...] = ()
    prompt: str = ""  # appended to the prefix (llama.vim sends the current line up to the cursor here)
    n_predict: int | None = None  # None: the checkpoint's max_new_tokens; 0: a warm-up (encode the prompt only)
    n_cmpl: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    response_fields: tuple[str, ...] = ()  # empty: the whole response

    @property
    def warm_up(self) -> bool:
        return self.n_predict == 0


def read_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


# ------------------------------------------------------------------------------------------ field checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(name: str, value: Any, minimum: int | None = None) -> int:
    if not _is_int(value):
        raise RequestError(f"{name} must be an integer, got {json.dumps(value)}", name)
    if minimum is not None and value < minimum:
        raise RequestError(f"{name} must be >= {minimum}, got {value}", name)
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {json.dumps(value)}", name)
    return value


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string, got {json.dumps(value)}", name)
    return value


def _number(name: str, value: Any) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise RequestError(f"{name} must be a number, got {json.dumps(value)}", name)
    return float(value)


def _field(body: Mapping[str, Any], name: str, check: Callable[[str, Any], T], default: T) -> T:
    """`body[name]` checked, or `default` when it is absent or null."""
    value = body.get(name)
    return default if value is None else check(name, value)


def _seed(name: str, value: Any) -> int:
    seed = _int(name, value, minimum=0)
    if seed >= 2**64:  # torch seeds are 64-bit
        raise RequestError(f"{name} must be below 2**64, got {seed}", name)
    return seed


def _stop_strings(name: str, value: Any, limit: int | None) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise RequestError(f"{name} must be a string or a list of strings", name)
    if limit is not None and len(stops) > limit:
        raise RequestError(f"{name} may hold at most {limit} strings, got {len(stops)}", name)
    if any(not stop for stop in stops):
        raise RequestError(f"{name} strings must not be empty", name)
    return tuple(stops)


def _token_ids(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(t) and t >= 0 for t in value):
        raise RequestError(f"{name} must be a list of non-negative token ids", name)
    return tuple(value)


def _prompts(value: Any, has_suffix: bool) -> tuple[Prompt, ...]:
    """A string, a list of ids, a list of strings or a list of lists of ids, as a tuple of prompts."""
    if value is None:
        raise RequestError("prompt is required", "prompt")
    if isinstance(value, str):
        prompts: list[Prompt] = [value]
    elif isinstance(value, list) and value and all(_is_int(t) for t in value):
        prompts = [tuple(value)]
    elif isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        prompts = list(value)
    elif isinstance(value, list) and value and all(isinstance(p, list) and all(_is_int(t) for t in p) for p in value):
        prompts = [tuple(p) for p in value]
    elif isinstance(value, list) and not value:
        raise RequestError("prompt is empty", "prompt")
    else:
        raise RequestError("prompt must be a string, a list of token ids, a list of strings or a list of lists "
                           "of token ids", "prompt")
    for prompt in prompts:
        if isinstance(prompt, tuple) and any(t < 0 for t in prompt):
            raise RequestError("prompt token ids must be non-negative", "prompt")
        # A fill-in-the-middle prompt may have an empty prefix (a hole at the start of the file).
        if not prompt and not (has_suffix and isinstance(prompt, str)):
            raise RequestError("prompt is empty", "prompt")
    return tuple(prompts)


def _xargs(value: Any) -> int | None:
    """vllm_xargs: the diffusion step override; an unknown key is refused, so a client can probe for support."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestError("vllm_xargs must be an object", "vllm_xargs")
    unknown = sorted(set(value) - set(VLLM_XARGS))
    if unknown:
        raise RequestError(f"vllm_xargs: unknown key {unknown[0]!r}; this server accepts {', '.join(VLLM_XARGS)}",
                           "vllm_xargs")
    steps = value.get("diffusion_max_steps")
    return None if steps is None else _int("vllm_xargs.diffusion_max_steps", steps, minimum=1)


# ------------------------------------------------------------------------------------------ request kinds

# Sampler knobs of vLLM's schema: type-checked, then ignored (the diffusion sampler's temperature schedule
# comes from the checkpoint's generation config).
_IGNORED_NUMBERS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                    "repetition_penalty")


def parse_completion(body: Mapping[str, Any]) -> CompletionRequest:
    """A `/v1/completions` (or `/v1/canvas`) body."""
    suffix = _field(body, "suffix", _str, None)
    prompts = _prompts(body.get("prompt"), suffix is not None)
    if suffix is not None and any(isinstance(p, tuple) for p in prompts):
        raise RequestError("suffix needs a text prompt: a token-id prompt is already laid out", "suffix")
    n = _field(body, "n", lambda k, v: _int(k, v, minimum=1), 1)
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise RequestError("best_of must be null or equal to n: every candidate is returned", "best_of")
    if body.get("echo"):
        raise RequestError("echo is not supported", "echo")
    if body.get("logprobs") is not None:
        raise RequestError("logprobs are not supported: the diffusion sampler has no per-token log-probabilities",
                           "logprobs")
    if body.get("logit_bias"):
        raise RequestError("logit_bias is not supported", "logit_bias")
    for name in _IGNORED_NUMBERS:
        _field(body, name, _number, None)
    _field(body, "user", _str, None)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    max_tokens = body.get("max_tokens", 16)
    return CompletionRequest(
        prompts=prompts,
        model=_field(body, "model", _str, None),
        suffix=suffix,
        max_tokens=None if max_tokens is None else _int("max_tokens", max_tokens, minimum=1),
        n=n,
        seed=_field(body, "seed", _seed, None),
        stop=_field(body, "stop", lambda k, v: _stop_strings(k, v, MAX_STOP_STRINGS), ()),
        stop_token_ids=_field(body, "stop_token_ids", _token_ids, ()),
        stream=_field(body, "stream", _bool, False),
        include_usage=_field(stream_options or {}, "include_usage", _bool, False),
        add_special_tokens=_field(body, "add_special_tokens", _bool, True),
        return_token_ids=_field(body, "return_token_ids", _bool, False),
        max_denoising_steps=_xargs(body.get("vllm_xargs")),
    )


def _extra_chunks(name: str, value: Any) -> tuple[ExtraChunk, ...]:
    if not isinstance(value, list):
        raise RequestError(f"{name} must be a list of {{\"filename\", \"text\"}} objects", name)
    chunks = []
    for index, chunk in enumerate(value):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise RequestError(f"{name}[{index}] must be an object with a string \"text\"", name)
        filename = chunk.get("filename", "")
        if not isinstance(filename, str):
            raise RequestError(f"{name}[{index}].filename must be a string", name)
        chunks.append(ExtraChunk(filename, chunk["text"]))  # other keys (llama.vim's "time") are ignored
    return tuple(chunks)


def _n_predict(name: str, value: Any) -> int | None:
    # llama.cpp: -1 is "no limit", here the checkpoint's max_new_tokens.
    return None if _int(name, value, minimum=-1) == -1 else value


def _llama_seed(name: str, value: Any) -> int | None:
    # llama.cpp: a negative seed or LLAMA_DEFAULT_SEED asks for a random one.
    seed = _int(name, value)
    return None if seed < 0 or seed == LLAMA_RANDOM_SEED else _seed(name, seed)


def _response_fields(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(path, str) for path in value):
        raise RequestError(f"{name} must be a list of strings", name)
    return tuple(value)


def parse_infill(body: Mapping[str, Any]) -> InfillRequest:
    """A llama.cpp `/infill` body (what llama.vim and llama.vscode send).

    Accepted and ignored: n_indent, top_k, top_p, samplers, cache_prompt (the engine always keeps its prefix
    cache), t_max_prompt_ms, t_max_predict_ms, id_slot, temperature, lora, and anything else.
    """
    n_cmpl = body.get("n_cmpl", body.get("n"))  # llama.cpp takes "n" as an alias
    return InfillRequest(
        input_prefix=_field(body, "input_prefix", _str, ""),
        input_suffix=_field(body, "input_suffix", _str, ""),
        input_extra=_field(body, "input_extra", _extra_chunks, ()),
        prompt=_field(body, "prompt", _str, ""),
        n_predict=_field(body, "n_predict", _n_predict, None),
        n_cmpl=1 if n_cmpl is None else _int("n_cmpl", n_cmpl, minimum=1),
        seed=_field(body, "seed", _llama_seed, None),
        stop=_field(body, "stop", lambda k, v: _stop_strings(k, v, None), ()),
        stream=_field(body, "stream", _bool, False),
        response_fields=_field(body, "response_fields", _response_fields, ()),
    )
