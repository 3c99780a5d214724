"""`Engine`: a loaded checkpoint plus its tokenizer and sampler defaults, with a prompt-prefix KV cache."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tokenizers import Tokenizer

from engine.cache import KVCache, SharedPrefixKV
from engine.config import ConfigError, GenerationConfig, ModelConfig, load_configs
from engine.generate import GenerationCancelled, StepEvent, generate_blocks
from engine.infill import CanvasText, InfillResult, infill, prompt_format, score_middles, text_tokenizer
from engine.kernels.moe import bounded_gemm_shapes
from engine.kernels.quantize import SCHEMES
from engine.loader import CheckpointError, build_model, stored_quantization
from engine.model import DiffusionGemma
from engine.quantized import weight_bytes
from engine.serving import DenoisingStep, generate_shared, use_compile_cache_dir

# Serving on the CPU in bf16/fp16, a prompt is encoded in whole buckets of this many tokens (see _encode_prompt).
PROMPT_BUCKET = 32
# Serving mode encodes prompts in chunks of at most this many tokens (a multiple of PROMPT_BUCKET).
PROMPT_CHUNK = 512
MODES = ("exact", "serving")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class GenerationResult:
    tokens: list[int]  # first row's new tokens (the reference's sequences[0, len(prompt):], pads included)
    tokens_per_forward: float
    candidates: list[list[int]]  # every row's new tokens
    candidates_tokens_per_forward: list[float]
    steps: int  # denoising steps run (decoder forwards of the batch)
    blocks: int
    prompt_tokens: int
    encoded_prompt_tokens: int  # prompt tokens the encoder ran on (fewer when a cached prefix was reused)
    wall_time_s: float
    encoder_time_s: float
    decoder_time_s: float


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bf16 in hardware; elsewhere oneDNN emulates it, slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None: float32 on the CPU (the reference's exact numbers), bfloat16 on CUDA. "auto": the fastest dtype the
    device multiplies natively, bfloat16 on CUDA and on CPUs with bf16 instructions (AVX512-BF16, AMX), else float32.
    """
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_has_native_bfloat16() else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)} or auto") from None


