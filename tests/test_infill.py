"""Engine.infill on tiny checkpoints: prompt formats, stopping at EOS, candidates, streaming and cancellation."""

from __future__ import annotations

import shutil

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import engine
from checkpoints import cached_checkpoint, sample_sources
from engine.infill import CHAT_FORMAT, CHAT_INSTRUCTION, FIM_FORMAT, TURN_CLOSE, byte_level_alphabet, decode_text, infill_prompt
from engine.prompt import format_fim_prompt
from engine.training.tokenizer import EOS_ID

PREFIX = "def total(items):\n    result = 0\n    for item in items:\n        result += "
SUFFIX = "\n    return result\n"
CHAT_SPECIALS = ["<pad>", "<eos>", "<bos>", "<|turn>", "<turn|>", "<|channel>", "<channel|>"]


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    """Every canvas position is "x"; all 8 denoising steps run for every canvas of 16."""
    return engine.load(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant"))


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    return engine.load(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random"))


def chat_checkpoint(base, tmp_path, output_token: str | None = None):
    """A copy of a tiny checkpoint whose tokenizer has Gemma 4 chat markers instead of FIM tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(sample_sources(), trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=CHAT_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    options = {"kind": "constant"}
    if output_token is not None:
        options["output_token"] = tokenizer.token_to_id(output_token)
    directory = shutil.copytree(cached_checkpoint(base, **options), tmp_path / "chat")
    tokenizer.save(str(directory / "tokenizer.json"))
    return engine.load(directory)


def test_fim_prompt_is_the_training_layout(constant):
    prompt_format, ids = infill_prompt(constant, PREFIX, SUFFIX)
    assert prompt_format == FIM_FORMAT
    assert ids == format_fim_prompt(constant.tokenizer, PREFIX, SUFFIX)
    result = constant.infill(PREFIX, SUFFIX)
    assert result.prompt_format == FIM_FORMAT and result.generation.prompt_tokens == len(ids)


def test_special_token_text_in_source_stays_text(constant):
    _, ids = infill_prompt(constant, 'marker = "<eos><fim_middle>"\n', "")
    assert EOS_ID not in ids
    assert ids.count(constant.tokenizer.token_to_id("<fim_middle>")) == 1  # only the one the layout places


def test_middle_runs_to_max_new_tokens_without_eos(constant):
    result = constant.infill(PREFIX, SUFFIX, max_new_tokens=40)  # three canvases of 16
    assert result.generation.blocks == 3
    assert result.middle == "x" * 48
    assert result.candidates[0].finished is False


def test_tokens_cut_inside_a_character_never_decode_to_a_replacement_character(constant):
    """An accepted suggestion must not write U+FFFD (EF BF BD) into the file: bytes of an unfinished character
    are dropped, while text that really contains U+FFFD survives."""
    tokenizer = constant.tokenizer
    for text in ["emoji = '\U0001f537'", "caf\u00e9 = '\u20ac'", "kept = '\ufffd'", "plain = 1"]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert decode_text(tokenizer, ids) == text == tokenizer.decode(ids)
        for cut in range(len(ids) + 1):
            decoded = decode_text(tokenizer, ids[:cut])
            assert text.startswith(decoded) and ("\ufffd" in decoded) == ("\ufffd" in text[:len(decoded)])
    cut_ids = tokenizer.encode("x = '\U0001f537'", add_special_tokens=False).ids[:-2]
    assert "\ufffd" in tokenizer.decode(cut_ids)  # what the engine used to return


def test_a_canvas_of_stray_utf8_bytes_gives_no_replacement_characters(tmp_path_factory):
    """A model writing continuation bytes that start no character (the byte-level token for 0x80)."""
    tokenizer = engine.load(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant")).tokenizer
    stray = tokenizer.token_to_id(next(char for char, byte in byte_level_alphabet().items() if byte == 0x80))
    model = engine.load(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant", output_token=stray))
    result = model.infill(PREFIX, SUFFIX)
    assert "\ufffd" in tokenizer.decode(result.generation.tokens)  # the raw tokens are invalid UTF-8
    assert "\ufffd" not in result.middle


def test_generation_stops_at_eos(tmp_path_factory):
    eos_model = engine.load(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant", output_token=EOS_ID))
    result = eos_model.infill(PREFIX, SUFFIX, max_new_tokens=48)
    assert result.generation.blocks == 1  # not three: every row ended in the first canvas
    assert result.middle == "" and result.candidates[0].finished is True


def test_canvas_text_streams_every_step_in_order(constant):
    steps = []
    result = constant.infill(PREFIX, SUFFIX, max_new_tokens=32, on_canvas=steps.append)
    assert [(s.block, s.step) for s in steps] == [(b, s) for b in range(2) for s in range(1, 9)]
    assert all(s.max_steps == 8 and 0.0 <= s.accepted_fraction <= 1.0 for s in steps)
    assert all(s.text == "x" * 16 for s in steps[:8])
    assert all(s.text == "x" * 32 for s in steps[8:])  # the committed first canvas, then the current one
    assert steps[-1].text == result.middle


def test_candidates_are_one_batch(random_model):
    result = random_model.infill(PREFIX, SUFFIX, num_candidates=3, seed=7)
    assert len(result.candidates) == 3 == len(result.generation.candidates)
    single = random_model.infill(PREFIX, SUFFIX, num_candidates=1, seed=7)
    assert result.generation.steps == single.generation.steps == 8  # three canvases, one set of forwards
    again = random_model.infill(PREFIX, SUFFIX, num_candidates=3, seed=7)
    assert [c.text for c in again.candidates] == [c.text for c in result.candidates]


def test_cancellation_stops_within_one_step(constant):
    steps = []
    with pytest.raises(engine.GenerationCancelled):
        constant.infill(PREFIX, SUFFIX, max_new_tokens=64, on_canvas=steps.append, cancelled=lambda: len(steps) >= 3)
    assert len(steps) == 3


def test_encoder_reuses_the_shared_prompt_prefix(constant):
    constant.infill(PREFIX, SUFFIX)
    result = constant.infill(PREFIX + "item", SUFFIX)
    assert 0 < result.generation.encoded_prompt_tokens < result.generation.prompt_tokens / 2


def test_chat_format_without_fim_tokens(tmp_path_factory, tmp_path):
    chat = chat_checkpoint(tmp_path_factory.getbasetemp(), tmp_path)
    prompt_format, ids = infill_prompt(chat, PREFIX, SUFFIX)
    tokenizer = chat.tokenizer
    assert prompt_format == CHAT_FORMAT
    assert ids[:2] == [chat.config.bos_token_id, tokenizer.token_to_id("<|turn>")]
    assert ids[-1] == tokenizer.token_to_id("<channel|>")
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert CHAT_INSTRUCTION.strip() in text and PREFIX + "<FILL_HERE>" + SUFFIX in text


def test_chat_answer_ends_with_the_model_turn(tmp_path_factory, tmp_path):
    chat = chat_checkpoint(tmp_path_factory.getbasetemp(), tmp_path, output_token=TURN_CLOSE)
    result = chat.infill(PREFIX, SUFFIX, max_new_tokens=48)
    assert result.middle == "" and result.candidates[0].finished and result.generation.blocks == 1


def test_tokenizer_that_cannot_infill(tmp_path_factory, tmp_path):
    directory = shutil.copytree(cached_checkpoint(tmp_path_factory.getbasetemp(), kind="constant"), tmp_path / "c")
    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    plain.train_from_iterator(sample_sources(), trainer=trainers.BpeTrainer(vocab_size=300, show_progress=False))
    plain.save(str(directory / "tokenizer.json"))
    with pytest.raises(engine.InfillError, match="neither the FIM special tokens .* nor the Gemma 4 chat markers"):
        engine.load(directory).infill(PREFIX, SUFFIX)
    (directory / "tokenizer.json").unlink()
    with pytest.raises(engine.InfillError, match="no tokenizer.json"):
        engine.load(directory).infill(PREFIX, SUFFIX)


def test_resolve_model_path(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.engine, "EMBEDDED_MODEL_DIR", tmp_path / "embedded_model")
    with pytest.raises(engine.CheckpointError, match="embedded model is not installed.*--model PATH"):
        engine.resolve_model_path("embedded")
    (tmp_path / "embedded_model").mkdir()
    (tmp_path / "embedded_model" / "config.json").write_text("{}")
    assert engine.resolve_model_path("embedded") == tmp_path / "embedded_model"
    assert engine.resolve_model_path("~/ckpt") == engine.engine.Path("~/ckpt").expanduser()


def _log_likelihood_from_scratch(eng, prompt: list[int], continuation: list[int]) -> float:
    """The same quantity as continuation_log_likelihoods, from one causal pass over prompt + continuation."""
    from engine.cache import KVCache

    sequence = torch.tensor([prompt + continuation])
    cache = KVCache(1, eng.model.cache_geometries(), eng.dtype, eng.device)
    cache.reserve(sequence.shape[1])
    with torch.inference_mode():
        hidden = eng.model.encode(sequence, 0, cache, return_hidden=True)
        log_probs = torch.log_softmax(eng.model.logits(hidden).float(), dim=-1)[0]
    return sum(float(log_probs[len(prompt) - 1 + i, token]) for i, token in enumerate(continuation))


def test_candidate_middles_are_scored_by_the_causal_encoder(random_model):
    middles = ["item", "item * 2", "x"]
    scores = random_model.score_middles(PREFIX, SUFFIX, middles)
    _, prompt = infill_prompt(random_model, PREFIX, SUFFIX)
    tokenizer = random_model.tokenizer
    for middle, score in zip(middles, scores):
        continuation = tokenizer.encode(middle, add_special_tokens=False).ids + [EOS_ID]
        assert score == pytest.approx(_log_likelihood_from_scratch(random_model, prompt, continuation), abs=1e-3)
    # A batch of one scores the same as inside a padded batch, and the prompt stays cached for the next request.
    assert random_model.score_middles(PREFIX, SUFFIX, middles[1:2])[0] == pytest.approx(scores[1], abs=1e-4)
    assert random_model.infill(PREFIX, SUFFIX, seed=0).generation.encoded_prompt_tokens == 0
    with pytest.raises(ValueError, match="non-empty"):
        random_model.continuation_log_likelihoods(prompt, [[]])
