"""Serving mode: block diffusion with a static-shape, sync-free denoising step that compiles as one graph.

Exact mode (`engine.generate.generate_blocks`) draws the reference's random stream with its kernels, bit for bit.
Serving mode runs the same model and sampler, not the same bits:
- every candidate row reads the prompt's KV cache in place (`SharedPrefixKV`): no per-request copy of the prompt;
- one step is decoder + sampler + acceptance + renoising + early-stop bookkeeping (`denoising_step`). Positions
  and temperatures are tensors and every slot is chosen by a mask, so its shapes depend only on the batch, the
  cache's buckets and the canvas: one graph, compiled once per shape, reused for every prompt, canvas and step;
- a canvas's random numbers are drawn before its first step (the step itself needs no generator), by inverse CDF;
- the loop's only host read is whether every row has stopped, taken one step late on CUDA (`StopCheck`).

`DenoisingStep` compiles the step the first time a shape is seen, eager until then: on the CPU in a child process
(torch.export + AOTInductor, `engine.compiled_step`), on CUDA (and for models too large for a package) with
torch.compile in a background thread (CUDA graphs on CUDA). The artifacts stay in the compile cache on disk, so a
restart does not compile again.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from engine import compiled_step
from engine.cache import KVCache, SharedPrefixKV
from engine.config import GenerationConfig
from engine.generate import BatchOutput, StepEvent, batch_output, cancellation_check, finalize_canvas, row_counters
from engine.model import DiffusionGemma
from engine.kernels.head_sampler import fused_head_available, fused_head_sample
from engine.sampler import entropy_bound_acceptance, inverse_cdf_sample, temperature_schedule

log = logging.getLogger(__name__)


class StepState(NamedTuple):
    """What one denoising step hands the next, for every row of the batch."""

    canvas: torch.Tensor  # [B, C] the tokens the decoder reads
    argmax: torch.Tensor  # [B, C] the current best guess
    signal: torch.Tensor  # [B, C, H] softmax(previous tempered logits)·E: the self-conditioning signal
    sc_mask: torch.Tensor  # [B] 0 before the first step: no self-conditioning signal yet
    done: torch.Tensor  # [B] rows that stopped early (they keep their state)
    history: torch.Tensor  # [stability, B, C] the last argmax canvases, oldest first

    @classmethod
    def initial(cls, canvas: torch.Tensor, hidden: int, dtype: torch.dtype, stability: int) -> "StepState":
        batch, length = canvas.shape
        device = canvas.device
        # argmax is a copy: a step compiled for distinct tensors would recompile on aliased ones
        return cls(canvas, canvas.clone(), torch.zeros(batch, length, hidden, dtype=dtype, device=device),
                   torch.zeros(batch, dtype=dtype, device=device), torch.zeros(batch, dtype=torch.bool, device=device),
                   torch.full((stability, batch, length), -1, dtype=torch.long, device=device))


def denoising_step(model: DiffusionGemma, store: SharedPrefixKV, state: StepState, temperature: torch.Tensor,
                   uniform: torch.Tensor, seed: torch.Tensor, noise: torch.Tensor, entropy_bound: float,
                   confidence: float | None, fused_head: bool = False) -> tuple[StepState, torch.Tensor]:
    """One denoising step of every row; returns the next state and the positions whose sample was kept.

    The reference sampler: tempered logits, a sample per position, entropy-bound acceptance, fresh noise elsewhere,
    and (with `confidence`) a row stops once its argmax canvas repeats the last `stability` ones and its mean
    entropy is below `confidence`. A row that stopped keeps its canvas, argmax and self-conditioning signal.
    With `fused_head` (CUDA) the head and the sampler run fused over vocabulary tiles (engine.kernels.head_sampler:
    a Gumbel-max sample drawn from `seed`, no [C, V] logits); otherwise they sample by inverse CDF with `uniform`.
    """
    normed = model.decode_shared(state.canvas, store, state.signal, state.sc_mask)
    if fused_head:
        head = fused_head_sample(normed, model.embed_tokens.weight, model.config.final_logit_softcapping,
                                 temperature, seed)
        entropy, argmax, sample, signal = head.entropy, head.argmax, head.sample, head.self_conditioning
    else:
        logits = model.capped_logits(normed) / temperature
        probs = torch.softmax(logits, dim=-1)
        entropy = torch.special.entr(probs).sum(dim=-1)
        argmax, sample = logits.argmax(dim=-1), inverse_cdf_sample(probs, uniform)
        signal = probs.to(state.signal.dtype) @ model.embed_tokens.weight
    accepted = entropy_bound_acceptance(entropy, entropy_bound)
    canvas = torch.where(accepted, sample, noise)
    stopped = state.done[:, None]
    canvas = torch.where(stopped, state.canvas, canvas)
    argmax = torch.where(stopped, state.argmax, argmax)
    signal = torch.where(stopped[..., None], state.signal, signal.to(state.signal.dtype))
    done, history = state.done, state.history
    if confidence is not None:
        stable = (history == argmax[None]).all(dim=-1).all(dim=0)
        if history.shape[0]:
            history = torch.cat([history[1:], argmax[None]])
        done = done | (stable & (entropy.mean(dim=-1) < confidence))
    return StepState(canvas, argmax, signal, torch.ones_like(state.sc_mask), done, history), accepted


def compile_cache_dir() -> Path:
    """Where torch keeps compiled artifacts across restarts ($TORCHINDUCTOR_CACHE_DIR, else the user cache)."""
    configured = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "diffgemma-lsp" / "torch-compile"


def use_compile_cache_dir() -> None:
    """Point torch's compile caches at `compile_cache_dir()` unless the user chose a directory. Early: torch fixes
    the directory the first time it needs one (loading a checkpoint already does), in /tmp by default, which a
    reboot empties."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))


