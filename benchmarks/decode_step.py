"""Where one request's time goes in the engine: the prompt encoder per token and one denoising step, split.

    OMP_NUM_THREADS=1 python benchmarks/decode_step.py [--model embedded|PATH] [--dtype auto] [--prompt 230]

A request costs encode(uncached prompt tokens) + steps x decoder step (+ context and post-processing in the server).
The decoder step is split into the vocabulary-sized products (self-conditioning's softmax(previous logits) @ E and
the logits E·h, both [canvas x vocab x hidden]), the transformer layers, and the sampler (temperature, sampling,
entropy-bound acceptance, renoising). Medians over --repeats runs on a random prompt of --prompt tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine  # noqa: E402
from engine.sampler import entropy_bound_acceptance, sample_tokens, token_entropy  # noqa: E402


def median_ms(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="auto", help="as the server's setting (auto: bf16 where the CPU has it)")
    parser.add_argument("--prompt", type=int, default=230, help="prompt tokens (the server benchmark's are ~230)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    loaded = engine.load(engine.resolve_model_path(args.model), device="cpu", dtype=args.dtype)
    model, config = loaded.model, loaded.config
    canvas_length, vocab = config.canvas_length, config.vocab_size
    generation = loaded.generation_settings()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, args.prompt), generator=generator)
    cache = model.new_cache()
    cache.reserve(args.prompt + canvas_length)

    def encode() -> None:
        cache.length = 0
        model.encode(ids, 0, cache)

    encode_ms = median_ms(encode, max(3, args.repeats // 4))
    cache.length = args.prompt
    tables = model.canvas_rotary(args.prompt, canvas_length, loaded.device)
    canvas = torch.randint(0, vocab, (1, canvas_length), generator=generator)
    previous = model.decode(canvas, args.prompt, cache, None, tables).to(model.embed_tokens.weight.dtype)
    hidden = model.self_conditioned_embedding(canvas, previous)

    def sampler() -> None:
        logits = previous.float() / generation.t_max
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        sample = sample_tokens(probs.view(-1, vocab), generator, "fast").view(1, canvas_length)
        logits.argmax(dim=-1)
        accepted = entropy_bound_acceptance(token_entropy(logits), generation.entropy_bound)
        torch.where(accepted, sample, torch.randint(0, vocab, (1, canvas_length), generator=generator))

    step_ms = median_ms(lambda: model.decode(canvas, args.prompt, cache, previous, tables), args.repeats)
    embedding_ms = median_ms(lambda: model.self_conditioned_embedding(canvas, previous), args.repeats)
    logits_ms = median_ms(lambda: model.logits(hidden), args.repeats)
    sampler_ms = median_ms(sampler, args.repeats)
    layers_ms = step_ms - embedding_ms - logits_ms
    steps = generation.max_denoising_steps
    print(f"model: {loaded.path} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{str(loaded.dtype).removeprefix('torch.')}), vocab {vocab}, hidden {config.hidden_size}, {config.num_layers} layers, "
          f"canvas {canvas_length}, {steps} steps, threads {torch.get_num_threads()}")
    print(f"encoder: {encode_ms:.1f} ms for {args.prompt} tokens ({encode_ms / args.prompt:.3f} ms per token)")
    print(f"decoder step: {step_ms:.2f} ms = self-conditioned embedding {embedding_ms:.2f} (softmax @ E) "
          f"+ layers {layers_ms:.2f} + logits {logits_ms:.2f} (E·h, soft-cap); sampler {sampler_ms:.2f} ms")
    print(f"one canvas of {steps} steps: {steps * (step_ms + sampler_ms):.1f} ms")


if __name__ == "__main__":
    main()