class Engine:
    def __init__(
        self,
        model: DiffusionGemma,
        generation_config: GenerationConfig,
        tokenizer: Tokenizer | None = None,
        path: Path | None = None,
        mode: str = "exact",
        compile: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.model = model
        self.generation_config = generation_config
        self.tokenizer = tokenizer
        self.path = path
        self.device = model.embed_tokens.weight.device
        self.dtype = model.embed_tokens.weight.dtype
        # Serving mode needs a causal encoder: its rows read the prompt cache in place (see engine.serving).
        self.mode = mode if model.config.encoder_is_causal else "exact"
        self.denoising_step = DenoisingStep(model, compile=compile and self.mode == "serving")
        # One cached prompt (batch 1): a request sharing a token prefix with it re-encodes only the rest.
        self._prefix_ids: list[int] = []
        self._prefix_cache: KVCache | None = None
        self._bucket_prompts = bounded_gemm_shapes(model.embed_tokens.weight)
        self._lock = threading.Lock()

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def prompt_format(self) -> str:
        """The infill prompt layout this checkpoint's tokenizer supports (raises InfillError when none)."""
        return prompt_format(text_tokenizer(self))

    def count_tokens(self, text: str) -> int:
        return len(text_tokenizer(self).encode(text, add_special_tokens=False).ids)

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        mode = self.mode + (", compiled" if self.denoising_step.compile else "")
        return (f"{self.path} on {self.device} ({dtype}, {mode} mode), {self.prompt_format} prompts, "
                f"canvas {self.config.canvas_length}")

    def compile_status(self) -> dict[str, Any]:
        """Serving mode's step compilation: whether it is on, running, how many shapes are ready and their seconds."""
        step = self.denoising_step
        return {"enabled": step.compile, "compiling": step.compiling, "compiledShapes": len(step.compile_seconds),
                "compileSeconds": [round(seconds, 1) for seconds in step.compile_seconds.values()]}

    def generation_settings(self, max_new_tokens: int | None = None, **overrides: Any) -> GenerationConfig:
        if max_new_tokens is not None:
            overrides["max_new_tokens"] = max_new_tokens
        return self.generation_config.with_overrides(**overrides)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: Sequence[int] | Sequence[Sequence[int]],
        max_new_tokens: int | None = None,
        seed: int | None = None,
        num_candidates: int = 1,
        on_step: Callable[[StepEvent], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        **generation_overrides: Any,
    ) -> GenerationResult:
        """Generate after `prompt_ids` (one prompt, or a batch of equal-length prompts).

        `num_candidates` runs that many canvases for one prompt as a batch. `seed` makes the run reproducible
        (in exact mode, the same tokens as the reference `generate()` after `torch.manual_seed(seed)` on the CPU;
        serving mode draws its own stream and ignores `sampling`: see engine.serving).
        `on_step` observes every denoising step; `cancelled` is polled before every forward and stops the run
        with `GenerationCancelled`. Remaining keyword arguments override the checkpoint's generation config.
        """
        config = self.generation_settings(max_new_tokens, **generation_overrides)
        rows = _as_rows(prompt_ids)
        if len(rows) > 1 and num_candidates != 1:
            raise ValueError("num_candidates applies to a single prompt; pass one prompt or num_candidates=1")
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        vocab = self.config.vocab_size
        if any(not 0 <= t < vocab for row in rows for t in row):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        generator = torch.Generator(self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())

        started = time.perf_counter()
        with self._lock:
            if cancelled is not None and cancelled():
                raise GenerationCancelled()
            if len(rows) == 1 and self.mode == "serving":
                encoded = self._encode_prompt(rows[0])
                prompt_seconds = time.perf_counter() - started
                output = generate_shared(self.model, self._prefix_cache, len(rows[0]), num_candidates, config,
                                         generator, self.denoising_step, on_step, cancelled)
            else:
                if len(rows) == 1:
                    encoded = self._encode_prompt(rows[0])
                    cache = self._prefix_cache.expanded(num_candidates, self.config.canvas_length)
                    uncached = torch.empty(num_candidates, 0, dtype=torch.long, device=self.device)
                else:
                    cache = self.model.new_cache(len(rows))
                    uncached = torch.tensor(rows, dtype=torch.long, device=self.device)
                    encoded = uncached.shape[1]
                prompt_seconds = time.perf_counter() - started
                output = generate_blocks(self.model, cache, uncached, config, generator, on_step, cancelled)
        wall = time.perf_counter() - started
        tokens = output.tokens.tolist()
        per_row = [float(x) for x in output.tokens_per_forward.tolist()]
        return GenerationResult(
            tokens=tokens[0],
            tokens_per_forward=per_row[0],
            candidates=tokens,
            candidates_tokens_per_forward=per_row,
            steps=output.decoder_forwards,
            blocks=output.blocks,
            prompt_tokens=len(rows[0]),
            encoded_prompt_tokens=encoded,
            wall_time_s=wall,
            encoder_time_s=prompt_seconds + output.encoder_seconds,
            decoder_time_s=output.decoder_seconds,
        )

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
        **generation_overrides: Any,
    ) -> InfillResult:
        """The code between `prefix` and `suffix`: `num_candidates` middles sampled as one batch.

        The prompt is the checkpoint's fill-in-the-middle layout when its tokenizer has the FIM tokens, otherwise
        the Gemma 4 instruct chat format asking for only the missing code (see engine.infill). Each candidate is
        decoded up to its first EOS; `on_canvas` receives the first candidate's canvas as text after every
        denoising step; `cancelled` and the other arguments behave as in `generate`.
        """
        return infill(
            self, prefix, suffix, max_new_tokens=max_new_tokens, num_candidates=num_candidates, seed=seed,
            on_canvas=on_canvas, cancelled=cancelled, **generation_overrides,
        )

    def score_middles(self, prefix: str, suffix: str, middles: list[str]) -> list[float]:
        """log P(middle and its stop token | the infill prompt) per candidate middle (see engine.infill)."""
        return score_middles(self, prefix, suffix, middles)

    def warm_up(self, prompt_tokens: int, num_candidates: int = 1, max_new_tokens: int | None = None) -> None:
        """One throwaway generation on a `prompt_tokens`-token prompt: it pays the kernels' lazy initialisation,
        sizes the prompt cache's buffers for prompts up to that length, and (compiling) starts compiling the
        denoising step for the shape those requests will have, in the background."""
        filler = self.config.bos_token_id if self.config.bos_token_id is not None else 0
        self.generate([filler] * prompt_tokens, max_new_tokens=max_new_tokens, seed=0, num_candidates=num_candidates)

    @torch.inference_mode()
    def prefill(self, prompt_ids: Sequence[int]) -> int:
        """Encode a prompt into the prefix cache without generating (a client's warm-up); returns the tokens encoded.

        The next request that shares a token prefix with it re-encodes only the rest.
        """
        ids = _as_rows(prompt_ids)[0]
        if any(not 0 <= t < self.config.vocab_size for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {self.config.vocab_size})")
        with self._lock:
            return self._encode_prompt(ids)

    @torch.inference_mode()
    def continuation_log_likelihoods(self, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]]
                                     ) -> list[float]:
        """log P(continuation | prompt) under the causal encoder's next-token head, summed, per continuation.

        The encoder is a causal language model sharing every weight with the denoiser and trained with a next-token
        loss on the middle after the FIM prompt, so this scores a candidate middle (ending in its stop token) as
        the model would have continued the prompt. The prompt comes from the prefix cache (right after a
        generation for it nothing is re-encoded); the continuations run as one batch.
        """
        ids = _as_rows(prompt_ids)[0]
        rows = [[int(t) for t in row] for row in continuations]
        if not rows:
            return []
        if not all(rows) or any(not 0 <= t < self.config.vocab_size for row in [ids, *rows] for t in row):
            raise ValueError(f"continuations must be non-empty and every id in [0, {self.config.vocab_size})")
        # Position len(ids)-1 is encoded again to get the hidden state that predicts each continuation's first token.
        width = max(map(len, rows))
        if self._bucket_prompts:
            width += -width % PROMPT_BUCKET
        pad = self.config.pad_token_id or 0
        inputs = torch.tensor([[ids[-1], *row[:-1]] + [pad] * (width - len(row)) for row in rows], device=self.device)
        targets = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=self.device)
        real = torch.tensor([[True] * len(row) + [False] * (width - len(row)) for row in rows], device=self.device)
        with self._lock:
            self._encode_prompt(ids)
            if self.mode == "serving":  # the rows read the prompt cache in place
                store = SharedPrefixKV.over(self._prefix_cache, len(ids) - 1, len(rows), width)
                hidden = self.model.encode_shared(inputs, store)
            else:
                cache = self._prefix_cache.expanded(len(rows), width)
        if self.mode != "serving":
            cache.crop(len(ids) - 1)
            hidden = self.model.encode(inputs, len(ids) - 1, cache, return_hidden=True)
        log_probs = torch.log_softmax(self.model.logits(hidden).float(), dim=-1)
        picked = log_probs.gather(-1, targets[..., None]).squeeze(-1)
        return [float(x) for x in picked.masked_fill(~real, 0.0).sum(dim=-1)]

    def _encode_prompt(self, ids: list[int]) -> int:
        """Bring the prefix cache to exactly `ids`: keep the shared token prefix, encode the rest. Returns its size."""
        if self._prefix_cache is None or not self.config.encoder_is_causal:
            # A bidirectional encoder's keys depend on later tokens, so only a causal prefix can be reused.
            self._prefix_cache = self.model.new_cache()
            self._prefix_ids = []
        shared = 0
        for cached, new in zip(self._prefix_ids, ids):
            if cached != new:
                break
            shared += 1
        cache = self._prefix_cache
        if self._bucket_prompts:
            # Bounded shapes (see engine.kernels.moe.GROUP_ROWS): re-encode from a bucket boundary and pad the
            # encoded tokens to a whole bucket; the causal encoder's real positions do not see the padding after
            # them, and the cache keeps only the real length.
            shared -= shared % PROMPT_BUCKET
        if not cache.can_crop(shared):  # the prompts diverge before what the sliding layers still hold
            shared = 0
            cache.clear()
        cache.crop(shared)
        self._prefix_ids = self._prefix_ids[:shared]
        rest = ids[shared:]
        if rest:
            encoded = rest
            if self._bucket_prompts:
                encoded = rest + [self.config.pad_token_id or 0] * (-len(rest) % PROMPT_BUCKET)
            # Serving mode encodes long prompts in chunks: no chunk builds a score matrix over the whole prompt, and
            # the sliding layers' buffers stay at their window (exact mode encodes in one pass, as the reference).
            chunk = len(encoded) if self.mode == "exact" else PROMPT_CHUNK
            for begin in range(0, len(encoded), chunk):
                piece = encoded[begin : begin + chunk]
                cache.reserve(len(piece))
                self.model.encode(torch.tensor([piece], dtype=torch.long, device=self.device), cache.length, cache)
                cache.length += len(piece)
            cache.length = shared + len(rest)  # the bucket's padding is no part of the prompt
            self._prefix_ids = list(ids)
        return len(rest)


