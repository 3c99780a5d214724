"""The training objective and export: a step lowers the loss, padding is invisible, train and inference agree."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import engine
from engine.cache import KVCache
from engine.model import DiffusionGemma
from engine.training import evaluate
from engine.training.fim import FimBatchStream
from engine.training.tokenizer import train_tokenizer
from engine.training.train import (
    TrainingStore,
    TrainSettings,
    initialise,
    model_config,
    train,
    training_loss,
)

SOURCE = Path(__file__).parent / "fixtures"


class Doc:
    def __init__(self, text: str):
        self.text, self.language = text, "python"


@pytest.fixture(scope="module")
def corpus_texts():
    texts = [p.read_text() for p in sorted(SOURCE.glob("sample.*"))]
    assert texts
    return texts


@pytest.fixture(scope="module")
def tokenizer(corpus_texts):
    return train_tokenizer(corpus_texts * 3, vocab_size=400)


SMALL = dict(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2, num_kv_heads=1, head_dim=16,
             global_head_dim=32, num_global_kv_heads=1, sliding_window=24, num_experts=4, top_k_experts=2,
             moe_intermediate_size=16, canvas_length=12, max_prompt_tokens=48, batch_size=6)


def small_model(tokenizer, seed=0):
    settings = TrainSettings(**SMALL, seed=seed)
    model = DiffusionGemma(model_config(settings, tokenizer.get_vocab_size()))
    initialise(model, seed)
    return settings, model


def first_batch(tokenizer, corpus_texts, settings):
    stream = FimBatchStream([Doc(t) for t in corpus_texts], tokenizer, settings.batch_size,
                            settings.max_prompt_tokens, settings.canvas_length, seed=1)
    return next(iter(stream))


def test_training_steps_lower_the_loss(tokenizer, corpus_texts):
    settings, model = small_model(tokenizer)
    batch = first_batch(tokenizer, corpus_texts, settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        loss, diffusion, ar = training_loss(model, batch, settings, torch.Generator().manual_seed(step % 3))
        assert torch.isfinite(loss) and torch.isfinite(diffusion) and torch.isfinite(ar)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


def test_left_padding_does_not_change_real_positions(tokenizer):
    """The trainer's padded, per-position path gives the same keys as an unpadded prompt."""
    settings, model = small_model(tokenizer)
    ids = torch.randint(7, tokenizer.get_vocab_size(), (1, 20), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], dim=1)
    real = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 20, dtype=torch.bool)], dim=1)
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        plain, shifted = TrainingStore(20), TrainingStore(25)
        hidden = model.encode(ids, 0, plain, return_hidden=True)
        hidden_padded = model.encode(padded, 0, shifted, return_hidden=True, positions=positions, key_padding=real)
    assert torch.isfinite(hidden_padded).all()
    torch.testing.assert_close(hidden_padded[:, 5:], hidden, rtol=1e-4, atol=1e-4)
    for layer in plain.keys:
        torch.testing.assert_close(shifted.keys[layer][:, :, 5:], plain.keys[layer], rtol=1e-4, atol=1e-4)


def test_trained_weights_decode_the_same_in_the_engine(tokenizer, tmp_path):
    """What the trainer optimises is what the inference engine computes."""
    settings, model = small_model(tokenizer)
    prompt = torch.randint(7, tokenizer.get_vocab_size(), (1, 30), generator=torch.Generator().manual_seed(2))
    canvas = torch.randint(0, tokenizer.get_vocab_size(), (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        store = TrainingStore(30)
        model.encode(torch.cat([prompt, canvas], dim=1), 0, store)
        trained = model.decode(canvas, 30, store, None)
    engine.save_checkpoint(model, tmp_path, engine.GenerationConfig())
    loaded = engine.load(tmp_path, device="cpu")
    cache = KVCache(1, loaded.model.cache_geometries(), torch.float32, torch.device("cpu"))
    with torch.inference_mode():
        cache.reserve(42)
        loaded.model.encode(prompt, 0, cache)
        cache.length = 30
        served = loaded.model.decode(canvas, 30, cache, None)
    assert (served - trained).abs().max() < 1e-4


def test_cli_trains_resumes_and_exports_a_loadable_checkpoint(tokenizer, corpus_texts, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "heldout"):
        (corpus / f"{split}.jsonl").write_text("".join(
            json.dumps({"path": f"{split}{i}.py", "package": "fixture", "language": "python", "text": t}) + "\n"
            for i, t in enumerate(corpus_texts)))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "run"
    options = {**SMALL, "total_steps": 4, "warmup_steps": 2}
    args = dict(corpus=str(corpus), tokenizer=str(tmp_path / "tokenizer.json"), out=str(out), resume=False,
                minutes=None, log_every=1, save_every=2, export_dtype="bfloat16", **options)
    train(argparse.Namespace(**{**{k: None for k in TrainSettings.__dataclass_fields__}, **args}))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step-000002", "step-000004"]

    train(argparse.Namespace(**{**{k: None for k in TrainSettings.__dataclass_fields__},
                                **{**args, "resume": True, "total_steps": None}}))  # already complete
    assert len((out / "log.jsonl").read_text().splitlines()) == 4

    eng = engine.load(out / "checkpoint", device="cpu")
    assert eng.tokenizer is not None and eng.generation_config.eos_token_id == (1,)
    result = eng.generate([2, 3, 50, 51, 4, 5], seed=0)
    assert len(result.tokens) == 12
    assert eng.generate([2, 3, 50, 51, 4, 5], seed=0).tokens == result.tokens

    scores = tmp_path / "scores.jsonl"
    evaluate.main(["--corpus", str(corpus), "--snapshots", str(out / "snapshots"), "--holes", "3",
                   "--loss-batches", "1", "--max-prompt-tokens", "48", "--out", str(scores)])
    curve = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [c["tokens_seen"] for c in curve] == sorted(c["tokens_seen"] for c in curve) and len(curve) == 2
    for point in curve:
        assert point["holes"] == 3 and 0.0 <= point["exact_match"] <= 1.0 and 0.0 <= point["edit_similarity"] <= 1.0
        assert point["loss"]["loss"] > 0 and point["loss"]["diffusion_loss"] > 0
