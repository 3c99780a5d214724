"""Serving mode against exact mode: is the server's numerics still the same model?

Exact mode is ``mode="exact"`` in float32 with the reference's random stream (``sampling="reference"``): the
engine's tokens are bit-identical to transformers'. Serving mode is what the language server runs: ``mode="serving"``
(engine.serving: the prompt cache shared in place, the static-shape step, optionally compiled) with ``dtype="auto"``
(bfloat16 on CUDA and on CPUs with bf16 instructions) and inverse-CDF sampling. Serving mode may use any numerics as
long as it is the same model, which two checks measure:

* `logit_differences`: the same inputs through both loads of a checkpoint; how far the encoder's next-token logits
  and one decoder step's logits (without and with self-conditioning) move, and how often their argmax agrees.
* `paired_quality`: held-out holes completed in both modes through `Engine.infill` (the server's path), with the
  paired difference of edit similarity and its standard error. The modes draw different random streams, so one
  hole's two middles differ even for the same model: what is compared is the quality, paired by hole.

benchmarks/serving_quality.py prints both as tables.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from tokenizers import Tokenizer

from engine.cache import KVCache, SharedPrefixKV
from engine.config import load_configs
from engine.engine import PROMPT_BUCKET, Engine, load
from engine.loader import CheckpointError
from engine.infill import prompt_format, prompt_ids
from engine.training.evaluate import PREFIX_CHARS, SUFFIX_CHARS
from engine.training.text_metrics import edit_similarity, exact_match

EXACT_DTYPE = "float32"
EXACT_SAMPLING = "reference"
SERVING_DTYPE = "auto"
SERVING_SAMPLING = "fast"
PARTS = ("encoder", "decoder", "decoder_sc")  # encoder next-token logits, decoder step 1, decoder with SC


class HoleLike(Protocol):
    """What the checks read of a hole (engine.training.fim.Hole has it)."""

    kind: str
    prefix: str
    middle: str
    suffix: str


def hole_prompts(path: str | Path, holes: Sequence[HoleLike]) -> list[list[int]]:
    """The infill prompt ids of each hole, cut to PREFIX_CHARS/SUFFIX_CHARS as evaluate.py and `paired_quality` do.

    Needs only the checkpoint's tokenizer and config (no weights are loaded).
    """
    directory = Path(path)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.encode_special_tokens = True  # as engine.infill.text_tokenizer: "<eos>" in code stays text
    model_config, _ = load_configs(directory)
    chosen = prompt_format(tokenizer)
    return [prompt_ids(tokenizer, chosen, model_config.bos_token_id, hole.prefix[-PREFIX_CHARS:],
                       hole.suffix[:SUFFIX_CHARS]) for hole in holes]


def noise_canvases(count: int, canvas_length: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """`count` canvases of uniform random tokens: what the decoder sees at a canvas's first denoising step."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (count, canvas_length), generator=generator).tolist()


class _Differences:
    """Running comparison of two [N, V] logit tensors (float32), accumulated over prompts."""

    def __init__(self) -> None:
        self.positions = 0
        self.agreements = 0
        self.max_abs_logit = 0.0
        self.sum_abs_logit = 0.0
        self.max_abs_log_prob = 0.0
        self.max_total_variation = 0.0

    def add(self, exact: torch.Tensor, serving: torch.Tensor) -> None:
        exact, serving = exact.double().reshape(-1, exact.shape[-1]), serving.double().reshape(-1, serving.shape[-1])
        delta = (serving - exact).abs()
        exact_log_probs, serving_log_probs = exact.log_softmax(-1), serving.log_softmax(-1)
        total_variation = 0.5 * (serving_log_probs.exp() - exact_log_probs.exp()).abs().sum(-1)
        self.positions += exact.shape[0]
        self.agreements += int((exact.argmax(-1) == serving.argmax(-1)).sum())
        self.max_abs_logit = max(self.max_abs_logit, float(delta.max()))
        self.sum_abs_logit += float(delta.mean(-1).sum())
        self.max_abs_log_prob = max(self.max_abs_log_prob, float((serving_log_probs - exact_log_probs).abs().max()))
        self.max_total_variation = max(self.max_total_variation, float(total_variation.max()))

    def summary(self) -> dict[str, float | int]:
        return {
            "positions": self.positions,
            "max_abs_logit": self.max_abs_logit,
            "mean_abs_logit": self.sum_abs_logit / max(self.positions, 1),
            "max_abs_log_prob": self.max_abs_log_prob,
            "max_total_variation": self.max_total_variation,  # of the softmax distributions, per position
            "argmax_agreement": self.agreements / max(self.positions, 1),
        }


