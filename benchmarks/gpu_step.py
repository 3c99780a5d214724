"""One denoising step of the released 26B-A4B geometry on a GPU, eager and under torch.compile, against the roofline.

    python benchmarks/gpu_step.py [--config released|tiny] [--device cuda] [--prompt-tokens 2048] [--canvas 256 32]
                                  [--steps 20] [--warmup 3] [--compile|--no-compile] [--dtype bfloat16]
                                  [--sampling reference|fast] [--time-limit 270]
    OMP_NUM_THREADS=1 python benchmarks/gpu_step.py --config tiny --device cpu     # the same table, in seconds

No checkpoint is read: the model is built on the meta device at the released google/diffusiongemma-26B-A4B-it text
config (30 layers, hidden 2816, 128 experts top-8, vocab 262144; 25.25B parameters), moved with `to_empty` straight
onto the device in --dtype (no CPU copy of the 50 GB) and filled with small normal noise (std 0.02; norm weights,
router/expert scales and layer scalars 1), which keeps softmax and routing near-uniform, the roofline's assumption.
A --prompt-tokens random prompt is encoded once into the engine's KVCache (B=1). Then, per canvas length C, the
engine's own `generate_blocks` runs one block (stopping rule and sampler as released) and every step is timed
between consecutive `on_step` callbacks: one step = `model.decode` (self-conditioned, over [prompt ; canvas]) + the
sampler (temperature, sampling, entropy-bound acceptance, renoising, stopping check), host syncs included. Step 1
(no self-conditioning) and --warmup steps are not timed; the figure is the median of --steps (CUDA events on GPU).

Reported per (mode, C): ms/step, canvas tokens/s (C / step), committed tokens/s at the published ~16 tokens
committed per step (min(16, C); published for C=256, an upper-bound assumption at C=32), peak `max_memory_allocated`
(weights included), and the ratio to the review's bf16 memory roofline (../shared/reference/gpu-review.md: H100
15.8 ms at C=256 with a fused sampler, 14.3 ms at C=32; H200 11.0 / 10.0 ms), picked by the device name.
"compile" (default on CUDA, off on the CPU) replaces `model.decode` by `torch.compile(model.decode, dynamic=False)`
(the sampler stays eager); the wall time of its first block (graph capture + Inductor + 2+--warmup steps) is the
reported compile time, and a failure is reported in the table, not raised.
--time-limit (default 270 s) bounds the whole run: later compile runs are skipped when too little time is left, and
at the limit the table so far is printed and the script exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shlex
import statistics
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.config import GenerationConfig, ModelConfig, parse_model_config  # noqa: E402
from engine.generate import StepEvent, generate_blocks  # noqa: E402
from engine.model import DiffusionGemma  # noqa: E402

RELEASED_TEXT = {  # google/diffusiongemma-26B-A4B-it text_config; the rest are transformers' defaults (= release)
    "model_type": "diffusion_gemma_text", "vocab_size": 262_144, "hidden_size": 2816, "intermediate_size": 2112,
    "num_hidden_layers": 30, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
    "global_head_dim": 512, "num_global_key_value_heads": 2, "sliding_window": 1024, "num_experts": 128,
    "top_k_experts": 8, "moe_intermediate_size": 704, "use_bidirectional_attention": "vision",
}
TINY_TEXT = {  # the same layer pattern and attention geometry ratios, small enough for a CPU in seconds
    "model_type": "diffusion_gemma_text", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "global_head_dim": 32, "num_global_key_value_heads": 1, "sliding_window": 32, "num_experts": 8,
    "top_k_experts": 2, "moe_intermediate_size": 32, "use_bidirectional_attention": "vision",
}
# gpu-review.md, "Roofline per denoising step (uniform routing, 2k prompt cached, B=1)", bf16 rows, ms.
ROOFLINE_MS = {"H200": {256: 11.0, 32: 10.0}, "H100": {256: 15.8, 32: 14.3}}
PUBLISHED_COMMITTED_PER_STEP = 16  # ~15-20 tokens committed per forward at C=256 (model card, H100 FP8)
UNIT_INIT = ("norm.weight", "router.scale", "per_expert_scale", "layer_scalar")


def released_config(name: str, canvas: int) -> ModelConfig:
    text = RELEASED_TEXT if name == "released" else TINY_TEXT
    return parse_model_config({"model_type": "diffusion_gemma", "canvas_length": canvas, "text_config": text})


@torch.no_grad()
def random_model(config: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int) -> DiffusionGemma:
    """As engine/loader.py's build_model, with noise in place of the checkpoint: meta -> device, never via the CPU."""
    with torch.device("meta"):
        model = DiffusionGemma(config)
    model = model.to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.endswith(UNIT_INIT):
            tensor.fill_(1.0)
        elif tensor.is_floating_point() and not name.endswith("inv_freq"):
            tensor.normal_(0.0, 0.02, generator=generator)
    model.rotary = type(model.rotary)(config).to(device)  # RoPE tables are rebuilt, as build_model does
    model.fuse_projections()
    return model.eval()


