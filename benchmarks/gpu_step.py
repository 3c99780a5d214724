"""Denoising steps of the released 26B-A4B geometry on a GPU: exact and serving mode, eager and compiled, bf16 and
with quantised experts, against the roofline.

    python benchmarks/gpu_step.py [--config released|tiny] [--device cuda] [--prompt-tokens 2048] [--canvas 256 32]
                                  [--steps 20] [--warmup 3] [--compile|--no-compile]
                                  [--serving-compile|--no-serving-compile] [--quantization int4-g32 fp8]
                                  [--dtype bfloat16] [--sampling reference|fast] [--time-limit 270]
    OMP_NUM_THREADS=1 python benchmarks/gpu_step.py --config tiny --device cpu --quantization int4-g32
                                  # the same rows on the CPU at a tiny config (compiles: add --serving-compile)

No checkpoint is read: the model is built on the meta device at the released google/diffusiongemma-26B-A4B-it text
config (30 layers, hidden 2816, 128 experts top-8, vocab 262144; 25.25B parameters), moved with `to_empty` straight
onto the device in --dtype (no CPU copy of the 50 GB) and filled with small normal noise (std 0.02; norm weights,
router/expert scales and layer scalars 1), which keeps softmax and routing near-uniform, the roofline's assumption.
A --prompt-tokens random prompt is cached (B=1) twice, as each mode's Engine caches it: in one pass for exact mode,
in engine.engine.PROMPT_CHUNK-token chunks for serving mode (so the serving decoder reads buffers of the size it
reads when serving). Every step is timed between consecutive `on_step` callbacks, host syncs included; step 1 and
--warmup more are not timed; the figure is the median of --steps (CUDA events on GPU). Rows, per canvas C:

- exact eager:      engine.generate.generate_blocks, one block (released stopping rule and --sampling sampler):
                    `model.decode` (self-conditioned, over [prompt ; canvas]) + the sampler.
- exact compiled:   the same with `model.decode` = torch.compile(model.decode, dynamic=False) (the sampler stays
                    eager); "compile s" is the wall time of its first block (capture + Inductor + 2+--warmup steps).
- serving eager:    engine.serving.generate_shared, one block, with DenoisingStep(model, compile=False): the
                    static-shape, sync-free step (decoder over the shared prompt cache + sampler + acceptance +
                    renoising + stop check), the step the server runs.
- serving compiled: the same with DenoisingStep(model, compile=True): fullgraph torch.compile, CUDA graphs on CUDA
                    (mode "reduce-overhead"). A one-step block starts its background compile, `wait()` waits for it,
                    then a block is timed; "compile s" is the step's `compile_seconds` (compile + first run).
- serving rows again per --quantization scheme (default on CUDA: int4-g32 and fp8; on the CPU none): a model
  whose experts are engine.quantized.QuantizedExperts from the start (quantize_experts_modules on meta), each
  layer's packed buffers filled by engine.kernels.quantize.quantize from random dense expert weights drawn
  engine.loader.EXPERT_CHUNK experts at a time on the device, as the loader quantises a checkpoint: the dense
  experts never exist whole. On CUDA the experts run in the Triton fused MoE; on the CPU they are dequantised per call.

Columns: precision (the dense dtype, bf16 or fp32, or the experts' scheme with the rest in --dtype), ms/step, canvas
tokens/s (C / step), committed tokens/s at the published ~16 tokens committed per step (min(16, C); published for
C=256, an upper bound at C=32), peak `max_memory_allocated` during the timed block
(weights included), and the ratio to the review's memory roofline (../shared/reference/gpu-review.md: bf16 H100
15.8 ms at C=256 with a fused sampler, 14.3 ms at C=32, H200 11.0 / 10.0 ms; FP8 H100 8.5 / 7.4 ms, H200 5.9 / 5.2
ms), picked by the device name; int4 rows get the FP8 row less the bytes int4 saves on the experts a step reads
(engine.quantized.weight_bytes), marked "derived". The header gives the weight memory per precision for the config
(weight_bytes) and what each built model allocated; the last line names the best serving row per canvas.

Compiling is on by default on CUDA (off on the CPU: --compile / --serving-compile); a failure is reported in the
table, not raised. --time-limit (default 270 s) bounds the whole run. Rows run in priority order: first every eager
row (cheap), then the compiles, most wanted first: serving compiled at the first canvas for every precision, then at
the next canvas, then exact compiled. One model is held at a time (two released models do not fit an 80 GB card):
a row whose precision is not the one held frees it and rebuilds its own (seconds on a GPU; "rebuilt" note). A
compile starts only if 1.5x the last compile's time (at least 30 s) plus that rebuild fits in the time left;
otherwise its row says "skipped (time limit)". If a compile overruns the limit, the table so far is printed
(rows not reached say so) and the script exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import math
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
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.cache import KVCache  # noqa: E402
from engine.config import GenerationConfig, ModelConfig, parse_model_config  # noqa: E402
from engine.engine import PROMPT_CHUNK  # noqa: E402
from engine.generate import StepEvent, generate_blocks  # noqa: E402
from engine.kernels.quantize import SCHEMES, quantize  # noqa: E402
from engine.loader import EXPERT_CHUNK  # noqa: E402
from engine.model import DiffusionGemma  # noqa: E402
from engine.quantized import PROJECTIONS, is_packed_tensor, quantize_experts_modules, weight_bytes  # noqa: E402
from engine.serving import DenoisingStep, generate_shared  # noqa: E402

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
# gpu-review.md, "Roofline per denoising step (uniform routing, 2k prompt cached, B=1)", ms: the bf16 rows (C=256
# with a fused sampler) and the FP8 rows, H100 and H200.
ROOFLINE_MS = {"H200": {"bf16": {256: 11.0, 32: 10.0}, "fp8": {256: 5.9, 32: 5.2}},
               "H100": {"bf16": {256: 15.8, 32: 14.3}, "fp8": {256: 8.5, 32: 7.4}}}
ROOFLINE_FP8_GB = {256: 28.3, 32: 24.9}  # the FP8 rows' GB read per step
ROOFLINE_EXPERTS_READ = {256: 128.0, 32: 111.8}  # experts per layer a step touches (uniform routing)
PUBLISHED_COMMITTED_PER_STEP = 16  # ~15-20 tokens committed per forward at C=256 (model card, H100 FP8)
UNIT_INIT = ("norm.weight", "router.scale", "per_expert_scale", "layer_scalar")
MODES = ("exact eager", "exact compiled", "serving eager", "serving compiled")
MIN_COMPILE_S = 30.0  # the least time left for which a compile is started


def released_config(name: str, canvas: int) -> ModelConfig:
    text = RELEASED_TEXT if name == "released" else TINY_TEXT
    return parse_model_config({"model_type": "diffusion_gemma", "canvas_length": canvas, "text_config": text})


def dense_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]


@torch.no_grad()
def random_model(config: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int,
                 quantization: str | None = None) -> DiffusionGemma:
    """As engine/loader.py's build_model, with noise in place of the checkpoint: meta -> device, never via the CPU.

    With `quantization` the experts are swapped for empty QuantizedExperts while still on meta, and each packed
    buffer is filled from random dense weights drawn EXPERT_CHUNK experts at a time and quantised on the device,
    as the loader streams a checkpoint: the dense experts (45.7 GB in the released model) never exist whole, so
    peak memory is the quantised model's.
    """
    with torch.device("meta"):
        model = DiffusionGemma(config)
    model = model.to(dtype)  # before the swap: .to(dtype) would also cast the fp8 codes and the scales
    if quantization is not None:
        quantize_experts_modules(model, quantization)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if is_packed_tensor(name):
            continue
        if name.endswith(UNIT_INIT):
            tensor.fill_(1.0)
        elif tensor.is_floating_point() and not name.endswith("inv_freq"):
            tensor.normal_(0.0, 0.02, generator=generator)
    if quantization is not None:
        for layer in model.layers:
            for projection in PROJECTIONS:
                packed = getattr(layer.experts, projection)
                experts, rows, k = packed.weight().shape
                for start in range(0, experts, EXPERT_CHUNK):
                    stop = min(start + EXPERT_CHUNK, experts)
                    dense = torch.empty(stop - start, rows, k, dtype=dtype, device=device)
                    weight = quantize(dense.normal_(0.0, 0.02, generator=generator), quantization)
                    packed.qweight[start:stop].copy_(weight.data)
                    packed.scales[start:stop].copy_(weight.scales)
    model.rotary = type(model.rotary)(config).to(device)  # RoPE tables are rebuilt, as build_model does
    model.fuse_projections()
    return model.eval()


def serving_prompt_cache(model: DiffusionGemma, ids: torch.Tensor) -> KVCache:
    """The prompt cache as serving mode's Engine._encode_prompt builds it: PROMPT_CHUNK tokens at a time, so the
    buffers the serving decoder reads in place have serving's sizes (exact mode's one-pass cache is larger)."""
    cache = model.new_cache()
    for begin in range(0, ids.shape[1], PROMPT_CHUNK):
        piece = ids[:, begin : begin + PROMPT_CHUNK]
        cache.reserve(piece.shape[1])
        model.encode(piece, cache.length, cache)
        cache.length += piece.shape[1]
    return cache


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


def exact_block(model, cache, canvas: int, steps: int, sampling: str, seed: int, on_step) -> None:
    """One engine block of `steps` denoising steps on the cached prompt (nothing left to encode, cache unchanged)."""
    model.config = dataclasses.replace(model.config, canvas_length=canvas)  # generate_blocks reads it there
    generation = GenerationConfig(max_new_tokens=canvas, max_denoising_steps=steps, sampling=sampling)
    generator = torch.Generator(device=cache.device).manual_seed(seed)
    nothing = torch.zeros((1, 0), dtype=torch.long, device=cache.device)
    generate_blocks(model, cache, nothing, generation, generator, on_step=on_step)


def serving_block(model, cache, prompt_length: int, canvas: int, steps: int, seed: int, step: DenoisingStep,
                  on_step) -> None:
    """One serving-mode block of `steps` steps for one row over the first `prompt_length` cached positions (the
    prompt cache is read in place, never written)."""
    model.config = dataclasses.replace(model.config, canvas_length=canvas)
    generation = GenerationConfig(max_new_tokens=canvas, max_denoising_steps=steps)
    generator = torch.Generator(device=cache.device).manual_seed(seed)
    generate_shared(model, cache, prompt_length, 1, generation, generator, step, on_step)


def gpu_roofline(device: torch.device) -> dict | str:
    gpu = torch.cuda.get_device_name(device)
    for key, rows in ROOFLINE_MS.items():
        # The review's rows are SXM HBM bandwidths (H100 3.35 TB/s, H200 4.8 TB/s); PCIe/NVL parts and GH200 differ.
        if re.search(rf"\b{key}\b", gpu) and not re.search(r"PCIe|NVL", gpu):
            return rows
    return "no roofline for this device"


def roofline(device: torch.device, name: str, dtype: torch.dtype, canvas: int, precision: str,
             weights: dict[str, int | str], experts: int) -> tuple[float | None, str]:
    """(ms or None, the table cell) of the review's roofline for one row."""
    if device.type != "cuda":
        return None, f"n/a on {device.type}"
    if name != "released":
        return None, "n/a (tiny config)"
    if dtype != torch.bfloat16:
        return None, "n/a (roofline is bf16)"
    rows = gpu_roofline(device)
    if isinstance(rows, str):
        return None, rows
    ms = rows["bf16" if precision == "bf16" else "fp8"].get(canvas)
    if ms is None:
        return None, f"no roofline for C={canvas}"
    if precision == "bf16" or precision == "fp8":
        return ms, f"{ms}"
    # int4: the FP8 row's bytes, less what int4 saves over fp8 on the experts a step touches, at the same bandwidth.
    saved_gb = (weights["fp8"] - weights[precision]) / 1e9 * ROOFLINE_EXPERTS_READ[canvas] / experts
    ms *= (ROOFLINE_FP8_GB[canvas] - saved_gb) / ROOFLINE_FP8_GB[canvas]
    return ms, f"{ms:.1f} (derived)"


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


