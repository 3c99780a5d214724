"""Block-diffusion generation: encode the prompt once, denoise one canvas at a time, commit its argmax, repeat.

Follows the reference `generate()` step for step, including the order in which random numbers are drawn, so a
seeded run gives the reference's tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from engine.cache import KVCache
from engine.config import GenerationConfig
from engine.model import DiffusionGemma
from engine.sampler import (
    StableAndConfident,
    entropy_bound_acceptance,
    sample_tokens,
    temperature_schedule,
    token_entropy,
)


class GenerationCancelled(Exception):
    """Raised between forwards when the caller's `cancelled()` returns True."""


@dataclass(frozen=True)
class StepEvent:
    """What a caller can observe after each denoising step (streaming the canvas as it converges)."""

    block: int
    step: int  # 1-based count of steps run on this canvas
    max_steps: int
    argmax: torch.Tensor  # [B, C] current best guess of the canvas
    accepted: torch.Tensor  # [B, C] positions whose sample was kept this step
    done: torch.Tensor  # [B] rows that stopped early on this canvas

    @property
    def accepted_fraction(self) -> float:
        return float(self.accepted[0].float().mean())


@dataclass(frozen=True)
class BatchOutput:
    tokens: torch.Tensor  # [B, blocks·C] new tokens, pads included
    tokens_per_forward: torch.Tensor  # [B] fp32
    decoder_forwards: int  # denoising steps run (for the batch)
    blocks: int
    encoder_seconds: float
    decoder_seconds: float


