"""Benchmark: one serving-mode denoising step on the CPU, eager and compiled, and where its time goes.

    OMP_NUM_THREADS=1 python benchmarks/serving_step.py [--model embedded|PATH] [--prompt-tokens 230] [--steps 40]
                                                        [--dtype auto]

Loads the checkpoint in serving mode as the server does (dtype auto, compiling), warms it up at the server's prompt
budget (which compiles the step for the shape requests get, and is waited for), encodes a --prompt-tokens prompt
into the engine's cache and times `DenoisingStep` on it: the eager step, the compiled step (the server's: an
AOTInductor package compiled by a child process), the same step under torch.compile in this process, and exact
mode's decoder forward alone (no sampler) for comparison: medians per call over --steps calls, in turns of 8 calls
in a row (a canvas). Then the compiled step's agreement with the eager one on the same inputs, and a torch
profiler table of the compiled step by operator and input shape: what the package calls in ATen (each matmul
shape, sorting); the generated kernels are the rest of its time. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine  # noqa: E402
from engine.cache import SharedPrefixKV  # noqa: E402
from engine.serving import DenoisingStep, StepState  # noqa: E402
from lsp_server.pipeline import warm_up  # noqa: E402
from lsp_server.settings import Settings  # noqa: E402


def interleaved_medians_ms(runs: dict[str, Callable[[], object]], repeats: int, block: int = 8) -> dict[str, float]:
    """Median milliseconds per call of each run, timed over blocks of `block` calls in a row (as a canvas's steps
    run) with the runs taking turns block by block, so that drift in the machine's speed hits all alike."""
    for run in runs.values():
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(1, repeats // block)):
        for name, run in runs.items():
            started = time.perf_counter()
            for _ in range(block):
                run()
            times[name].append((time.perf_counter() - started) * 1000 / block)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompt-tokens", type=int, default=230, help="the server's cold prompts are about 230")
    parser.add_argument("--steps", type=int, default=40, help="timed calls of each variant")
    parser.add_argument("--dtype", default="auto", help="the model's dtype (default: auto, the server's)")
    args = parser.parse_args()

    loaded = engine.load(engine.resolve_model_path(args.model), "cpu", args.dtype, mode="serving", compile=True)
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
    in_process = DenoisingStep(model, compile=True, ahead_of_time=False)  # torch.compile in this process
    in_process(store, state, *draws)
    in_process.wait()
    ms = interleaved_medians_ms({
        "eager": lambda: step.eager(store, state, *draws),
        "compiled": lambda: step(store, state, *draws),
        "torch.compile": lambda: in_process(store, state, *draws),
        "exact": lambda: model.decode(canvas, len(prompt), exact_cache, sc_logits),
    }, args.steps)
    print(f"model {args.model}, {loaded.dtype}, {torch.get_num_threads()} thread(s), prompt {len(prompt)} tokens, "
          f"canvas {config.canvas_length}; compile {loaded.compile_status()['compileSeconds']} s")
    print(f"serving step eager {ms['eager']:.2f} ms, compiled {ms['compiled']:.2f} ms (the server's: AOTInductor, "
          f"compiled by a child process), torch.compile in this process {ms['torch.compile']:.2f} ms; exact mode's "
          f"decoder forward alone {ms['exact']:.2f} ms (medians over {args.steps} calls, in turns of 8)\n")

    compiled_state, _ = step(store, state, *draws)
    eager_state, _ = step.eager(store, state, *draws)
    signal_difference = (compiled_state.signal.float() - eager_state.signal.float()).abs()
    print(f"compiled against eager on the same inputs: self-conditioning signal max |Δ| "
          f"{signal_difference.max():.4f} (mean {signal_difference.mean():.5f}), argmax agreement "
          f"{(compiled_state.argmax == eager_state.argmax).float().mean():.3f}, canvas agreement "
          f"{(compiled_state.canvas == eager_state.canvas).float().mean():.3f}\n")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(10):
            step(store, state, *draws)
    print("compiled step, 10 calls:")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20,
                                                             max_name_column_width=40, max_shapes_column_width=50))


if __name__ == "__main__":
    main()
