"""Time one request through our engine and through transformers' reference `generate()`.

Same checkpoint (written by transformers), same prompt, same seed: the script checks the tokens are identical and
prints the speed ratio for a tiny and a mid-sized (~15M parameters) config.

    python benchmarks/engine_vs_transformers.py [--repeats 5] [--threads 2] [--floor]

`--floor` also profiles one request through each and prints the time both spend in the kernels whose output bits
identical tokens pin down (matmuls, the sampler's exponential race, attention, softmax, tanh, GELU), and the speedup
the engine could at most reach if every other operation took no time.

transformers is a test/benchmark dependency only (`pip install -e ".[dev]"`); the engine never imports it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_models import build_reference, save_reference, text_config  # noqa: E402

import engine  # noqa: E402

CONFIGS = {
    "tiny": dict(text=text_config(), canvas_length=8, prompt_length=21, max_new_tokens=8),
    "mid": dict(
        text=text_config(
            vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64, global_head_dim=128,
            num_global_key_value_heads=1, sliding_window=128,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
            num_experts=8, top_k_experts=2, moe_intermediate_size=256,
        ),
        canvas_length=32, prompt_length=300, max_new_tokens=32,
    ),
}


def interleaved_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[list[float], object]]:
    """Time each run `repeats` times, alternating between them, so that both see the same machine (other load on a
    shared CPU comes and goes over seconds; timing one side after the other would charge it to one of them)."""
    for run in runs.values():
        run()  # warm-up: first calls pay for allocation and kernel selection
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - started)
    return {name: (times[name], results[name]) for name in runs}


def bench(name: str, spec: dict, repeats: int, seed: int, floor: bool = False) -> float:
    reference = build_reference(spec["text"], canvas_length=spec["canvas_length"])
    parameters = sum(p.numel() for n, p in reference.named_parameters() if "vision" not in n)
    with tempfile.TemporaryDirectory() as directory:
        save_reference(reference, Path(directory))
        ours = engine.load(directory, device="cpu", dtype="float32")
    vocab = spec["text"]["vocab_size"]
    ids = torch.randint(3, vocab - 4, (1, spec["prompt_length"]), generator=torch.Generator().manual_seed(seed))
    max_new = spec["max_new_tokens"]

    def run_reference():
        torch.manual_seed(seed)
        with torch.inference_mode():
            return reference.generate(ids, max_new_tokens=max_new).sequences[0, ids.shape[1]:].tolist()

    def run_ours():
        ours._prefix_cache = None  # time a cold request: the prompt is encoded every time, as the reference does
        return ours.generate(ids[0].tolist(), max_new_tokens=max_new, seed=seed).tokens

    timed = interleaved_seconds({"reference": run_reference, "ours": run_ours}, repeats)
    (reference_times, reference_tokens), (our_times, our_tokens) = timed["reference"], timed["ours"]
    identical = reference_tokens == our_tokens
    reference_time, our_time = statistics.median(reference_times), statistics.median(our_times)
    ratio = reference_time / our_time
    pair_ratios = sorted(r / o for r, o in zip(reference_times, our_times))
    print(f"{name:5s} params={parameters / 1e6:6.2f}M prompt={ids.shape[1]} canvas={spec['canvas_length']} "
          f"transformers={reference_time * 1000:8.1f} ms  engine={our_time * 1000:8.1f} ms  "
          f"speedup={ratio:5.2f}x (per-pair min {pair_ratios[0]:.2f} max {pair_ratios[-1]:.2f})  "
          f"tokens_identical={identical}")
    if not identical:
        raise SystemExit(f"{name}: tokens differ from the reference")
    if floor:
        runs = (("transformers", run_reference), ("engine", run_ours))
        fixed = {label: fixed_kernel_seconds(run) for label, run in runs}
        print(f"      kernels whose output bits identical tokens pin down ({', '.join(sorted(FIXED_KERNELS))}): "
              f"transformers {fixed['transformers'] * 1000:.1f} ms, engine {fixed['engine'] * 1000:.1f} ms "
              f"-> even if everything else took no time: speedup <= {reference_time / fixed['engine']:.2f}x")
    return ratio


# Identical tokens from a random-weight model need bit-identical logits at every step (a 1-ulp difference changes a
# sample within a few steps), so these kernels must run on the same inputs as in the reference: their time is a floor.
FIXED_KERNELS = frozenset({
    "aten::mm", "aten::exponential_", "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_softmax",
    "aten::tanh", "aten::gelu",
})


def fixed_kernel_seconds(run: Callable[[], object]) -> float:
    """Self CPU time of FIXED_KERNELS in one profiled run."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return sum(event.self_cpu_time_total for event in profile.key_averages() if event.key in FIXED_KERNELS) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--floor", action="store_true",
                        help="also profile one request of each and print the time in kernels both must run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.config or ["tiny", "mid"]:
        bench(name, CONFIGS[name], args.repeats, args.seed, args.floor)


if __name__ == "__main__":
    main()