class StepTimer:
    """`on_step` callback: a CUDA event (or a host clock on CPU) after each step; intervals are whole steps."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def __call__(self, event: StepEvent) -> None:
        if self.cuda:
            mark = torch.cuda.Event(enable_timing=True)
            mark.record()
            self.marks.append(mark)
        else:
            self.marks.append(time.perf_counter())

    def step_ms(self, skip: int) -> list[float]:
        """Durations of steps skip+2.. (the mark after step k closes step k; step 1 has no self-conditioning)."""
        if self.cuda:
            torch.cuda.synchronize()
            pairs = zip(self.marks[skip:], self.marks[skip + 1 :])
            return [start.elapsed_time(end) for start, end in pairs]
        return [(end - start) * 1000 for start, end in zip(self.marks[skip:], self.marks[skip + 1 :])]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_block(model, cache, config: ModelConfig, steps: int, sampling: str, seed: int, device) -> StepTimer:
    """One engine block of `steps` denoising steps on the cached prompt (nothing left to encode, cache unchanged)."""
    model.config = config  # generate_blocks reads the canvas length from the model's config
    generation = GenerationConfig(max_new_tokens=config.canvas_length, max_denoising_steps=steps, sampling=sampling)
    generator = torch.Generator(device=device).manual_seed(seed)
    timer = StepTimer(device)
    nothing = torch.zeros((1, 0), dtype=torch.long, device=device)
    generate_blocks(model, cache, nothing, generation, generator, on_step=timer)
    return timer


def roofline(device: torch.device, name: str, dtype: torch.dtype, canvas: int) -> float | str:
    if device.type != "cuda":
        return f"n/a on {device.type}"
    if name != "released":
        return "n/a (tiny config)"
    if dtype != torch.bfloat16:
        return "n/a (roofline is bf16)"
    gpu = torch.cuda.get_device_name(device)
    for key, rows in ROOFLINE_MS.items():
        # The review's rows are SXM HBM bandwidths (H100 3.35 TB/s, H200 4.8 TB/s); PCIe/NVL parts and GH200 differ.
        if re.search(rf"\b{key}\b", gpu) and not re.search(r"PCIe|NVL", gpu):
            return rows.get(canvas, f"no roofline for C={canvas}")
    return "no roofline for this device"


def count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def size(gigabytes: float) -> str:
    return f"{gigabytes:.2f} GB" if gigabytes >= 0.1 else f"{gigabytes * 1e3:.1f} MB"


def failure_message(exc: BaseException) -> str:
    """The outer error and its root cause, on one line (dynamo wraps the real error in a generic one)."""
    root, seen = exc, 0
    while (root.__cause__ or root.__context__) is not None and seen < 20:  # dynamo hides its cause as context
        root, seen = root.__cause__ or root.__context__, seen + 1

    def line(error: BaseException) -> str:
        text = (str(error).strip().splitlines() or [""])[0]
        return text if text.startswith(type(error).__name__) else f"{type(error).__name__}: {text}"

    parts = [line(exc)] + ([line(root)] if root is not exc else [])
    return " <- ".join(parts)[:300].replace("|", "/")


class Report:
    COLUMNS = ("mode", "canvas", "ms/step (median)", "min-max ms", "canvas tok/s",
               f"committed tok/s @{PUBLISHED_COMMITTED_PER_STEP}/step", "peak GB", "roofline ms", "x roofline",
               "compile s")

    def __init__(self, header: list[str], command: str, started: float):
        self.header, self.command, self.started = header, command, started
        self.rows: list[tuple] = []
        self.notes: list[str] = []
        self.running: tuple[str, int] | None = None  # the compile under way, if any
        self.lock = threading.Lock()

    def render(self) -> str:
        lines = [*self.header, "", "| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        lines += ["", *self.notes, f"elapsed: {time.perf_counter() - self.started:.1f} s", f"command: {self.command}"]
        return "\n".join(lines)


def measure(args, model, cache, report: Report, mode: str, canvas: int, device, compile_s: str = "") -> None:
    config = dataclasses.replace(model.config, canvas_length=canvas)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = run_block(model, cache, config, 1 + args.warmup + args.steps, args.sampling, args.seed, device)
    times = timer.step_ms(skip=args.warmup)
    if len(times) < args.steps:
        report.notes.append(f"{mode} C={canvas}: the block stopped early; {len(times)} of {args.steps} steps timed")
    if not times:
        with report.lock:
            report.rows.append((mode, canvas, "no step timed", "", "", "", "", "", "", compile_s))
        return
    ms = statistics.median(times)
    peak = f"{torch.cuda.max_memory_allocated(device) / 1e9:.2f}" if device.type == "cuda" else f"n/a on {device.type}"
    line = roofline(device, args.config, model.embed_tokens.weight.dtype, canvas)
    ratio = f"{ms / line:.2f}" if isinstance(line, float) else "n/a"
    committed = min(PUBLISHED_COMMITTED_PER_STEP, canvas) / ms * 1000
    with report.lock:
        report.rows.append((mode, canvas, f"{ms:.2f}", f"{min(times):.2f}-{max(times):.2f}",
                            f"{canvas / ms * 1000:.0f}", f"{committed:.0f}", peak, line, ratio, compile_s))


def main() -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("released", "tiny"), default=None,
                        help="released 26B-A4B geometry (default on CUDA) or a tiny one (default on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--canvas", type=int, nargs="+", default=[256, 32])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per (mode, canvas)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first of each block")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch.compile(model.decode); default on for CUDA, off on the CPU "
                             "(--no-compile: eager only)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default: 'default')")
    parser.add_argument("--verbose", action="store_true", help="keep dynamo/inductor logs and compile tracebacks")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--sampling", choices=("reference", "fast"), default="reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=270.0, help="seconds for the whole run (0: none)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available here; use --device cpu --config tiny")
    args.config = args.config or ("released" if device.type == "cuda" else "tiny")
    if args.config == "released" and device.type != "cuda":
        parser.error("the released config needs ~51 GB of accelerator memory; on the CPU use --config tiny")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.steps < 1 or args.warmup < 0 or args.prompt_tokens < 1 or min(args.canvas) < 1:
        parser.error("--steps, --prompt-tokens and --canvas must be positive, --warmup >= 0")
    if args.compile is None:
        args.compile = device.type == "cuda"
    if not args.verbose:  # graph-break warnings and fake-tensor errors would bury the table; failures still show
        for logger in ("torch._dynamo", "torch._inductor", "torch._subclasses.fake_tensor"):
            logging.getLogger(logger).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", module=r"torch\._dynamo.*")
    command = shlex.join(["python", "benchmarks/gpu_step.py", *sys.argv[1:]])

    torch.manual_seed(args.seed)
    config = released_config(args.config, max(args.canvas))
    built = time.perf_counter()
    with torch.inference_mode():
        model = random_model(config, device, dtype, args.seed)
    sync(device)
    build_s = time.perf_counter() - built
    parameters = sum(p.numel() for p in model.parameters())
    weights_gb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e9
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"

    cache = model.new_cache()
    ids = torch.randint(0, config.vocab_size, (1, args.prompt_tokens), device=device,
                        generator=torch.Generator(device=device).manual_seed(args.seed))
    with torch.inference_mode():
        cache.reserve(args.prompt_tokens + max(args.canvas))
        model.encode(ids, 0, cache)  # warm-up (kernel selection, allocator), then timed
        sync(device)
        encode_started = time.perf_counter()
        model.encode(ids, 0, cache)
        sync(device)
        encode_ms = (time.perf_counter() - encode_started) * 1000
    cache.length = args.prompt_tokens

    header = [
        f"device: {name}; torch {torch.__version__}",
        f"config: {args.config} ({config.num_layers} layers, hidden {config.hidden_size}, {config.num_experts} experts "
        f"top-{config.top_k_experts}, vocab {config.vocab_size}), {count(parameters)} parameters, "
        f"{str(dtype).removeprefix('torch.')} weights {size(weights_gb)} (random, built in {build_s:.1f} s)",
        f"prompt: {args.prompt_tokens} tokens cached, encoded in {encode_ms:.1f} ms; B=1; sampling {args.sampling}; "
        f"{args.steps} timed steps after {1 + args.warmup} untimed per block",
    ]
    report = Report(header, command, started)
    if args.prompt_tokens != 2048 and device.type == "cuda":
        report.notes.append("note: the roofline assumes a 2,048-token cached prompt")

    compile_started = 0.0

    def out_of_time() -> None:
        with report.lock:
            if report.running is not None:
                report.rows.append((*report.running, "did not finish by the time limit", *[""] * 6,
                                    f">{time.perf_counter() - compile_started:.0f}"))
            report.notes.append(f"stopped at --time-limit {args.time_limit:.0f} s (a compile did not finish in time)")
            print(report.render(), flush=True)
        os._exit(0)

    if args.time_limit > 0:
        watchdog = threading.Timer(max(1.0, args.time_limit - (time.perf_counter() - started)), out_of_time)
        watchdog.daemon = True
        watchdog.start()

    with torch.inference_mode():
        for canvas in args.canvas:
            measure(args, model, cache, report, "eager", canvas, device)

        if not args.compile:
            for canvas in args.canvas:
                report.rows.append(("compile", canvas, f"not run (off on {device.type}; pass --compile)", *[""] * 7))
        else:
            model.decode = torch.compile(model.decode, dynamic=False, mode=args.compile_mode)
            last_compile_s = 0.0
            for canvas in args.canvas:
                left = args.time_limit - (time.perf_counter() - started) if args.time_limit > 0 else float("inf")
                if left < max(30.0, 1.5 * last_compile_s):
                    report.rows.append(("compile", canvas, "skipped (time limit)", *[""] * 7))
                    continue
                warm_started = compile_started = time.perf_counter()
                report.running = ("compile", canvas)
                try:
                    run_block(model, cache, dataclasses.replace(config, canvas_length=canvas), 2 + args.warmup,
                              args.sampling, args.seed, device)
                    sync(device)
                except Exception as exc:  # noqa: BLE001 - report it and go on with the next canvas
                    if args.verbose:
                        traceback.print_exc()
                    message = failure_message(exc)
                    failed_s = time.perf_counter() - warm_started
                    report.rows.append(("compile", canvas, f"failed: {message}",
                                        *[""] * 6, f"{failed_s:.1f}"))
                    continue
                finally:
                    report.running = None
                last_compile_s = time.perf_counter() - warm_started
                measure(args, model, cache, report, "compile", canvas, device, f"{last_compile_s:.1f}")
            del model.decode  # back to the class's eager method
    print(report.render(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
