"""Benchmark: one serving-mode denoising step on the CPU, eager and compiled, and where its time goes.

    OMP_NUM_THREADS=1 python benchmarks/serving_step.py [--model embedded|PATH] [--prompt-tokens 230] [--steps 40]

Loads the checkpoint in serving mode as the server does (dtype auto, compiling), warms it up at the server's prompt
budget (which compiles the step for the shape requests get, and is waited for), encodes a --prompt-tokens prompt
into the engine's cache and times `DenoisingStep` on it: the eager step, the compiled step, and exact mode's
decoder forward alone (no sampler) for comparison, median of --steps. Then a torch profiler table of the compiled
step by operator and input shape: the generated kernels ("CompiledFxGraph"), each matmul shape, guard evaluation.
Run it with nothing else on the machine.
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
from engine.cache import SharedPrefixKV  # noqa: E402
from engine.serving import StepState  # noqa: E402
from lsp_server.pipeline import warm_up  # noqa: E402
from lsp_server.settings import Settings  # noqa: E402


def median_ms(run, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompt-tokens", type=int, default=230, help="the server's cold prompts are about 230")
    parser.add_argument("--steps", type=int, default=40, help="timed calls of each variant")
    args = parser.parse_args()

    loaded = engine.load(engine.resolve_model_path(args.model), "cpu", "auto", mode="serving", compile=True)
    warm_up(loaded, Settings())
    loaded.denoising_step.wait()
    model, config = loaded.model, loaded.config
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(7, config.vocab_size, (args.prompt_tokens,), generator=generator).tolist()
    loaded.prefill(prompt)
    store = SharedPrefixKV.over(loaded._prefix_cache, len(prompt), 1, config.canvas_length)
    canvas = torch.randint(0, config.vocab_size, (1, config.canvas_length), generator=generator)
    state = StepState.initial(canvas, config.hidden_size, loaded.dtype, stability=1)
    draws = (torch.tensor(0.7), torch.rand(1, config.canvas_length, generator=generator), torch.tensor(5),
             torch.randint(0, config.vocab_size, (1, config.canvas_length), generator=generator), 0.1, 0.005)
    step = loaded.denoising_step
    state, _ = step.eager(store, state, *draws)  # a self-conditioned state, as every step after the first

    exact_cache = loaded._prefix_cache.expanded(1, config.canvas_length)
    sc_logits = torch.zeros(1, config.canvas_length, config.vocab_size, dtype=loaded.dtype)
    eager = median_ms(lambda: step.eager(store, state, *draws), args.steps)
    compiled = median_ms(lambda: step(store, state, *draws), args.steps)
    exact = median_ms(lambda: model.decode(canvas, len(prompt), exact_cache, sc_logits), args.steps)
    print(f"model {args.model}, {loaded.dtype}, {torch.get_num_threads()} thread(s), prompt {len(prompt)} tokens, "
          f"canvas {config.canvas_length}; compile {loaded.compile_status()['compileSeconds']} s")
    print(f"serving step eager {eager:.2f} ms, compiled {compiled:.2f} ms; exact mode's decoder forward alone "
          f"{exact:.2f} ms (median of {args.steps})\n")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(10):
            step(store, state, *draws)
    print("compiled step, 10 calls:")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20,
                                                             max_name_column_width=40, max_shapes_column_width=50))


if __name__ == "__main__":
    main()
