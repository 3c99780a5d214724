"""Training throughput on this machine: tokens/s of the real training step for each setting that costs time.

    python benchmarks/train_throughput.py --corpus runs/corpus [--steps 6] [--only precision,threads]

Every variant changes one thing against the base (the shipped embedded model's shape and objective, fp32, one
thread): intra-op threads 1 vs 2, fp32 vs bf16 autocast, batch size, prompt length, canvas length, the
self-conditioning pass, the share of prompt positions under the next-token (AR) head, and model shapes. Each runs
its own fresh model on the same batches (drawn once per shape) and reports the median step time over --steps steps
after one warm-up step, and tokens/s = (real prompt tokens + canvas tokens) / step time, the trainer's own count.
Run it with nothing else on the machine: two threads are only faster when the second core is idle.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.model import DiffusionGemma  # noqa: E402
from engine.training.corpus import load_documents  # noqa: E402
from engine.training.fim import FimBatchStream  # noqa: E402
from engine.training.objective import TrainSettings, initialise, model_config, training_loss  # noqa: E402
from engine.training.tokenizer import load_tokenizer  # noqa: E402

EMBEDDED_TOKENIZER = Path(__file__).resolve().parents[1] / "engine" / "embedded_model" / "tokenizer.json"

# (group, label, settings overrides, threads)
BASE = TrainSettings(precision="float32")
VARIANTS = [
    ("base", "base: fp32, 1 thread, batch 16, prompt 256, canvas 32", {}, 1),
    ("threads", "2 threads", {}, 2),
    ("precision", "bf16 autocast", {"precision": "bfloat16"}, 1),
    ("precision", "bf16 autocast, 2 threads", {"precision": "bfloat16"}, 2),
    ("batch", "batch 8", {"batch_size": 8}, 1),
    ("batch", "batch 32", {"batch_size": 32}, 1),
    ("sequence", "prompt 128", {"max_prompt_tokens": 128}, 1),
    ("sequence", "prompt 512", {"max_prompt_tokens": 512}, 1),
    ("sequence", "canvas 16", {"canvas_length": 16}, 1),
    ("objective", "no self-conditioning", {"self_conditioning_rate": 0.0}, 1),
    ("objective", "self-conditioning on every example", {"self_conditioning_rate": 1.0}, 1),
    ("objective", "AR head on every prompt position", {"ar_prompt_sample": 1.0}, 1),
    ("objective", "AR head on the middle only", {"ar_prompt_sample": 0.0}, 1),
    ("shape", "6 layers", {"num_layers": 6}, 1),
    ("shape", "hidden 384, MLP 768", {"hidden_size": 384, "intermediate_size": 768,
                                      "moe_intermediate_size": 384}, 1),
    ("shape", "8 experts top-2", {"num_experts": 8}, 1),
]


def step_seconds(settings: TrainSettings, batches, steps: int, vocab: int) -> list[float]:
    model = DiffusionGemma(model_config(settings, vocab))
    initialise(model, 0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    times = []
    for index in range(steps + 1):
        batch = batches[index % len(batches)]
        started = time.perf_counter()
        loss, _, _ = training_loss(model, batch, settings, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if index:  # the first step pays for allocation and oneDNN kernel selection
            times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=EMBEDDED_TOKENIZER)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--only", help="comma-separated groups (base is always run)")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    documents = load_documents(args.corpus, "train", ["python"])[:2000]
    groups = None if not args.only else {"base", *args.only.split(",")}
    cached_batches: dict[tuple, list] = {}
    base_rate = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} default threads; median of {args.steps} steps\n")
    print("| setting | ms / step | tokens / step | tokens/s | vs base |")
    print("|---|---:|---:|---:|---:|")
    for group, label, overrides, threads in VARIANTS:
        if groups is not None and group not in groups:
            continue
        settings = replace(BASE, **overrides)
        shape = (settings.batch_size, settings.max_prompt_tokens, settings.canvas_length)
        if shape not in cached_batches:
            stream = iter(FimBatchStream(documents, tokenizer, *shape, seed=0))
            cached_batches[shape] = [next(stream) for _ in range(args.steps + 1)]
        batches = cached_batches[shape]
        torch.set_num_threads(threads)
        seconds = statistics.median(step_seconds(settings, batches, args.steps, tokenizer.get_vocab_size()))
        tokens = statistics.mean(int(b.prompt_mask.sum()) + b.canvas_ids.numel() for b in batches)
        rate = tokens / seconds
        base_rate = base_rate or rate
        print(f"| {label} | {seconds * 1000:.0f} | {tokens:.0f} | {rate:.0f} | {rate / base_rate:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
