"""The sampler's two random streams: the reference one equals torch.multinomial, the fast one has its distribution."""

import pytest
import torch

import engine
from engine.sampler import sample_tokens


def test_reference_sampling_is_torch_multinomial():
    probs = torch.softmax(torch.randn(64, 300, generator=torch.Generator().manual_seed(0)), dim=-1)
    ours = sample_tokens(probs, torch.Generator().manual_seed(5), "reference")
    expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5)).squeeze(-1)
    assert torch.equal(ours, expected)


def test_fast_sampling_draws_from_the_same_distribution():
    probs = torch.softmax(torch.randn(3, 7, generator=torch.Generator().manual_seed(1)) * 2, dim=-1)
    draws = 40_000
    samples = sample_tokens(probs.repeat(draws, 1), torch.Generator().manual_seed(2), "fast").view(draws, 3)
    for row in range(3):
        frequency = torch.bincount(samples[:, row], minlength=7).double() / draws
        # 5 standard errors of a binomial frequency: fails on a wrong distribution, not by chance.
        tolerance = 5 * torch.sqrt(probs[row].double() * (1 - probs[row].double()) / draws) + 1e-9
        assert ((frequency - probs[row].double()).abs() <= tolerance).all()


def test_fast_sampling_never_picks_a_zero_probability_token():
    probs = torch.zeros(1000, 5)
    probs[:, 4] = 1.0  # all mass on the last token: float rounding of the cdf must not spill past it
    assert (sample_tokens(probs, torch.Generator().manual_seed(0), "fast") == 4).all()


def test_unknown_sampling_is_rejected():
    with pytest.raises(engine.ConfigError, match="sampling must be"):
        engine.GenerationConfig().with_overrides(sampling="greedy")
