"""The training objective and export: a step lowers the loss, padding is invisible, train and inference agree."""

from __future__ import annotations

import argparse
import gzip
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
from engine.training.objective import (NOISE_SCHEDULES, TrainingStore, TrainSettings, initialise, model_config,
                                       training_loss)
from engine.training.pilots import BRANCH_PILOTS
from engine.training.pilots import main as pilots_main
from engine.training.train import main as train_main
from engine.training.train import train

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


def write_corpus(tmp_path, corpus_texts) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for split in ("train", "heldout"):
        (corpus / f"{split}.jsonl").write_text("".join(
            json.dumps({"path": f"{split}{i}.py", "package": "fixture", "language": "python", "text": t}) + "\n"
            for i, t in enumerate(corpus_texts)))
    return corpus


def cli_args(corpus, tokenizer_path, out, **options) -> list[str]:
    args = ["--corpus", str(corpus), "--tokenizer", str(tokenizer_path), "--out", str(out), "--log-every", "1",
            "--eval-every", "0"]
    for name, value in {**SMALL, **options}.items():
        args += ["--" + name.replace("_", "-")] + ([] if value is True else [str(value)])
    return args


def test_cli_trains_resumes_and_exports_a_loadable_checkpoint(tokenizer, corpus_texts, tmp_path):
    corpus = write_corpus(tmp_path, corpus_texts)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "run"
    # Served with a shorter canvas than the 12 it trains on, as the embedded model is.
    train_main(cli_args(corpus, tmp_path / "tokenizer.json", out, total_steps=4, warmup_steps=2, save_every=2,
                        serve_canvas=10))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step-000002", "step-000004"]

    train_main(cli_args(corpus, tmp_path / "tokenizer.json", out, total_steps=4, warmup_steps=2, resume=True,
                        serve_canvas=10))
    assert len((out / "log.jsonl").read_text().splitlines()) == 4  # already complete: nothing more is trained

    eng = engine.load(out / "checkpoint", device="cpu")
    assert eng.tokenizer is not None and eng.generation_config.eos_token_id == (1,)
    result = eng.generate([2, 3, 50, 51, 4, 5], seed=0)
    assert eng.config.canvas_length == 10 and len(result.tokens) == 10
    assert eng.generate([2, 3, 50, 51, 4, 5], seed=0).tokens == result.tokens

    scores = tmp_path / "scores.jsonl"
    evaluate.main(["--corpus", str(corpus), "--snapshots", str(out / "snapshots"), "--holes", "3",
                   "--loss-batches", "1", "--max-prompt-tokens", "48", "--out", str(scores)])
    curve = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [c["tokens_seen"] for c in curve] == sorted(c["tokens_seen"] for c in curve) and len(curve) == 2
    for point in curve:
        assert point["holes"] == 3 and 0.0 <= point["exact_match"] <= 1.0 and 0.0 <= point["edit_similarity"] <= 1.0
        assert point["loss"]["loss"] > 0 and point["loss"]["diffusion_loss"] > 0


def test_a_run_in_two_pieces_equals_the_run_in_one_bit_for_bit(tokenizer, corpus_texts, tmp_path):
    """Weights, AdamW moments, data position, the loss's random stream and the schedule all survive a resume."""
    corpus = write_corpus(tmp_path, corpus_texts)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    options = dict(total_steps=8, warmup_steps=2)
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    train_main(cli_args(corpus, tmp_path / "tokenizer.json", straight, **options))
    train_main(cli_args(corpus, tmp_path / "tokenizer.json", pieces, steps=4, **options))
    halfway = torch.load(pieces / "training_state.pt", weights_only=False)
    assert halfway["step"] == 4
    # The second piece reads the corpus packed as a GPU machine gets it (gzip -k), on an explicit device.
    packed = tmp_path / "packed"
    packed.mkdir()
    for split in ("train", "heldout"):
        (packed / f"{split}.jsonl.gz").write_bytes(gzip.compress((corpus / f"{split}.jsonl").read_bytes()))
    train_main(cli_args(packed, tmp_path / "tokenizer.json", pieces, resume=True, device="cpu", **options))

    one, two = (torch.load(d / "training_state.pt", weights_only=False) for d in (straight, pieces))
    assert one["step"] == two["step"] == 8 and one["tokens_seen"] == two["tokens_seen"]
    assert one["model"].keys() == two["model"].keys()
    for name in one["model"]:
        assert torch.equal(one["model"][name], two["model"][name]), name
    moments = [(a, b) for a, b in zip(one["optimizer"]["state"].values(), two["optimizer"]["state"].values())]
    assert moments and all(torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) for a, b in moments)
    assert torch.equal(one["generator"], two["generator"]) and one["data_rng"] == two["data_rng"]
    losses = [[json.loads(line)["loss"] for line in (d / "log.jsonl").read_text().splitlines()]
              for d in (straight, pieces)]
    assert losses[0] == losses[1] and len(losses[0]) == 8