class DenoisingStep:
    """`denoising_step` for one model: compiled per input shape (static shapes), eager until then.

    A shape is compiled the first time it is met (`Engine.warm_up` meets it at load) and calls run eagerly until it
    is ready, so compiling never stalls a request:
    - on the CPU, ahead of time in a child process (`engine.compiled_step`: torch.export + AOTInductor, one package
      per model and shape in the compile cache, loaded by a background thread). Nothing is traced in this process,
      which torch.compile would do with process-wide effects on the threads serving requests;
    - otherwise by torch.compile in a background thread of this process, with those effects: on CUDA (replayed as
      CUDA graphs, which need it), for models of over `compiled_step.PACKAGED_WEIGHTS_LIMIT` bytes of weights
      (a package holds a copy) and with `ahead_of_time=False`. While it compiles every call is eager, so only one
      thread is ever inside torch.compile.
    `compile=False` is always eager.
    """

    def __init__(self, model: DiffusionGemma, compile: bool, fused_head: bool = False,
                 ahead_of_time: bool | None = None):
        self.model = model
        self.compile = compile
        # The fused head + sampler kernel is opt-in until a GPU measures it: by its own estimate its per-program
        # self-conditioning accumulators move more bytes than the unfused chain at canvas 256.
        if fused_head and not fused_head_available(model.embed_tokens.weight.device):
            raise ValueError("the fused head + sampler kernel needs CUDA and triton")
        self.fused_head = fused_head
        self._runs: dict[tuple, Callable] = {}  # the compiled step of each ready shape
        self._compiled = None  # in-process: the torch.compile'd step, shared by every shape
        self._failed: set[tuple] = set()
        self._compiling: threading.Thread | None = None
        self._child: subprocess.Popen | None = None  # the last child that compiled a package
        self._weights_digest: str | None = None
        self._lock = threading.Lock()
        self.compile_seconds: dict[tuple, float] = {}
        on_cuda = model.embed_tokens.weight.device.type == "cuda"
        # By device unless told: CUDA graphs need torch.compile in this process, so packages are for the CPU only,
        # and for models whose weights a package can copy (it holds them as constants).
        self.ahead_of_time = (compile and not on_cuda and ahead_of_time is not False
                              and compiled_step.weight_bytes(model) <= compiled_step.PACKAGED_WEIGHTS_LIMIT)
        self.cuda_graphs = compile and on_cuda
        if compile:
            use_compile_cache_dir()

    def eager(self, *args) -> tuple[StepState, torch.Tensor]:
        return denoising_step(self.model, *args, fused_head=self.fused_head)

    def __call__(self, store: SharedPrefixKV, state: StepState, *args) -> tuple[StepState, torch.Tensor]:
        if not self.compile:
            return self.eager(store, state, *args)
        key = _shape_key(store, state, args)
        with self._lock:
            run = self._runs.get(key) if self.ahead_of_time or self._compiling is None else None
            if key not in self._runs and key not in self._failed and self._compiling is None:
                self._start_compiling(key, store, state, args)
        if run is not None:
            try:
                if self.cuda_graphs:  # the previous step's outputs are this step's inputs; older ones are dropped
                    torch.compiler.cudagraph_mark_step_begin()
                return run(store, state, *args)
            except Exception:  # e.g. a CUDA graph that cannot be recorded: this shape runs eagerly from now on
                log.exception("the compiled denoising step failed; serving this shape eagerly")
                with self._lock:
                    self._runs.pop(key, None)
                    self._failed.add(key)
        return self.eager(store, state, *args)

    @property
    def compiling(self) -> bool:
        return self._compiling is not None

    def wait(self, timeout: float | None = None) -> None:
        """Block until the compilation in flight (if any) has finished."""
        thread = self._compiling
        if thread is not None:
            thread.join(timeout)

    def _start_compiling(self, key: tuple, store: SharedPrefixKV, state: StepState, args: tuple) -> None:
        copies = _clone((store, state, args))  # the request goes on with its own tensors
        # OpenMP keeps its thread count per thread, and the compiled kernels are built for a thread count: the
        # caller's, not the default of every core.
        threads = torch.get_num_threads()
        target = self._compile_ahead if self.ahead_of_time else self._compile_here
        thread = threading.Thread(target=self._compile, args=(target, key, copies, threads),
                                  name="diffgemma-compile", daemon=True)
        self._compiling = thread
        thread.start()
        if not self.ahead_of_time:
            # A process that ends while torch compiles on a daemon thread aborts ("terminate called without an
            # active exception"): a normal interpreter exit waits for the compilation instead (os._exit does not).
            atexit.register(thread.join)

    def _compile(self, target: Callable, key: tuple, copies, threads: int) -> None:
        started = time.perf_counter()
        try:
            run = target(key, copies, threads)
        except Exception:  # a failed compilation leaves that shape eager, never the request broken
            if threading.main_thread().is_alive():  # (at interpreter exit, compiling fails by design: no report)
                log.exception("compiling the denoising step failed; serving this shape eagerly")
            with self._lock:
                self._failed.add(key)
                self._compiling = None
            return
        with self._lock:
            self.compile_seconds[key] = time.perf_counter() - started
            self._runs[key] = run
            self._compiling = None

    def _compile_ahead(self, key: tuple, copies, threads: int) -> Callable:
        """The CPU: the package from the compile cache, compiled first by a child process if it is not there."""
        if self._weights_digest is None:
            self._weights_digest = compiled_step.weights_digest(self.model)
        package = compiled_step.package_path(compile_cache_dir(), self.model, self._weights_digest, key, threads)
        run = None
        if package.exists():
            try:
                run = compiled_step.load(package)
            except Exception:  # cut short by a full disk, or pruned by another process: compiled again below
                log.warning("the cached compiled step %s could not be loaded; compiling it again", package,
                            exc_info=True)
                package.unlink(missing_ok=True)
        if run is None:
            store, state, args = copies
            compiled_step.compile_in_child(self.model, denoising_step, (store, state, *args), threads, package,
                                           started=self._record_child)
            run = compiled_step.load(package)

        def compiled(store: SharedPrefixKV, state: StepState, *args) -> tuple[StepState, torch.Tensor]:
            *next_state, accepted = run((store, state, *args))
            return StepState(*next_state), accepted

        return compiled

    def _record_child(self, child: subprocess.Popen) -> None:
        self._child = child

    def _compile_here(self, key: tuple, copies, threads: int) -> Callable:
        """torch.compile on this (background) thread; on CUDA recorded as CUDA graphs on its first runs."""
        torch.set_num_threads(threads)
        if self._compiled is None:
            # The step mutates none of its inputs (engine.cache.SharedPrefixKV.attend) and its shapes are static.
            self._compiled = torch.compile(self.eager, fullgraph=True, dynamic=False,
                                           mode="reduce-overhead" if self.cuda_graphs else None)
        store, state, args = copies
        with torch.inference_mode():
            self._compiled(store, state, *args)
        return self._compiled