def _as_rows(prompt_ids: Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]]:
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: at least one token (e.g. <bos>) is required")
    if isinstance(prompt_ids[0], (int,)) or (isinstance(prompt_ids[0], torch.Tensor) and prompt_ids[0].dim() == 0):
        return [[int(t) for t in prompt_ids]]
    rows = [[int(t) for t in row] for row in prompt_ids]
    if len({len(row) for row in rows}) != 1 or not rows[0]:
        raise ValueError("a batch of prompts must be non-empty and of equal length")
    return rows


EMBEDDED_MODEL = "embedded"
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "embedded_model"


def resolve_model_path(model: str | Path) -> Path:
    """The checkpoint directory for `model`: "embedded" names the model packaged in engine/embedded_model/."""
    if str(model) != EMBEDDED_MODEL:
        return Path(model).expanduser()
    if not (EMBEDDED_MODEL_DIR / "config.json").is_file():
        raise CheckpointError(
            f"the embedded model is not installed ({EMBEDDED_MODEL_DIR} has no config.json); "
            "pass a checkpoint directory instead (--model PATH)"
        )
    return EMBEDDED_MODEL_DIR


def free_memory(device: torch.device) -> int | None:
    """Bytes the device can still allocate (the host's MemAvailable for the CPU); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if device.type == "cpu" and meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_fits(config: ModelConfig, quantization: str | None, dtype: torch.dtype, device: torch.device,
               available: int | None = None) -> None:
    """Raise CheckpointError when the weights alone need more than the device has free (`available` bytes; by
    default what `free_memory` reports), naming the quantizations that would fit."""
    available = free_memory(device) if available is None else available
    try:
        needed = weight_bytes(config, quantization, dtype)
    except ValueError as error:  # a group size that does not divide the experts' widths
        raise CheckpointError(str(error)) from None
    if available is None or needed <= available:
        return
    sizes = {}
    for scheme in SCHEMES:
        with contextlib.suppress(ValueError):  # schemes this model's shapes cannot take are no option
            sizes[scheme] = weight_bytes(config, scheme, dtype)
    sizes.pop(quantization, None)
    options = [f"{scheme} ({size / 1e9:.1f} GB)" for scheme, size in sizes.items() if size <= available]
    precision = str(dtype).removeprefix("torch.") + (f" with {quantization} experts" if quantization else "")
    advice = f"; quantization {' or '.join(options)} would fit" if options else "; no quantization fits either"
    raise CheckpointError(f"the model's weights need {needed / 1e9:.1f} GB in {precision}, but {device} has "
                          f"{available / 1e9:.1f} GB free{advice}")


def load(path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype | None = None,
         mode: str = "exact", compile: bool = False, quantization: str | None = None) -> Engine:
    """Load a DiffusionGemma checkpoint directory (config.json, generation_config.json, safetensors, tokenizer.json).

    `mode` "exact" reproduces the reference bit for bit (in float32 on the CPU); "serving" is what the server runs
    (see engine.serving), with `compile` compiling its denoising step in the background. `quantization`
    ("int4-g32", "int4-g64", "fp8") quantises the experts while they are read (a pre-quantised checkpoint is
    loaded as stored). A model whose weights cannot fit the device's free memory fails before anything is read.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    if compile and mode == "serving":
        use_compile_cache_dir()
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    try:
        model_config, generation_config = load_configs(directory)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    check_fits(model_config, quantization or stored_quantization(directory), resolved_dtype, resolved_device)
    model = build_model(model_config, directory, resolved_dtype, resolved_device, quantization)
    tokenizer = None
    tokenizer_path = directory / "tokenizer.json"
    if tokenizer_path.exists():
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # the tokenizers library raises a bare Exception on malformed files
            raise CheckpointError(f"{tokenizer_path}: unreadable tokenizer ({exc})") from None
    return Engine(model, generation_config, tokenizer, directory, mode=mode, compile=compile)
