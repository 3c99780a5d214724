"""Train a DiffusionGemma-architecture model for fill-in-the-middle, the way the model's fine-tuning recipe does it.

Objective per batch (prompt = `<bos><fim_prefix>…<fim_suffix>…<fim_middle>`, canvas = middle `<eos>` `<pad>`…):
- the encoder runs causally over [prompt ; clean canvas] and is trained with the next-token loss on real tokens up
  to the `<eos>` (its prompt keys/values are what the decoder reads, exactly as at inference);
- each example draws a noise level t ~ U(0, 1) and every canvas position is independently replaced by a uniform
  random vocabulary token with probability t (no mask token);
- the decoder denoises that canvas with cross-entropy on every canvas position; half the examples are
  self-conditioned: a first, gradient-free decoder pass supplies the logits that the second pass conditions on.

    python -m engine.training.train --corpus runs/corpus --tokenizer runs/tokenizer/tokenizer.json --out runs/train
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.config import FULL, SLIDING, GenerationConfig, ModelConfig
from engine.loader import save_checkpoint
from engine.model import DiffusionGemma
from engine.training.corpus import load_documents
from engine.training.fim import FimBatch, FimBatchStream
from engine.training.tokenizer import EOS_ID, PAD_ID, load_tokenizer

STATE_FILE = "training_state.pt"
LOG_FILE = "log.jsonl"


@dataclass
class TrainSettings:
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    global_head_dim: int = 128
    num_global_kv_heads: int = 1
    sliding_window: int = 512
    num_experts: int = 4
    top_k_experts: int = 2
    moe_intermediate_size: int = 256
    canvas_length: int = 32
    max_prompt_tokens: int = 256
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    total_steps: int = 20_000
    weight_decay: float = 0.01
    ar_loss_weight: float = 1.0
    ar_prompt_sample: float = 0.25
    self_conditioning_rate: float = 0.5
    seed: int = 0


def model_config(settings: TrainSettings, vocab_size: int) -> ModelConfig:
    # Every third layer (and the last) is full attention, as in the released model's 5:1 pattern scaled down.
    layer_types = tuple(FULL if (i + 1) % 3 == 0 or i == settings.num_layers - 1 else SLIDING
                        for i in range(settings.num_layers))
    per_layer = {i: {"head_dim": settings.global_head_dim, "num_key_value_heads": settings.num_global_kv_heads}
                 for i, t in enumerate(layer_types) if t == FULL}
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=settings.hidden_size, intermediate_size=settings.intermediate_size,
        num_layers=settings.num_layers, num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads,
        head_dim=settings.head_dim, layer_types=layer_types, per_layer=per_layer,
        sliding_window=settings.sliding_window, num_experts=settings.num_experts,
        top_k_experts=settings.top_k_experts, moe_intermediate_size=settings.moe_intermediate_size,
        use_bidirectional_attention="vision", canvas_length=settings.canvas_length,
        pad_token_id=PAD_ID, eos_token_id=(EOS_ID,), bos_token_id=2,
    )


def initialise(model: DiffusionGemma, seed: int, std: float = 0.02) -> None:
    """Normal(0, std) projections and embeddings; norms, router scales and layer scalars at 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            else:
                parameter.fill_(1.0)
        for name, buffer in model.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.fill_(1.0)


class TrainingStore:
    """Functional (autograd-friendly) key/value store: the encoder's keys for [prompt ; canvas], and the decoder
    reading only the prompt part, as the inference cache holds only what precedes the canvas."""

    def __init__(self, prompt_length: int):
        self.prompt_length = prompt_length
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def encoder_keys_values(self, layer, start, keys, values, first_key):
        self.keys[layer], self.values[layer] = keys, values
        return keys[:, :, first_key:], values[:, :, first_key:]

    def decoder_keys_values(self, layer, keys, values, first_key):
        prompt = slice(first_key, self.prompt_length)
        return (torch.cat([self.keys[layer][:, :, prompt], keys], dim=2),
                torch.cat([self.values[layer][:, :, prompt], values], dim=2))


def training_loss(model: DiffusionGemma, batch: FimBatch, settings: TrainSettings, generator: torch.Generator):
    """Returns (total, diffusion, autoregressive) losses for one batch."""
    prompt_length = batch.prompt_ids.shape[1]
    batch_size, canvas_length = batch.canvas_ids.shape
    vocab = model.config.vocab_size
    sequence = torch.cat([batch.prompt_ids, batch.canvas_ids], dim=1)
    real = torch.cat([batch.prompt_mask, torch.ones_like(batch.canvas_ids, dtype=torch.bool)], dim=1)
    store = TrainingStore(prompt_length)
    hidden = model.encode(sequence, 0, store, return_hidden=True, positions=batch.position_ids, key_padding=real)

    # Next-token targets: the middle up to and including <eos>, and a sample of the prompt (the vocabulary head over
    # every prompt position would cost more than the rest of the step).
    index = torch.arange(sequence.shape[1])
    within_middle = index[None, :] <= prompt_length + batch.middle_lengths[:, None]
    sampled = (index[None, :] >= prompt_length) | (torch.rand(sequence.shape, generator=generator) < settings.ar_prompt_sample)
    target_mask = (real & within_middle & sampled)[:, 1:] & real[:, :-1]
    ar_logits = model.logits(hidden[:, :-1][target_mask])
    ar_loss = F.cross_entropy(ar_logits, sequence[:, 1:][target_mask])

    noise_level = torch.rand(batch_size, 1, generator=generator)
    noised = torch.rand(batch_size, canvas_length, generator=generator) < noise_level
    random_tokens = torch.randint(0, vocab, (batch_size, canvas_length), generator=generator)
    canvas = torch.where(noised, random_tokens, batch.canvas_ids)
    tables = model.rotary(batch.position_ids[:, prompt_length:], model.embed_tokens.weight.dtype)
    sc_mask = torch.rand(batch_size, generator=generator) < settings.self_conditioning_rate
    sc_logits = None
    if bool(sc_mask.any()):
        with torch.no_grad():
            sc_logits = model.decode(canvas, prompt_length, store, None, tables, key_padding=real).detach()
    logits = model.decode(canvas, prompt_length, store, sc_logits, tables, key_padding=real,
                          sc_mask=sc_mask if sc_logits is not None else None)
    diffusion_loss = F.cross_entropy(logits.reshape(-1, vocab), batch.canvas_ids.reshape(-1))
    return diffusion_loss + settings.ar_loss_weight * ar_loss, diffusion_loss, ar_loss


