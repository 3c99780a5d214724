"""The server's settings: one fully-defaulted, typed object; camelCase names on the wire.

Clients send settings as ``initializationOptions`` and in ``workspace/didChangeConfiguration``, either flat
(``{"maxPromptTokens": 2048}``) or under a ``diffgemma`` section (``{"diffgemma": {...}}``, what VS Code sends).
A change names only the fields it changes; a field with a wrong type or value keeps its previous value and is
reported, so one typo never takes the other settings with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from engine import EMBEDDED_MODEL
from engine.engine import DTYPES, MODES as ENGINE_MODES
from engine.kernels.quantize import SCHEMES as QUANTIZATIONS

SECTION = "diffgemma"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class Settings:
    model: str = EMBEDDED_MODEL  # checkpoint directory, "embedded", or a server's base URL (http://host:8000/v1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto: bfloat16 on CUDA and on CPUs with bf16 instructions, else float32
    engine_mode: str = "serving"  # serving: shared-prefix static-shape steps; exact: the reference's bits (slower)
    compile: bool = True  # compile the serving step in the background (eager until ready; cached on disk)
    quantization: str | None = None  # experts quantised while loading: int4-g32 | int4-g64 | fp8; None: as stored
    canvas_length: int | None = None  # tokens per denoised block; None: the checkpoint's
    max_prompt_tokens: int = 256  # prefix + suffix + other-file snippets; the embedded model trains on 256-token prompts (raise for larger checkpoints)
    max_new_tokens: int | None = None  # None: one canvas
    denoising_steps: int | None = None  # per canvas; None: the checkpoint's
    candidates: int = 1  # canvases sampled per request (one batch), ranked
    document_candidates: int = 4  # line endings copied from open documents that join the candidates (0: none)
    rerank: bool = True  # rank candidates by the model's likelihood of them between prefix and suffix
    seed: int | None = None  # None: a fresh seed per request; else mixed with each prompt (pipeline.request_seed)
    threads: int | None = None  # the model's intra-op threads; None: every usable core but one (at least one)
    enabled_languages: tuple[str, ...] = ("*",)  # LSP languageIds or language names; "*" for all
    cache_size: int = 256  # completion results remembered (LRU)
    # Stream diffgemma/canvas while denoising: opt-in, for a client that draws the canvas (VS Code's preview). Each
    # one costs both ends JSON work at every step: on 2 cores, 45 ms of a 159 ms cold request in one sitting.
    canvas_notifications: bool = False
    # A remote model (``model`` is a URL: vLLM, diffgemma-serve or another OpenAI-compatible server):
    api_key: str | None = field(default=None, repr=False)  # bearer token; None: $DIFFGEMMA_API_KEY, if set
    remote_model: str | None = None  # the served model's name; None: the only one /v1/models lists
    request_timeout: float = 10.0  # seconds a remote request may take, streaming included
    tls_verify: bool = True  # verify https certificates (CA bundle: $SSL_CERT_FILE; proxies: $HTTPS_PROXY ...)
    tokenizer: str | None = None  # the remote model's tokenizer.json (or its directory): prompts go as token ids

    def to_wire(self) -> dict[str, Any]:
        return {wire_name(f.name): _plain(getattr(self, f.name)) for f in fields(self)}

    def language_enabled(self, *names: str | None) -> bool:
        return "*" in self.enabled_languages or any(name in self.enabled_languages for name in names if name)


MODEL_HELP = (f"checkpoint directory, {EMBEDDED_MODEL!r} for the packaged model (default), or a server's base URL "
              "such as http://gpu-box:8000/v1 (vLLM or diffgemma-serve; API key from $DIFFGEMMA_API_KEY or the "
              "apiKey setting)")
DTYPE_CHOICES = ("auto", *sorted(DTYPES))
DTYPE_HELP = "weights and activations (default auto: bfloat16 on CUDA and on CPUs with bf16 instructions, else float32)"
ENGINE_MODE_HELP = ("serving (default): the prompt cache read in place and a static-shape denoising step, compiled "
                    "in the background; exact: the reference's kernels and random stream (transformers' tokens "
                    "in float32), slower")
QUANTIZATION_HELP = ("quantise the experts while loading (int4-g32: the 26B-A4B model in ~17.7 GB; fp8: ~27.7 GB); "
                     "default: as the checkpoint stores them")
NO_COMPILE_HELP = "run the serving step eagerly (no background compilation and no compile cache on disk)"

# Settings read when the model is loaded: changing one reloads it.
LOAD_FIELDS = frozenset({"model", "device", "dtype", "engine_mode", "compile", "quantization", "canvas_length", "api_key", "remote_model", "request_timeout",
                         "tls_verify", "tokenizer"})


def wire_name(field_name: str) -> str:
    head, *rest = field_name.split("_")
    return head + "".join(part.title() for part in rest)


_FIELDS_BY_WIRE_NAME = {wire_name(f.name): f.name for f in fields(Settings)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any, optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"expected a positive integer{' or null' if optional else ''}, got {value!r}")
    return value


def is_remote_model(model: str) -> bool:
    """Whether ``model`` names a server (an http or https URL) rather than a checkpoint."""
    return urlsplit(model).scheme in ("http", "https")


def _non_negative_int(value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _check_model(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a checkpoint directory, {EMBEDDED_MODEL!r} or a server URL, got {value!r}")
    if is_remote_model(value) and not urlsplit(value).hostname:
        raise ValueError(f"expected a server URL such as http://host:8000/v1, got {value!r}")
    return value


def _optional_text(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"expected a non-empty string or null, got {_redacted(value)!r}")
    return value


def _redacted(value: Any) -> Any:
    return "***" if isinstance(value, str) else value


def _check_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
        raise ValueError(f"expected seconds in (0, 3600], got {value!r}")
    return float(value)


def _check_device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def _check_dtype(value: Any) -> str:
    if value is None:  # what older clients sent for "the default"
        return "auto"
    if value != "auto" and value not in DTYPES:
        raise ValueError(f"expected one of {', '.join(sorted(DTYPES))} or auto, got {value!r}")
    return value


def _check_seed(value: Any) -> int | None:
    if value is not None and (not _is_int(value) or value < 0):
        raise ValueError(f"expected a non-negative integer or null, got {value!r}")
    return value


def _check_languages(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of language ids (\"*\" for all), got {value!r}")
    return tuple(value)


def _check_engine_mode(value: Any) -> str:
    if value not in ENGINE_MODES:
        raise ValueError(f"expected one of {', '.join(ENGINE_MODES)}, got {value!r}")
    return value


def _check_quantization(value: Any) -> str | None:
    if value is not None and value not in QUANTIZATIONS:
        raise ValueError(f"expected one of {', '.join(QUANTIZATIONS)} or null, got {value!r}")
    return value


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


_CHECKS = {
    "model": _check_model,
    "device": _check_device,
    "dtype": _check_dtype,
    "engine_mode": _check_engine_mode,
    "compile": _check_bool,
    "quantization": _check_quantization,
    "canvas_length": lambda v: _positive_int(v, optional=True),
    "max_prompt_tokens": _positive_int,
    "max_new_tokens": lambda v: _positive_int(v, optional=True),
    "denoising_steps": lambda v: _positive_int(v, optional=True),
    "candidates": _positive_int,
    "document_candidates": _non_negative_int,
    "rerank": _check_bool,
    "seed": _check_seed,
    "threads": lambda v: _positive_int(v, optional=True),
    "enabled_languages": _check_languages,
    "cache_size": _positive_int,
    "canvas_notifications": _check_bool,
    "api_key": _optional_text,
    "remote_model": _optional_text,
    "request_timeout": _check_timeout,
    "tls_verify": _check_bool,
    "tokenizer": _optional_text,
}


def apply_changes(base: Settings, raw: Any) -> tuple[Settings, list[str]]:
    """``base`` with the fields named in ``raw`` (a wire-format mapping) changed, and a message per entry left out."""
    if raw is None:
        return base, []
    if isinstance(raw, Mapping) and isinstance(raw.get(SECTION), Mapping):
        raw = raw[SECTION]
    if not isinstance(raw, Mapping):
        return base, [f"settings must be an object, got {type(raw).__name__}"]
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        name = _FIELDS_BY_WIRE_NAME.get(key)
        if name is None:
            problems.append(f"{key!r} is not a setting; the settings are {', '.join(_FIELDS_BY_WIRE_NAME)}")
            continue
        try:
            changes[name] = _CHECKS[name](value)
        except ValueError as error:
            problems.append(f"{key!r}: {error}")
    return replace(base, **changes), problems