def generate_blocks(
    model: DiffusionGemma,
    cache: KVCache,
    uncached_ids: torch.Tensor,
    config: GenerationConfig,
    generator: torch.Generator,
    on_step: Callable[[StepEvent], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> BatchOutput:
    """Generate `ceil(max_new_tokens / C)` canvases after the prompt.

    `cache` already holds the first `cache.length` prompt positions; `uncached_ids` [B, T] are the rest (T may be 0).
    The cache is left holding the prompt and every committed canvas except the last, as in the reference.
    """
    batch = cache.batch
    device = cache.device
    vocab = model.config.vocab_size
    canvas_length = model.config.canvas_length
    blocks = math.ceil(config.max_new_tokens / canvas_length)
    schedule = config.t_min is not None and config.t_max is not None
    stopper = None
    if config.stability_threshold is not None and config.confidence_threshold is not None:
        stopper = StableAndConfident(config.stability_threshold, config.confidence_threshold)
    eos = torch.tensor(config.eos_token_id, device=device) if config.eos_token_id else None
    # Every step's temperature, computed once on the device (not a fresh host tensor per step).
    temperatures = (temperature_schedule(config.max_denoising_steps, config.t_min, config.t_max, device)
                    if schedule else None)
    embedding_dtype = model.embed_tokens.weight.dtype

    check_cancelled = cancellation_check(cancelled)
    finished, forwards_per_row, committed = row_counters(batch, device)
    to_encode = uncached_ids
    decoder_forwards = 0
    encoder_seconds = decoder_seconds = 0.0
    for block in range(blocks):
        check_cancelled()
        started = time.perf_counter()
        cache.reserve(to_encode.shape[1] + canvas_length)
        if to_encode.shape[1]:
            model.encode(to_encode, cache.length, cache)
            cache.length += to_encode.shape[1]
        encoder_seconds += time.perf_counter() - started

        started = time.perf_counter()
        start = cache.length
        tables = model.canvas_rotary(start, canvas_length, device)
        canvas = torch.randint(0, vocab, (batch, canvas_length), device=device, generator=generator)
        argmax = canvas
        sc_logits = None
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        if stopper is not None:
            stopper.reset()
        for remaining in range(config.max_denoising_steps, 0, -1):
            check_cancelled()
            forwards_per_row += ~(done | finished)
            decoder_forwards += 1
            logits = model.decode(canvas, start, cache, sc_logits, tables)
            if temperatures is not None:
                logits = logits / temperatures[config.max_denoising_steps - remaining]
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            sample = sample_tokens(probs.view(-1, vocab), generator, config.sampling).view(batch, canvas_length)
            new_argmax = logits.argmax(dim=-1)
            entropy = token_entropy(logits)
            accepted = entropy_bound_acceptance(entropy, config.entropy_bound)
            noise = torch.randint(0, vocab, (batch, canvas_length), device=device, generator=generator)
            # The previous canvas never survives: accepted positions show the sample, the rest fresh noise.
            new_canvas = torch.where(accepted, sample, noise)
            if stopper is not None:
                if batch > 1 and sc_logits is not None:  # rows that already stopped keep their state
                    # Applied whatever `done` holds: asking whether any row stopped would wait for the device.
                    new_argmax = torch.where(done[:, None], argmax, new_argmax)
                    new_canvas = torch.where(done[:, None], canvas, new_canvas)
                    logits = torch.where(done[:, None, None], sc_logits, logits)
                done |= stopper(new_argmax, entropy)
            sc_logits = logits.to(embedding_dtype)
            canvas, argmax = new_canvas, new_argmax
            if on_step is not None:
                step = config.max_denoising_steps - remaining + 1
                on_step(StepEvent(block, step, config.max_denoising_steps, argmax, accepted, done.clone()))
            if bool(done.all()):  # the step's one host-device sync: whether every row has stopped
                break
        decoder_seconds += time.perf_counter() - started

        block_tokens = argmax.clone()
        finished = finalize_canvas(block_tokens, finished, eos, config.pad_token_id)
        committed.append(block_tokens)
        if bool(finished.all()):
            break
        to_encode = block_tokens

    return batch_output(committed, forwards_per_row, config.pad_token_id, decoder_forwards, encoder_seconds,
                        decoder_seconds)


def cancellation_check(cancelled: Callable[[], bool] | None) -> Callable[[], None]:
    """A check to call before every forward: raises GenerationCancelled once `cancelled()` says so."""
    def check() -> None:
        if cancelled is not None and cancelled():
            raise GenerationCancelled()
    return check


def row_counters(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Per row: finished (an EOS was committed) and decoder forwards run; and the committed canvases so far."""
    return (torch.zeros(batch, dtype=torch.bool, device=device), torch.zeros(batch, dtype=torch.int, device=device),
            [])


def batch_output(committed: list[torch.Tensor], forwards_per_row: torch.Tensor, pad: int | None,
                 decoder_forwards: int, encoder_seconds: float, decoder_seconds: float) -> BatchOutput:
    """The committed canvases side by side, with each row's new (non-pad) tokens per decoder forward."""
    tokens = torch.cat(committed, dim=1)
    if pad is not None:
        valid = (tokens != pad).sum(dim=-1)
    else:
        valid = torch.full((tokens.shape[0],), tokens.shape[1], device=tokens.device)
    return BatchOutput(
        tokens=tokens,
        tokens_per_forward=valid / forwards_per_row,
        decoder_forwards=decoder_forwards,
        blocks=len(committed),
        encoder_seconds=encoder_seconds,
        decoder_seconds=decoder_seconds,
    )


def finalize_canvas(
    canvas: torch.Tensor, finished: torch.Tensor, eos: torch.Tensor | None, pad: int | None
) -> torch.Tensor:
    """Mark rows with an EOS in this canvas finished; with a pad id, blank finished rows and what follows the EOS."""
    finished_now = torch.isin(canvas, eos).any(dim=-1) if eos is not None else torch.zeros_like(finished)
    finished_before = finished
    finished = finished_before | finished_now
    if pad is not None and bool(finished.any()):
        canvas[finished_before] = pad
        if eos is not None and bool(finished_now.any()):
            is_eos = torch.isin(canvas, eos)
            seen = is_eos.cumsum(dim=-1)
            canvas[(seen > 0) & ~((seen == 1) & is_eos)] = pad
    return finished
