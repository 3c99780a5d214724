"""The reference sampler: temperature schedule, entropy-bound acceptance, renoising and adaptive stopping."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def temperature_schedule(total: int, t_min: float, t_max: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """[total] temperatures, step by step: T(n) = t_min + (t_max - t_min)·n/N with n the steps *remaining*
    (N .. 1); fp32 arithmetic, as the reference computes each one."""
    remaining = torch.arange(total, 0, -1, dtype=torch.int32, device=device)
    return t_min + (t_max - t_min) * (remaining / total)


def sample_tokens(probs: torch.Tensor, generator: torch.Generator, sampling: str) -> torch.Tensor:
    """One token per row of `probs` [N, V].

    "reference" is `torch.multinomial` (an exponential race over the whole vocabulary: the reference's random stream);
    "fast" inverts the CDF with one uniform per row, the same distribution at a fraction of the random draws.
    """
    if sampling == "reference":
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return inverse_cdf_sample(probs, torch.rand(probs.shape[0], device=probs.device, generator=generator))


def inverse_cdf_sample(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token where each row's cumulative probability first exceeds its uniform draw: probs [..., V], uniform
    [...] in [0, 1). Scaled by the row's total, so rounding in the cumulative sum cannot run past the vocabulary."""
    cdf = probs.cumsum(dim=-1)
    draw = uniform[..., None] * cdf[..., -1:]
    return torch.searchsorted(cdf, draw, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits), computed like `torch.distributions.Categorical(...).entropy()`."""
    normalized = logits - logits.logsumexp(dim=-1, keepdim=True)
    probs = F.softmax(normalized, dim=-1)
    return -(normalized.clamp(min=torch.finfo(normalized.dtype).min) * probs).sum(-1)


def entropy_bound_acceptance(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """Accept the lowest-entropy positions while (sum of accepted entropies − the largest of them) ≤ bound."""
    sorted_entropy, order = torch.sort(entropy, dim=-1, descending=False)
    selected = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= bound
    return torch.scatter(torch.zeros_like(selected), dim=-1, index=order, src=selected)


class StableAndConfident:
    """Stop a row once its argmax canvas equals the last `stability` ones and its mean entropy < `confidence`."""

    def __init__(self, stability: int, confidence: float):
        self.stability = stability
        self.confidence = confidence
        self.history: torch.Tensor | None = None

    def reset(self) -> None:
        self.history = None

    def __call__(self, argmax: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        if self.stability == 0:
            stable = torch.ones(argmax.shape[0], dtype=torch.bool, device=argmax.device)
        else:
            if self.history is None:
                self.history = torch.full((self.stability, *argmax.shape), -1, dtype=argmax.dtype, device=argmax.device)
            stable = (self.history == argmax[None]).all(dim=-1).all(dim=0)
            self.history = torch.roll(self.history, shifts=-1, dims=0)
            self.history[-1] = argmax
        return stable & (entropy.mean(dim=-1) < self.confidence)