def _encode(eng: Engine, ids: list[int], canvas_length: int) -> tuple[KVCache, torch.Tensor]:
    """A fresh cache holding `ids`, and the encoder's final hidden states over them [1, T, H].

    Like Engine._encode_prompt, a reduced-precision CPU engine encodes whole PROMPT_BUCKET buckets (pad after the
    prompt, which the causal encoder's real positions do not see), so serving mode runs the server's shapes.
    """
    encoded = list(ids)
    if eng._bucket_prompts:
        encoded += [eng.config.pad_token_id or 0] * (-len(ids) % PROMPT_BUCKET)
    cache = eng.model.new_cache()
    cache.reserve(max(len(encoded), len(ids) + canvas_length))
    hidden = eng.model.encode(torch.tensor([encoded], device=eng.device), 0, cache, return_hidden=True)
    cache.length = len(ids)
    return cache, hidden[:, : len(ids)]


@torch.inference_mode()
def logit_differences(
    path: str | Path,
    prompts: Sequence[Sequence[int]],
    canvases: Sequence[Sequence[int]] | None = None,
    *,
    serving_dtype: str | torch.dtype = SERVING_DTYPE,
    serving_mode: str = "serving",
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Logits of the exact (float32) and the serving (`serving_dtype`, `serving_mode`) load of `path` on the same
    inputs.

    For each prompt (token ids) and its canvas (token ids; None: `noise_canvases` drawn with `seed`, the first
    denoising step's input), three parts are compared, each over every position and the whole vocabulary:

    * ``encoder``: the causal encoder's next-token logits at every prompt position;
    * ``decoder``: one decoder forward of the canvas after the encoded prompt, without self-conditioning (step 1);
    * ``decoder_sc``: the same forward self-conditioned on the *exact* model's step-1 logits (divided by the first
      step's temperature and cast to each model's weight dtype, as generate_blocks feeds them), so that both
      models get the same signal and only their numerics differ.

    Each model decodes over its own encoder's cache. Per part: max and mean |Δ logit|, max |Δ log-softmax|, the
    largest total-variation distance between the two softmaxes, and the argmax agreement rate.
    """
    if not prompts:
        raise ValueError("logit_differences needs at least one prompt")
    exact = load(path, device=device, dtype=EXACT_DTYPE)
    serving = load(path, device=device, dtype=serving_dtype, mode=serving_mode)
    config = exact.config
    if canvases is None:
        canvases = noise_canvases(len(prompts), config.canvas_length, config.vocab_size, seed)
    if len(canvases) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(canvases)} canvases: give one canvas per prompt")
    generation = exact.generation_settings()
    temperature = generation.t_max if generation.t_min is not None and generation.t_max is not None else 1.0

    parts = {part: _Differences() for part in PARTS}
    for ids, canvas_ids in zip(prompts, canvases):
        ids = [int(t) for t in ids]
        canvas = torch.tensor([[int(t) for t in canvas_ids]], device=exact.device)
        if not ids or any(not 0 <= t < config.vocab_size for t in [*ids, *canvas.flatten().tolist()]):
            raise ValueError(f"prompts must be non-empty and every token id in [0, {config.vocab_size})")
        logits: dict[str, dict[str, torch.Tensor]] = {}
        sc_logits = None
        for name, eng in (("exact", exact), ("serving", serving)):
            cache, hidden = _encode(eng, ids, canvas.shape[1])
            decode = _decoder(eng, cache, len(ids))
            step_one = decode(canvas, None)
            if sc_logits is None:  # the exact model runs first: its step-1 logits are both models' SC input
                sc_logits = step_one / temperature
            conditioned = decode(canvas, sc_logits.to(eng.dtype))
            logits[name] = {"encoder": eng.model.logits(hidden), "decoder": step_one, "decoder_sc": conditioned}
        for part in PARTS:
            parts[part].add(logits["exact"][part], logits["serving"][part])
    return {
        "exact_dtype": str(exact.dtype).removeprefix("torch."),
        "serving_dtype": str(serving.dtype).removeprefix("torch."),
        "prompts": len(prompts),
        "prompt_tokens": sum(len(ids) for ids in prompts),
        "parts": {part: differences.summary() for part, differences in parts.items()},
    }


def _decoder(eng: Engine, cache: KVCache, start: int):
    """decode(canvas, sc_logits or None) after the `start` prompt positions of `cache`, as the engine's mode runs
    it: exact mode's decoder on the cache, serving mode's over the shared prompt cache (engine.serving)."""
    if eng.mode == "exact":
        return lambda canvas, sc_logits: eng.model.decode(canvas, start, cache, sc_logits)

    def decode(canvas: torch.Tensor, sc_logits: torch.Tensor | None) -> torch.Tensor:
        model, rows = eng.model, canvas.shape[0]
        store = SharedPrefixKV.over(cache, start, rows, canvas.shape[1])
        if sc_logits is None:  # the serving step's first step: a zero signal
            signal = torch.zeros(*canvas.shape, eng.config.hidden_size, dtype=eng.dtype, device=eng.device)
            return model.capped_logits(model.decode_shared(canvas, store, signal, torch.zeros(rows)))
        signal = model.self_conditioning_signal(sc_logits)
        return model.capped_logits(model.decode_shared(canvas, store, signal, torch.ones(rows)))

    return decode


def _paired(differences: list[float]) -> tuple[float, float]:
    """Mean of paired differences and its standard error."""
    return statistics.fmean(differences), statistics.stdev(differences) / math.sqrt(len(differences))


def paired_quality(
    path: str | Path,
    holes: Sequence[HoleLike],
    seed: int = 0,
    *,
    serving_dtype: str | torch.dtype = SERVING_DTYPE,
    device: str = "cpu",
    compile: bool = False,
    **generation_overrides: Any,
) -> dict[str, Any]:
    """Every hole completed in exact mode and in serving mode, with the same per-hole seed, through `Engine.infill`.

    Hole i gets seed `seed + i` in both modes (as engine.training.evaluate.score_checkpoint, so exact mode's figures
    are evaluate.py's on the same holes) and the prompt cut to the last PREFIX_CHARS of its prefix and the first
    SUFFIX_CHARS of its suffix. Returns each mode's mean edit similarity and exact match (and seconds), the paired
    difference serving - exact of both with its standard error, and ``within_noise``: whether the edit-similarity
    difference is at most 2 standard errors. `generation_overrides` (e.g. max_denoising_steps) apply to both modes.
    `compile` compiles serving mode's denoising step first (waited for), as a server runs once it is ready.
    """
    if len(holes) < 2:
        raise ValueError("paired_quality needs at least 2 holes (a standard error needs two differences)")
    modes = {"exact": (load(path, device=device, dtype=EXACT_DTYPE), EXACT_SAMPLING),
             "serving": (load(path, device=device, dtype=serving_dtype, mode="serving", compile=compile),
                         SERVING_SAMPLING)}
    if compile:  # serving mode as it runs once its step is compiled (compiling starts on the first hole's shape)
        modes["serving"][0].warm_up(max(len(ids) for ids in hole_prompts(path, holes)))
        modes["serving"][0].denoising_step.wait()
    per_hole, seconds = _complete_holes(modes, holes, seed, generation_overrides)
    summary: dict[str, Any] = {"holes": len(holes), "seed": seed}
    for name, (eng, sampling) in modes.items():
        summary[name] = _mode_summary(eng, sampling, per_hole, name, seconds[name])
    summary.update(_paired_summary(per_hole, "serving", "exact"), per_hole=per_hole)
    return summary


def quantization_quality(
    path: str | Path,
    holes: Sequence[HoleLike],
    seed: int = 0,
    *,
    schemes: Sequence[str] = ("int4-g32", "int4-g64", "fp8"),
    dtype: str | torch.dtype = SERVING_DTYPE,
    device: str = "cpu",
    **generation_overrides: Any,
) -> dict[str, Any]:
    """Every hole completed by serving mode with unquantised experts and with each scheme's (engine.loader's
    quantization), same seeds and same random stream, so that a hole's middles differ only where the quantised
    numbers change a choice. Per variant: edit similarity, exact match, and the paired difference to the
    unquantised load with its standard error (``within_noise``: at most 2 standard errors)."""
    if len(holes) < 2:
        raise ValueError("quantization_quality needs at least 2 holes (a standard error needs two differences)")
    modes = {"unquantised": (load(path, device=device, dtype=dtype, mode="serving"), SERVING_SAMPLING)}
    unfit = {}
    for scheme in schemes:
        try:
            modes[scheme] = (load(path, device=device, dtype=dtype, mode="serving", quantization=scheme),
                             SERVING_SAMPLING)
        except CheckpointError as error:  # e.g. a group size that does not divide this model's expert widths
            unfit[scheme] = str(error)
    per_hole, seconds = _complete_holes(modes, holes, seed, generation_overrides)
    variants: dict[str, Any] = {scheme: {"unfit": reason} for scheme, reason in unfit.items()}
    for name, (eng, sampling) in modes.items():
        variants[name] = _mode_summary(eng, sampling, per_hole, name, seconds[name])
        if name != "unquantised":
            variants[name].update(_paired_summary(per_hole, name, "unquantised"))
    return {"holes": len(holes), "seed": seed, "variants": variants}


def _complete_holes(modes: dict[str, tuple[Engine, str]], holes: Sequence[HoleLike], seed: int,
                    generation_overrides: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Each hole through every mode's `Engine.infill`, hole i with seed `seed + i` and evaluate.py's prompt cuts."""
    per_hole: list[dict[str, Any]] = []
    seconds = dict.fromkeys(modes, 0.0)
    for index, hole in enumerate(holes):
        row: dict[str, Any] = {"kind": hole.kind}
        for name, (eng, sampling) in modes.items():
            started = time.perf_counter()
            middle = eng.infill(hole.prefix[-PREFIX_CHARS:], hole.suffix[:SUFFIX_CHARS], seed=seed + index,
                                **{"sampling": sampling, **generation_overrides}).middle
            seconds[name] += time.perf_counter() - started
            row[name] = {"middle": middle, "edit_similarity": edit_similarity(middle, hole.middle),
                         "exact_match": exact_match(middle, hole.middle)}
        per_hole.append(row)
    return per_hole, seconds


def _mode_summary(eng: Engine, sampling: str, per_hole: list[dict[str, Any]], name: str,
                  seconds: float) -> dict[str, Any]:
    return {
        "dtype": str(eng.dtype).removeprefix("torch."),
        "mode": eng.mode,
        "compiled": eng.denoising_step.compile,
        "sampling": sampling,
        "edit_similarity": statistics.fmean(row[name]["edit_similarity"] for row in per_hole),
        "exact_match": statistics.fmean(float(row[name]["exact_match"]) for row in per_hole),
        "seconds": seconds,
    }


def _paired_summary(per_hole: list[dict[str, Any]], name: str, baseline: str) -> dict[str, Any]:
    """`name` - `baseline` per hole: edit similarity and exact match, their standard errors, the same-middle rate."""
    similarity, similarity_error = _paired(
        [row[name]["edit_similarity"] - row[baseline]["edit_similarity"] for row in per_hole])
    match, match_error = _paired(
        [float(row[name]["exact_match"]) - float(row[baseline]["exact_match"]) for row in per_hole])
    return {
        "edit_similarity_difference": similarity,
        "edit_similarity_standard_error": similarity_error,
        "within_noise": abs(similarity) <= 2 * similarity_error,
        "exact_match_difference": match,
        "exact_match_standard_error": match_error,
        "exact_match_within_noise": abs(match) <= 2 * match_error,
        "same_middles": sum(row[baseline]["middle"] == row[name]["middle"] for row in per_hole) / len(per_hole),
    }