class ErrorLog(logging.Handler):
    """engine.serving's errors (a failed background compile, a compiled step that fell back to eager): DenoisingStep
    logs them instead of raising, so a "compiled" row checks here that it really ran compiled."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []  # messages only: a record's traceback would keep its frames' models alive

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {failure_message(record.exc_info[1])}"
        self.records.append(message)

    def message(self, since: int) -> str | None:
        return self.records[since] if len(self.records) > since else None


class Report:
    COLUMNS = ("mode", "precision", "canvas", "ms/step (median)", "min-max ms", "canvas tok/s",
               f"committed tok/s @{PUBLISHED_COMMITTED_PER_STEP}/step", "peak GB", "roofline ms", "x roofline",
               "compile s")

    def __init__(self, header: list[str], command: str, started: float, planned: list[tuple[str, str, int]]):
        self.header, self.command, self.started = header, command, started
        self.planned = planned  # (mode, precision, canvas) in display order
        self.cells: dict[tuple[str, str, int], tuple] = {}
        self.measured: dict[tuple[str, str, int], tuple[float, float | None, str]] = {}  # ms, roofline ms, cell
        self.notes: list[str] = []
        self.running: tuple[str, str, int] | None = None  # the compile under way, if any
        self.running_since = 0.0
        self.stopped = False
        self.printed = False
        self.lock = threading.Lock()

    def put(self, key: tuple[str, str, int], *cells) -> None:
        with self.lock:
            self.cells[key] = cells

    def status(self, key: tuple[str, str, int], text: str, compile_s: str = "") -> None:
        """A row with no timing: why (skipped, failed, not run), and the compile seconds if any were spent."""
        blank = len(self.COLUMNS) - 5  # key (3), text and compile s
        self.put(key, text[:300].replace("|", "/"), *[""] * blank, compile_s)

    def summary(self) -> str:
        parts = []
        for canvas in dict.fromkeys(key[2] for key in self.planned):
            serving = [(ms, key, line) for key, (ms, *line) in self.measured.items()
                       if key[0].startswith("serving") and key[2] == canvas]
            if not serving:
                parts.append(f"C={canvas}: no serving row timed")
                continue
            ms, (mode, precision, _), (line_ms, line_cell) = min(serving, key=lambda item: item[0])
            derived = ", derived" if "derived" in line_cell else ""
            ratio = (f"{ms / line_ms:.2f}x the roofline ({line_ms:.1f} ms{derived})" if line_ms
                     else f"roofline {line_cell}")
            parts.append(f"C={canvas}: {mode} {precision} {ms:.2f} ms/step, {ratio}")
        return "summary: best serving row per canvas: " + "; ".join(parts)

    def render(self) -> str:
        missing = "not reached (time limit)" if self.stopped else "not run"
        lines = [*self.header, "", "| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        for key in self.planned:
            cells = self.cells.get(key, (missing, *[""] * (len(self.COLUMNS) - 4)))  # text and blanks
            lines.append("| " + " | ".join(str(cell) for cell in (*key, *cells)) + " |")
        lines += ["", *self.notes, self.summary(), f"elapsed: {time.perf_counter() - self.started:.1f} s",
                  f"command: {self.command}"]
        return "\n".join(lines)


@dataclasses.dataclass
class Workload:
    """One built model and its prompt caches."""

    precision: str
    model: DiffusionGemma
    serving_cache: KVCache
    exact_cache: KVCache | None


class Bench:
    def __init__(self, args, config: ModelConfig, device: torch.device, dtype: torch.dtype, report: Report,
                 weights: dict[str, int | str]):
        self.args, self.config, self.device, self.dtype, self.report = args, config, device, dtype, report
        self.weights = weights
        self.ids = torch.randint(0, config.vocab_size, (1, args.prompt_tokens), device=device,
                                 generator=torch.Generator(device=device).manual_seed(args.seed))
        self.errors = ErrorLog()
        serving_log = logging.getLogger("engine.serving")
        serving_log.addHandler(self.errors)  # also keeps its tracebacks off stderr (no last-resort handler)
        if args.verbose:
            serving_log.addHandler(logging.StreamHandler())
        self.compile_s: dict[str, float] = {}  # kind ("serving", "exact") -> the last compile's seconds
        self.build_s = 0.0  # the last build's seconds (model, prompt caches)
        self.current: Workload | None = None  # the one model held
        self.unbuildable: dict[str, BaseException] = {}
        self.built: dict[str, int] = {}  # precision -> builds

    # -- time budget -------------------------------------------------------------------------------------------
    def left(self) -> float:
        if self.args.time_limit <= 0:
            return math.inf
        return self.args.time_limit - (time.perf_counter() - self.report.started)

    def compile_estimate(self, kind: str) -> float:
        return self.compile_s.get(kind, max(self.compile_s.values(), default=0.0))

    def can_compile(self, kind: str, precision: str) -> bool:
        """Whether a compile (1.5x the last one of its kind, at least MIN_COMPILE_S) and the rebuild it may need
        fit the time left. Compiles run after every eager row, most wanted first, so nothing later is owed time."""
        rebuild = self.build_s if self.current is None or self.current.precision != precision else 0.0
        return self.left() - rebuild >= max(MIN_COMPILE_S, 1.5 * self.compile_estimate(kind))

    # -- models ------------------------------------------------------------------------------------------------
    def build(self, precision: str, exact: bool) -> Workload:
        started = time.perf_counter()
        quantization = None if precision == dense_name(self.dtype) else precision
        with torch.inference_mode():
            model = random_model(self.config, self.device, self.dtype, self.args.seed, quantization)
        sync(self.device)
        self.build_s = build_s = time.perf_counter() - started
        allocated = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e9
        encoded = []
        with torch.inference_mode():
            exact_cache = None
            if exact:
                exact_cache = model.new_cache()
                exact_cache.reserve(self.args.prompt_tokens + max(self.args.canvas))
                model.encode(self.ids, 0, exact_cache)  # warm-up (kernel selection, allocator), then timed
                sync(self.device)
                encode_started = time.perf_counter()
                model.encode(self.ids, 0, exact_cache)
                sync(self.device)
                encoded.append(f"for exact mode in one pass in {(time.perf_counter() - encode_started) * 1e3:.1f} "
                               f"ms ({exact_cache.capacity}-slot buffers)")
                exact_cache.length = self.args.prompt_tokens
            serving_prompt_cache(model, self.ids)  # warm-up (a quantised model's first kernels, the allocator)
            sync(self.device)
            encode_started = time.perf_counter()
            serving_cache = serving_prompt_cache(model, self.ids)
            sync(self.device)
            encoded.append(f"for serving mode in {PROMPT_CHUNK}-token chunks in "
                           f"{(time.perf_counter() - encode_started) * 1e3:.1f} ms "
                           f"({serving_cache.capacity}-slot buffers)")
        what = (f"{count(sum(p.numel() for p in model.parameters()))} parameters" if quantization is None
                else f"experts {quantization} (rest {str(self.dtype)[6:]})")
        self.built[precision] = self.built.get(precision, 0) + 1
        if self.built[precision] == 1:  # rebuilds (for the compiled rows) are counted in one note at the end
            self.report.notes.append(f"{precision} model: {what}, {size(allocated)} allocated (random, built in "
                                     f"{build_s:.1f} s); prompt cached " + " and ".join(encoded))
        return Workload(precision, model, serving_cache, exact_cache)

    def workload(self, precision: str) -> Workload | None:
        """The model of `precision` with its prompt caches: the one held, or built after freeing it (two released
        models do not fit an 80 GB card together). None if it cannot be built (its rows say why)."""
        if self.current is not None and self.current.precision == precision:
            return self.current
        if precision in self.unbuildable:
            return None
        self.release()
        try:
            self.current = self.build(precision, exact=precision == self.precisions[0])
        except Exception as exc:  # noqa: BLE001 - e.g. a group size that does not divide this config's dims
            self.unbuildable[precision] = exc
            for key in self.report.planned:
                if key[1] == precision:
                    self.fail(key, exc)
        return self.current

    def release(self) -> None:
        if self.current is None:
            return
        self.current = None
        torch._dynamo.reset()  # compiled steps keep the old model's graphs (and on CUDA their graph pools)
        gc.collect()  # a DenoisingStep and its torch.compile wrapper reference each other
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- rows --------------------------------------------------------------------------------------------------
    def fail(self, key, exc: BaseException, seconds: float | None = None) -> None:
        if self.args.verbose:
            traceback.print_exception(exc)
        self.report.status(key, f"failed: {failure_message(exc)}", "" if seconds is None else f"{seconds:.1f}")

    def measure(self, key: tuple[str, str, int], block: Callable[[StepTimer], None], compile_s: str = "") -> None:
        """Time one block: `block(timer)` runs it with `timer` as its on_step callback."""
        args, device = self.args, self.device
        mode, precision, canvas = key
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timer = StepTimer(device)
        block(timer)
        times = timer.step_ms(skip=args.warmup)
        if len(times) < args.steps:
            self.report.notes.append(f"{mode} {precision} C={canvas}: the block stopped early; {len(times)} of "
                                     f"{args.steps} steps timed")
        if not times:
            self.report.status(key, "no step timed", compile_s)
            return
        ms = statistics.median(times)
        peak = (f"{torch.cuda.max_memory_allocated(device) / 1e9:.2f}" if device.type == "cuda"
                else f"n/a on {device.type}")
        line_ms, line = roofline(device, args.config, self.dtype, canvas, precision, self.weights,
                                 self.config.num_experts)
        ratio = f"{ms / line_ms:.2f}" if line_ms else "n/a"
        committed = min(PUBLISHED_COMMITTED_PER_STEP, canvas) / ms * 1000
        self.report.put(key, f"{ms:.2f}", f"{min(times):.2f}-{max(times):.2f}", f"{canvas / ms * 1000:.0f}",
                        f"{committed:.0f}", peak, line, ratio, compile_s)
        with self.report.lock:
            self.report.measured[key] = (ms, line_ms, line)

    def attempt(self, key, run: Callable[[], None]) -> None:
        """One row; an error is the row's result, not the end of the run."""
        try:
            with torch.inference_mode():
                run()
        except Exception as exc:  # noqa: BLE001 - report it and go on with the next row
            self.fail(key, exc)

    def steps(self) -> int:
        return 1 + self.args.warmup + self.args.steps

    def exact_eager(self, workload: Workload, canvas: int) -> None:
        key = ("exact eager", workload.precision, canvas)
        self.attempt(key, lambda: self.measure(key, lambda timer: exact_block(
            workload.model, workload.exact_cache, canvas, self.steps(), self.args.sampling, self.args.seed, timer)))

    def serving_eager(self, workload: Workload, step: DenoisingStep, canvas: int) -> None:
        key = ("serving eager", workload.precision, canvas)
        self.attempt(key, lambda: self.measure(key, lambda timer: serving_block(
            workload.model, workload.serving_cache, self.args.prompt_tokens, canvas, self.steps(), self.args.seed,
            step, timer)))

    def serving_compiled(self, workload: Workload, canvas: int) -> None:
        key = ("serving compiled", workload.precision, canvas)
        model, cache, prompt = workload.model, workload.serving_cache, self.args.prompt_tokens
        step = DenoisingStep(model, compile=True, fused_head=self.args.fused_head)
        errors, known = len(self.errors.records), set(step.compile_seconds)
        started = self.report.running_since = time.perf_counter()
        self.report.running = key
        try:
            with torch.inference_mode():
                # A one-step block: its step meets the shape first and starts compiling it in the background.
                serving_block(model, cache, prompt, canvas, 1, self.args.seed, step, None)
            step.wait()
        except Exception as exc:  # noqa: BLE001
            self.fail(key, exc, time.perf_counter() - started)
            return
        finally:
            self.report.running = None
        compiled = set(step.compile_seconds) - known
        if not compiled:
            message = self.errors.message(errors) or "no compiled step came out of the compile"
            self.report.status(key, f"failed: {message}", f"{time.perf_counter() - started:.1f}")
            return
        seconds = step.compile_seconds[compiled.pop()]
        self.compile_s["serving"] = seconds
        errors = len(self.errors.records)
        self.attempt(key, lambda: self.measure(key, lambda timer: serving_block(
            model, cache, prompt, canvas, self.steps(), self.args.seed, step, timer), f"{seconds:.1f}"))
        message = self.errors.message(errors)
        if message is not None:  # the compiled step failed at run time and DenoisingStep went on eagerly
            with self.report.lock:
                self.report.measured.pop(key, None)
            self.report.status(key, f"failed (ran eagerly): {message}", f"{seconds:.1f}")

    def exact_compiled(self, workload: Workload, canvas: int) -> None:
        args, model = self.args, workload.model
        key = ("exact compiled", workload.precision, canvas)
        model.decode = torch.compile(model.decode, dynamic=False, mode=args.compile_mode)
        try:
            started = self.report.running_since = time.perf_counter()
            self.report.running = key
            try:
                with torch.inference_mode():  # the first block compiles
                    exact_block(model, workload.exact_cache, canvas, 2 + args.warmup, args.sampling, args.seed, None)
                sync(self.device)
            except Exception as exc:  # noqa: BLE001 - report it and go on with the next row
                self.fail(key, exc, time.perf_counter() - started)
                return
            finally:
                self.report.running = None
            seconds = self.compile_s["exact"] = time.perf_counter() - started
            self.attempt(key, lambda: self.measure(key, lambda timer: exact_block(
                model, workload.exact_cache, canvas, self.steps(), args.sampling, args.seed, timer), f"{seconds:.1f}"))
        finally:
            del model.decode  # back to the class's eager method

    def run(self, precisions: list[str]) -> None:
        """Every eager row first (cheap), precision by precision; then the compiles, most wanted first: serving
        mode's at each canvas for every precision, then exact mode's, each skipped when the time left cannot fit it."""
        args, dense = self.args, precisions[0]
        self.precisions = precisions
        for precision in reversed(precisions):  # ending on the dense model, which the first compile uses
            workload = self.workload(precision)
            if workload is None:
                continue
            if precision == dense:
                for canvas in args.canvas:
                    self.exact_eager(workload, canvas)
            step = DenoisingStep(workload.model, compile=False, fused_head=args.fused_head)
            for canvas in args.canvas:
                self.serving_eager(workload, step, canvas)
            del step, workload  # the model stays held by self.current only, so release() frees it
        # Every precision at the first canvas, then at the next one in the reverse order (the model held is reused
        # when the canvas changes), and so on; exact mode last.
        jobs = [("serving compiled", precision, canvas) for index, canvas in enumerate(args.canvas)
                for precision in (precisions if index % 2 == 0 else precisions[::-1])]
        jobs += [("exact compiled", dense, canvas) for canvas in args.canvas]
        for key in jobs:
            mode, precision, canvas = key
            kind, flag = mode.split()[0], "--compile" if mode == "exact compiled" else "--serving-compile"
            if precision in self.unbuildable:
                continue  # its rows already say why
            if not (args.compile if kind == "exact" else args.serving_compile):
                self.report.status(key, f"not run (off on {self.device.type}; pass {flag})")
            elif not self.can_compile(kind, precision):
                self.report.status(key, "skipped (time limit)")
            else:
                workload = self.workload(precision)
                if workload is not None:
                    (self.serving_compiled if kind == "serving" else self.exact_compiled)(workload, canvas)
                workload = None  # held by self.current only, so the next build can free it
        rebuilt = {precision: n - 1 for precision, n in self.built.items() if n > 1}
        if rebuilt:
            self.report.notes.append("rebuilt for the compiled rows: " + ", ".join(
                f"{precision} x{n}" for precision, n in rebuilt.items()) + f" (last build {self.build_s:.1f} s)")