def learning_rate(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = min(1.0, (step - settings.warmup_steps) / max(1, settings.total_steps - settings.warmup_steps))
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def export(model: DiffusionGemma, directory: Path, tokenizer_path: Path, generation: GenerationConfig,
           dtype: torch.dtype) -> None:
    """A checkpoint the engine loads unchanged: config, generation config, safetensors weights, tokenizer."""
    exported = DiffusionGemma(model.config)
    exported.load_state_dict(model.state_dict())
    save_checkpoint(exported.to(dtype), directory, generation)
    shutil.copyfile(tokenizer_path, directory / "tokenizer.json")


def default_generation_config(canvas_length: int) -> GenerationConfig:
    """Sampler settings for short in-line holes: fewer steps than the released 48 since the canvas is short."""
    return GenerationConfig(max_new_tokens=canvas_length, max_denoising_steps=16, entropy_bound=0.1, t_min=0.4,
                            t_max=0.8, eos_token_id=(EOS_ID,), pad_token_id=PAD_ID)


def train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    tokenizer = load_tokenizer(args.tokenizer)
    resumed = torch.load(state_path, weights_only=False) if args.resume and state_path.exists() else None
    settings = TrainSettings(**resumed["settings"]) if resumed else TrainSettings(
        **{k: v for k, v in vars(args).items() if k in TrainSettings.__dataclass_fields__ and v is not None})
    torch.manual_seed(settings.seed)
    model = DiffusionGemma(model_config(settings, tokenizer.get_vocab_size()))
    initialise(model, settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=settings.weight_decay)
    step, tokens_seen = 0, 0
    generator = torch.Generator().manual_seed(settings.seed)
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        generator.set_state(resumed["generator"])
        step, tokens_seen = resumed["step"], resumed["tokens_seen"]
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters / 1e6:.2f}M parameters; starting at step {step}", flush=True)

    documents = load_documents(Path(args.corpus), "train")
    stream = FimBatchStream(documents, tokenizer, settings.batch_size, settings.max_prompt_tokens,
                            settings.canvas_length, seed=settings.seed + step)
    batches = iter(stream)
    model.train()
    log = (out / LOG_FILE).open("a")
    started, window_tokens = time.perf_counter(), 0
    deadline = started + args.minutes * 60 if args.minutes else math.inf
    while step < settings.total_steps and time.perf_counter() < deadline:
        batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        loss, diffusion_loss, ar_loss = training_loss(model, batch, settings, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        batch_tokens = int(batch.prompt_mask.sum()) + batch.canvas_ids.numel()
        tokens_seen += batch_tokens
        window_tokens += batch_tokens
        if step % args.log_every == 0:
            elapsed = time.perf_counter() - started
            record = {"step": step, "tokens": tokens_seen, "loss": round(loss.item(), 4),
                      "diffusion_loss": round(diffusion_loss.item(), 4), "ar_loss": round(ar_loss.item(), 4),
                      "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": round(window_tokens / elapsed, 1)}
            print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            started, window_tokens = time.perf_counter(), 0
        if step % args.save_every == 0:
            checkpoint(model, optimizer, generator, settings, step, tokens_seen, out, args)
    checkpoint(model, optimizer, generator, settings, step, tokens_seen, out, args)
    print(f"stopped at step {step}, {tokens_seen} tokens; checkpoint in {out / 'checkpoint'}", flush=True)


def checkpoint(model, optimizer, generator, settings, step, tokens_seen, out: Path, args) -> None:
    """Resumable state, the latest exported checkpoint, and a snapshot of it for the learning curve."""
    save_state(out / STATE_FILE, model, optimizer, generator, settings, step, tokens_seen)
    dtype = torch.bfloat16 if args.export_dtype == "bfloat16" else torch.float32
    export(model, out / "checkpoint", Path(args.tokenizer), default_generation_config(settings.canvas_length), dtype)
    snapshot = out / "snapshots" / f"step-{step:06d}"
    shutil.rmtree(snapshot, ignore_errors=True)
    shutil.copytree(out / "checkpoint", snapshot)
    (snapshot / "tokens_seen").write_text(f"{tokens_seen}\n")


def save_state(path: Path, model, optimizer, generator, settings, step, tokens_seen) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "settings": asdict(settings), "step": step, "tokens_seen": tokens_seen}, temporary)
    temporary.replace(path)  # atomic: an interrupted save never corrupts the resumable state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/training_state.pt")
    parser.add_argument("--minutes", type=float, default=None, help="stop (and save) after this wall time")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--export-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    for name, field in TrainSettings.__dataclass_fields__.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(field.default), default=None)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