def test_resume_refuses_changed_settings_and_init_from_starts_from_exported_weights(tokenizer, corpus_texts, tmp_path):
    corpus = write_corpus(tmp_path, corpus_texts)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    first = tmp_path / "first"
    train_main(cli_args(corpus, tmp_path / "tokenizer.json", first, total_steps=3, warmup_steps=1))
    with pytest.raises(SystemExit, match="batch_size"):
        train_main(cli_args(corpus, tmp_path / "tokenizer.json", first, total_steps=3, resume=True, batch_size=2))
    with pytest.raises(SystemExit, match="--noise-schedule must be one of uniform, high"):
        train_main(cli_args(corpus, tmp_path / "tokenizer.json", first, total_steps=3, resume=True,
                            noise_schedule="loud"))
    # The noise schedule may change on resume, from the next step on, and the run remembers it.
    train_main(cli_args(corpus, tmp_path / "tokenizer.json", first, total_steps=4, resume=True,
                        noise_schedule="high"))
    resumed = torch.load(first / "training_state.pt", weights_only=False)
    assert resumed["step"] == 4 and resumed["settings"]["noise_schedule"] == "high"

    # A lost run directory: start a new run from the exported (bf16) weights, with a fresh optimizer at step 0.
    second = tmp_path / "second"
    train_main(cli_args(corpus, tmp_path / "tokenizer.json", second, total_steps=3, warmup_steps=1, steps=0,
                        init_from=first / "checkpoint"))
    state = torch.load(second / "training_state.pt", weights_only=False)
    exported = engine.load(first / "checkpoint", device="cpu", dtype=torch.float32).model.state_dict()
    assert state["step"] == 0 and not state["optimizer"]["state"]
    for name, weight in exported.items():
        assert torch.equal(state["model"][name], weight), name


def test_bf16_autocast_trains_fp32_master_weights(tokenizer, corpus_texts):
    settings, model = small_model(tokenizer)
    settings.precision = "bfloat16"
    batch = first_batch(tokenizer, corpus_texts, settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        loss, _, _ = training_loss(model, batch, settings, torch.Generator().manual_seed(step % 3))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < 0.75 * losses[0], losses
    with pytest.raises(ValueError, match="precision"):
        training_loss(model, batch, TrainSettings(**SMALL, precision="float16"), torch.Generator())


def test_bf16_training_pads_gemm_rows_without_changing_the_loss(tokenizer, corpus_texts, monkeypatch):
    """Under CPU autocast the AR targets and expert groups are padded to whole buckets (each new bf16 GEMM shape
    costs oneDNN a kernel that is never freed: training grew by ~1.2 GB per 50 steps); the losses stay the same."""
    import engine.kernels.moe as moe
    import engine.training.objective as objective

    settings, model = small_model(tokenizer)
    settings.precision = "bfloat16"
    batch = first_batch(tokenizer, corpus_texts, settings)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert moe.bounded_gemm_shapes(torch.zeros(2, 2))
    assert not moe.bounded_gemm_shapes(torch.zeros(2, 2))
    with torch.no_grad():
        padded = training_loss(model, batch, settings, torch.Generator().manual_seed(4))
        monkeypatch.setattr(objective, "bounded_gemm_shapes", lambda x: False)
        monkeypatch.setattr(moe, "bounded_gemm_shapes", lambda x: False)
        plain = training_loss(model, batch, settings, torch.Generator().manual_seed(4))
    for a, b in zip(padded, plain):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def test_the_high_noise_schedule_draws_more_of_the_noisy_canvases_a_generation_starts_from():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    uniform, high = (NOISE_SCHEDULES[name](u) for name in ("uniform", "high"))
    assert torch.equal(uniform, u)
    assert abs(high.mean().item() - 2 / 3) < 0.005 and 0.0 <= high.min() and high.max() <= 1.0  # density 2t
    assert abs((high > 0.9).float().mean().item() - 0.19) < 0.005  # 1 - 0.9², against 0.10 for uniform


def test_branch_pilots_continue_copies_of_a_run_and_report_paired_differences(tokenizer, corpus_texts, tmp_path,
                                                                              capsys):
    corpus = write_corpus(tmp_path, corpus_texts)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    start = tmp_path / "run"
    train_main(cli_args(corpus, tmp_path / "tokenizer.json", start, total_steps=6, warmup_steps=1, steps=2))
    out = tmp_path / "branches"
    pilots_main(["--corpus", str(corpus), "--tokenizer", str(tmp_path / "tokenizer.json"), "--out", str(out),
                 "--branch-from", str(start), "--steps", "2", "--holes", "3"])
    states = {name: torch.load(out / name / "training_state.pt", weights_only=False) for name in BRANCH_PILOTS}
    assert torch.load(start / "training_state.pt", weights_only=False)["step"] == 2  # the run itself is untouched
    assert all(state["step"] == 4 for state in states.values())
    assert states["unchanged"]["settings"]["noise_schedule"] == "uniform"
    assert states["high-noise"]["settings"]["noise_schedule"] == "high"
    weights = {name: state["model"] for name, state in states.items()}
    assert any(not torch.equal(weights["unchanged"][k], weights["high-noise"][k]) for k in weights["unchanged"])
    rows = [json.loads(line) for line in (out / "pilots.jsonl").read_text().splitlines()]
    assert [row["pilot"] for row in rows] == list(BRANCH_PILOTS) and all(row["steps"] == 2 for row in rows)
    assert rows[0]["paired_edit_similarity_difference"] == 0 and rows[0]["standard_error"] == 0
    assert "| high-noise |" in capsys.readouterr().out