def main() -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("released", "tiny"), default=None,
                        help="released 26B-A4B geometry (default on CUDA) or a tiny one (default on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--canvas", type=int, nargs="+", default=[256, 32])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first of each block")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time exact mode with torch.compile(model.decode); default on for CUDA, off on "
                             "the CPU")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of exact mode's decode")
    parser.add_argument("--serving-compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time serving mode's compiled step (CUDA graphs on CUDA); default on for CUDA, "
                             "off on the CPU")
    parser.add_argument("--quantization", nargs="*", choices=SCHEMES, default=None,
                        help="expert quantisations whose serving rows are timed too (default on CUDA: int4-g32 "
                             "fp8; on the CPU none)")
    parser.add_argument("--fused-head", action="store_true",
                        help="serving rows with the fused head + sampler kernel (engine/kernels/head_sampler.py; "
                             "opt-in until measured: run once with and once without)")
    parser.add_argument("--verbose", action="store_true", help="keep dynamo/inductor logs and compile tracebacks")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--sampling", choices=("reference", "fast"), default="reference",
                        help="exact mode's sampler (serving mode always samples by inverse CDF)")
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
    args.canvas = list(dict.fromkeys(args.canvas))
    if args.compile is None:
        args.compile = device.type == "cuda"
    if args.serving_compile is None:
        args.serving_compile = device.type == "cuda"
    if args.quantization is None:
        args.quantization = ["int4-g32", "fp8"] if device.type == "cuda" else []
    if not args.verbose:  # graph-break warnings and fake-tensor errors would bury the table; failures still show
        for logger in ("torch._dynamo", "torch._inductor", "torch._subclasses.fake_tensor"):
            logging.getLogger(logger).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", module=r"torch\._dynamo.*")
    command = shlex.join(["python", "benchmarks/gpu_step.py", *sys.argv[1:]])

    torch.manual_seed(args.seed)
    config = released_config(args.config, max(args.canvas))
    dense = dense_name(dtype)
    precisions = [dense, *dict.fromkeys(args.quantization)]
    weights: dict[str, int | str] = {dense: weight_bytes(config, None, dtype)}
    for scheme in SCHEMES:
        try:
            weights[scheme] = weight_bytes(config, scheme, dtype)
        except ValueError as exc:  # a group size that does not divide this config's dims
            weights[scheme] = f"n/a ({exc})"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    header = [
        f"device: {name}; torch {torch.__version__}",
        f"config: {args.config} ({config.num_layers} layers, hidden {config.hidden_size}, {config.num_experts} experts "
        f"top-{config.top_k_experts}, vocab {config.vocab_size}), {str(dtype)[6:]} activations and non-expert weights",
        "weights by precision (engine.quantized.weight_bytes): " + ", ".join(
            f"{precision} {size(value / 1e9) if isinstance(value, int) else value}"
            for precision, value in weights.items()),
        f"prompt: {args.prompt_tokens} random tokens cached; B=1; exact sampling {args.sampling}; "
        f"{args.steps} timed steps after {1 + args.warmup} untimed per block",
    ]
    planned = [(mode, precision, canvas) for canvas in args.canvas for precision in precisions for mode in MODES
               if precision == dense or mode.startswith("serving")]
    report = Report(header, command, started, planned)
    if args.prompt_tokens != 2048 and device.type == "cuda":
        report.notes.append("note: the roofline assumes a 2,048-token cached prompt")

    def out_of_time() -> None:
        with report.lock:
            if report.printed:  # the run finished while this timer waited for the lock
                return
            report.stopped = True
            if report.running is not None:
                blank = len(report.COLUMNS) - 5
                report.cells[report.running] = ("did not finish by the time limit", *[""] * blank,
                                                f">{time.perf_counter() - report.running_since:.0f}")
            report.notes.append(f"stopped at --time-limit {args.time_limit:.0f} s (a compile did not finish in time)")
            print(report.render(), flush=True)
        os._exit(0)  # a compile thread may still be inside torch.compile; exiting normally would wait for it

    if args.time_limit > 0:
        watchdog = threading.Timer(max(1.0, args.time_limit - (time.perf_counter() - started)), out_of_time)
        watchdog.daemon = True
        watchdog.start()

    Bench(args, config, device, dtype, report, weights).run(precisions)
    with report.lock:
        print(report.render(), flush=True)
        report.printed = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