def _shape_key(store: SharedPrefixKV, state: StepState, args: tuple) -> tuple:
    shapes = tuple(tuple(t.shape) for t in (*store.prefix_keys, *store.tail_keys, state.signal, state.history))
    return shapes, tuple(a for a in args if not isinstance(a, torch.Tensor))


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_clone(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


class StopCheck:
    """Whether every row has stopped, read without stalling the device.

    On CUDA the host reads the previous step's flag (copied to pinned memory behind that step), so it queues step
    k+1 before it knows step k's answer: at most one extra step runs, and rows that stopped ignore it. On the CPU
    there is no device to wait for, and the current flag is read.
    """

    def __init__(self, device: torch.device):
        self.lagged = device.type == "cuda"
        self._pending: tuple[torch.Tensor, torch.cuda.Event] | None = None

    def __call__(self, done: torch.Tensor) -> bool:
        if not self.lagged:
            return bool(done.all())
        flag = done.all().to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        previous, self._pending = self._pending, (flag, event)
        if previous is None:
            return False
        previous[1].synchronize()
        return bool(previous[0])


def generate_shared(
    model: DiffusionGemma,
    cache: KVCache,
    prompt_length: int,
    batch: int,
    config: GenerationConfig,
    generator: torch.Generator,
    step: DenoisingStep,
    on_step: Callable[[StepEvent], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> BatchOutput:
    """Serving mode's `generate_blocks`: `batch` rows after the first `prompt_length` positions of `cache` (batch 1,
    never written: each row's committed canvases go to its own tail)."""
    device = cache.device
    vocab, canvas_length = model.config.vocab_size, model.config.canvas_length
    blocks = math.ceil(config.max_new_tokens / canvas_length)
    steps = config.max_denoising_steps
    store = SharedPrefixKV.over(cache, prompt_length, batch, blocks * canvas_length)
    if config.t_min is not None and config.t_max is not None:
        temperatures = temperature_schedule(steps, config.t_min, config.t_max, device)
    else:
        temperatures = torch.ones(steps, device=device)
    stops = config.stability_threshold is not None and config.confidence_threshold is not None
    stability = config.stability_threshold if stops else 0
    confidence = config.confidence_threshold if stops else None
    eos = torch.tensor(config.eos_token_id, device=device) if config.eos_token_id else None
    sc_dtype = model.embed_tokens.weight.dtype

    check_cancelled = cancellation_check(cancelled)
    finished, forwards_per_row, committed = row_counters(batch, device)
    decoder_forwards = 0
    encoder_seconds = decoder_seconds = 0.0
    for block in range(blocks):
        check_cancelled()
        if committed:
            started = time.perf_counter()
            model.encode_shared(committed[-1], store)
            store = store._replace(tail_length=store.tail_length + canvas_length)
            encoder_seconds += time.perf_counter() - started

        started = time.perf_counter()
        shape = (batch, canvas_length)
        state = StepState.initial(torch.randint(0, vocab, shape, device=device, generator=generator),
                                  model.config.hidden_size, sc_dtype, stability)
        uniforms = torch.rand((steps, *shape), device=device, generator=generator)
        seeds = torch.randint(0, 2**31 - 1, (steps,), device=device, generator=generator)
        noises = torch.randint(0, vocab, (steps, *shape), device=device, generator=generator)
        all_stopped = StopCheck(device)
        for index in range(steps):
            check_cancelled()
            forwards_per_row += ~(state.done | finished)
            decoder_forwards += 1
            state, accepted = step(store, state, temperatures[index], uniforms[index], seeds[index], noises[index],
                                   config.entropy_bound, confidence)
            if on_step is not None:
                on_step(StepEvent(block, index + 1, steps, state.argmax, accepted, state.done))
            if all_stopped(state.done):
                break
        decoder_seconds += time.perf_counter() - started

        block_tokens = state.argmax.clone()
        finished = finalize_canvas(block_tokens, finished, eos, config.pad_token_id)
        committed.append(block_tokens)
        if bool(finished.all()):
            break

    return batch_output(committed, forwards_per_row, config.pad_token_id, decoder_forwards, encoder_seconds,
                        decoder_seconds)
