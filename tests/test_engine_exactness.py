"""The engine against the reference DiffusionGemma of transformers 5.23.0, on tiny random checkpoints.

Logits of one encoder+decoder forward must agree within 1e-4 (fp32), and seeded `generate` must give the same
tokens and tokens-per-forward, in configurations that exercise every part of the sampler.
"""

from __future__ import annotations

import pytest
import torch

import engine
from engine.sampler import StableAndConfident, entropy_bound_acceptance, token_entropy
from reference_models import build_reference, save_reference, text_config

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (  # noqa: E402
    EntropyBoundSampler,
    EntropyBoundSamplerConfig,
    StableAndConfidentStoppingCriteria,
)

PROMPT_LENGTH = 21  # longer than the sliding window (16) of text_config()


def prompt(batch: int = 2, length: int = PROMPT_LENGTH, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


def reference_and_engine(tmp_path, text=None, canvas_length=8, mutate=None, **build):
    reference = build_reference(text or text_config(), canvas_length=canvas_length, **build)
    if mutate is not None:
        with torch.no_grad():
            mutate(reference)
    save_reference(reference, tmp_path / "ckpt")
    return reference, engine.load(tmp_path / "ckpt", device="cpu")


def reference_logits(reference, ids, canvases, sc_logits=None):
    """Logits of the reference for each canvas in turn, re-encoding each block like generate() does."""
    cache = DynamicCache(config=reference.config.get_text_config(decoder=True))
    outputs, to_encode = [], ids
    for canvas in canvases:
        out = reference(input_ids=to_encode, past_key_values=cache, decoder_input_ids=canvas,
                        self_conditioning_logits=sc_logits)
        outputs.append(out.logits)
        to_encode = canvas
    return outputs


def engine_logits(eng, ids, canvases, sc_logits=None):
    model = eng.model
    cache = model.new_cache(ids.shape[0])
    outputs, to_encode = [], ids
    with torch.inference_mode():
        for canvas in canvases:
            cache.reserve(to_encode.shape[1] + canvas.shape[1])
            model.encode(to_encode, cache.length, cache)
            cache.length += to_encode.shape[1]
            outputs.append(model.decode(canvas, cache.length, cache, sc_logits))
            to_encode = canvas
    return outputs


def assert_same_generation(reference, eng, ids, seed, **kwargs):
    torch.manual_seed(seed)
    expected = reference.generate(ids, **kwargs)
    overrides = dict(kwargs)
    if "sampler_config" in overrides:
        overrides["entropy_bound"] = overrides.pop("sampler_config").entropy_bound
    ours = eng.generate(ids.tolist(), seed=seed, **overrides)
    assert ours.candidates == expected.sequences[:, ids.shape[1]:].tolist()
    assert ours.candidates_tokens_per_forward == expected.tokens_per_forward.tolist()
    return ours


@pytest.mark.parametrize("self_conditioning", [False, True])
def test_forward_logits_match(tmp_path, self_conditioning):
    reference, eng = reference_and_engine(tmp_path)
    ids = prompt()
    canvases = [torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    sc = torch.randn(2, 8, 256, generator=torch.Generator().manual_seed(9)) * 3 if self_conditioning else None
    with torch.no_grad():
        expected = reference_logits(reference, ids, canvases, sc)
    # The second and third canvases check the re-encoded blocks and the sliding cache truncated to W-1.
    for ours, theirs in zip(engine_logits(eng, ids, canvases, sc), expected):
        assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_logits_are_bitwise_equal_for_prompts_of_a_few_tokens(tmp_path, length):
    """A prompt of fewer than four tokens takes other matmul and attention code paths; the bits must still agree
    (at 64-dimensional heads, attention over 2-3 queries once differed by an ulp, enough to change tokens)."""
    wide_heads = text_config(hidden_size=128, intermediate_size=256, head_dim=64, global_head_dim=64)
    reference, eng = reference_and_engine(tmp_path, text=wide_heads)
    ids = prompt(batch=1, length=length)
    canvas = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference_logits(reference, ids, [canvas])
    assert torch.equal(engine_logits(eng, ids, [canvas])[0], expected[0])


def test_reused_prompt_prefix_matches_the_reference_continuing_that_cache(tmp_path):
    """A prompt that extends the previous one re-encodes only its new tokens: the reference's equivalent is
    `generate` on those tokens with the prefix's cache passed in (chunked encoding routes tokens to experts in other
    groups, so it is not bitwise the one-shot encode)."""
    reference, eng = reference_and_engine(tmp_path)
    prefix, tail = prompt(batch=1)[0].tolist(), [7, 8, 9]
    eng.generate(prefix, max_new_tokens=8, seed=0)
    ours = eng.generate(prefix + tail, max_new_tokens=16, seed=3)
    assert ours.encoded_prompt_tokens == len(tail)
    cache = DynamicCache(config=reference.config.get_text_config(decoder=True))
    with torch.no_grad():
        reference(input_ids=torch.tensor([prefix]), past_key_values=cache,
                  decoder_input_ids=torch.zeros(1, 8, dtype=torch.long))  # the encoder fills the cache
        torch.manual_seed(3)
        expected = reference.generate(torch.tensor([tail]), past_key_values=cache, max_new_tokens=16)
    assert ours.tokens == expected.sequences[0, len(tail):].tolist()
    assert ours.tokens_per_forward == expected.tokens_per_forward.item()


@pytest.mark.parametrize("seed", [0, 1])
def test_generate_matches_over_several_canvases(tmp_path, seed):
    """3 sliding + 1 full layers, prompt longer than the window, top-2 of 4 experts, 3 canvases, batch of 2."""
    reference, eng = reference_and_engine(tmp_path)
    ours = assert_same_generation(reference, eng, prompt(), seed, max_new_tokens=24)
    assert ours.blocks == 3 and len(ours.tokens) == 24


def test_generate_matches_without_eos_or_pad(tmp_path):
    reference, eng = reference_and_engine(tmp_path)
    assert eng.generation_config.eos_token_id is None  # save_pretrained wrote none, like the reference's default
    assert_same_generation(reference, eng, prompt(), 3, max_new_tokens=20)


def test_generate_matches_with_eos_inside_a_canvas(tmp_path):
    def boost_eos(model):
        model.model.decoder.embed_tokens.weight[1].mul_(6.0)  # <eos> (id 1) becomes a likely token

    reference, eng = reference_and_engine(tmp_path, mutate=boost_eos)
    ours = assert_same_generation(reference, eng, prompt(), 0, max_new_tokens=24, eos_token_id=[1], pad_token_id=0)
    row = ours.candidates[0]
    first_eos = row.index(1)
    assert first_eos % 8 != 7, "the EOS must sit inside a canvas so that padding follows it"
    assert all(token == 0 for token in row[first_eos + 1:])


def test_generate_matches_with_early_stopping(tmp_path):
    def sharpen(model):
        model.model.decoder.norm.weight.mul_(16.0)  # large logits: near-deterministic predictions

    reference, eng = reference_and_engine(tmp_path, mutate=sharpen)
    for seed in (0, 1):
        ours = assert_same_generation(reference, eng, prompt(), seed, max_new_tokens=24, eos_token_id=[1],
                                      pad_token_id=0, confidence_threshold=1.0, stability_threshold=0)
        assert ours.steps < 48 * ours.blocks, "early stopping must actually trigger"


def test_generate_matches_with_multi_token_acceptance(tmp_path):
    reference, eng = reference_and_engine(tmp_path, sharpen=3.0)
    ours = assert_same_generation(reference, eng, prompt(), 2, max_new_tokens=16,
                                  sampler_config=EntropyBoundSamplerConfig(entropy_bound=2.0))
    assert ours.tokens_per_forward > 0


def test_candidates_are_a_batch_of_the_same_prompt(tmp_path):
    reference, eng = reference_and_engine(tmp_path)
    single = prompt(batch=1)
    torch.manual_seed(4)
    expected = reference.generate(single.repeat(3, 1), max_new_tokens=8)
    ours = eng.generate(single[0].tolist(), seed=4, num_candidates=3, max_new_tokens=8)
    assert ours.candidates == expected.sequences[:, PROMPT_LENGTH:].tolist()
    assert len({tuple(c) for c in ours.candidates}) == 3  # independent canvases


def test_sampler_pieces_match_reference_bitwise():
    logits = torch.randn(3, 16, 50, generator=torch.Generator().manual_seed(0)) * 4
    expected_entropy = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.equal(token_entropy(logits), expected_entropy)
    sampler = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.5), 16, 50, 48)
    sampler.accept_canvas(torch.zeros(3, 16, dtype=torch.long), torch.ones(3, 16, dtype=torch.long), logits, 1)
    assert torch.equal(entropy_bound_acceptance(expected_entropy, 0.5), sampler.accepted_token_mask)

    ours, theirs = StableAndConfident(2, 0.5), StableAndConfidentStoppingCriteria(2, 0.5)
    confident = torch.full((3, 16, 50), -30.0)
    confident[..., 7] = 30.0
    argmaxes = [torch.tensor([[7] * 16, [1] * 16, [7] * 16])] * 3 + [torch.tensor([[7] * 16, [2] * 16, [7] * 16])]
    for argmax in argmaxes:
        assert torch.equal(ours(argmax, token_entropy(confident)), theirs(argmax, confident))
