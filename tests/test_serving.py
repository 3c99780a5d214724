"""Serving mode (engine.serving): the windowed prompt cache, the shared-prefix store, the static-shape step.

The prompt cache's sliding layers keep a bounded window and must give the bits of a cache that keeps everything;
serving mode's store reads that cache in place for every row and must give exact mode's logits within float
rounding, with a sliding window shorter than the prompt and over several canvases; its denoising step must be one
graph that is never recompiled across steps, canvases and prompt lengths within a bucket.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from checkpoints import _initialise, tiny_config
from engine.cache import KVCache, SharedPrefixKV, capacity_bucket
from engine.config import FULL, SLIDING, GenerationConfig
from engine.engine import PROMPT_CHUNK, Engine
from engine.model import DiffusionGemma
from engine.serving import DenoisingStep, StepState, denoising_step

WINDOW = 16
VOCAB = 96
CANVAS = 8


@pytest.fixture(scope="module")
def model() -> DiffusionGemma:
    config = replace(tiny_config(VOCAB, canvas_length=CANVAS, num_layers=3), sliding_window=WINDOW,
                     layer_types=(SLIDING, SLIDING, FULL))
    built = DiffusionGemma(config)
    _initialise(built, seed=0)
    built.fuse_projections()
    return built.eval()


def ids(length: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def generation(**overrides) -> GenerationConfig:
    settings = dict(max_new_tokens=CANVAS, max_denoising_steps=4, eos_token_id=(1,), pad_token_id=0,
                    t_min=0.4, t_max=0.8, entropy_bound=0.1)
    return GenerationConfig(**{**settings, **overrides})


def test_capacity_buckets_are_powers_of_two():
    assert [capacity_bucket(n) for n in (0, 1, 256, 257, 600, 1024, 1025)] == [256, 256, 256, 512, 1024, 1024, 2048]


@torch.inference_mode()
def test_sliding_layers_compact_and_give_the_bits_of_a_cache_that_keeps_everything(model):
    """35 canvases after a 21-token prompt: the sliding buffers compact (their oldest positions go) and every
    canvas's logits are bit-identical to a cache without windows."""
    windowed = model.new_cache()
    keep_all = KVCache(1, model.cache_geometries(), torch.float32, torch.device("cpu"))
    to_encode = ids(21, seed=1)
    for block in range(35):
        canvas = ids(CANVAS, seed=100 + block)
        outputs = []
        for cache in (windowed, keep_all):
            cache.reserve(to_encode.shape[1] + CANVAS)
            model.encode(to_encode, cache.length, cache)
            cache.length += to_encode.shape[1]
            outputs.append(model.decode(canvas, cache.length, cache, None))
        assert torch.equal(outputs[0], outputs[1]), f"canvas {block}"
        to_encode = canvas
    sliding = [layer for layer, window in enumerate(windowed.windows) if window is not None]
    assert sliding and all(windowed.bases[layer] > 0 for layer in sliding)
    assert all(windowed.keys[layer].shape[2] < keep_all.keys[layer].shape[2] for layer in sliding)
    # A crop back within the retained margin still works; one past the dropped positions does not.
    assert windowed.can_crop(windowed.length - WINDOW) and not windowed.can_crop(WINDOW)
    with pytest.raises(ValueError, match="cannot crop"):
        windowed.crop(WINDOW)


def test_a_prompt_diverging_before_the_window_is_encoded_again(model):
    """The engine's shared-prefix reuse falls back to a full encode when the sliding layers no longer hold the
    shared part: the tokens are those of a fresh engine."""
    long_prompt = ids(PROMPT_CHUNK + 100, seed=2)[0].tolist()  # two chunks: the sliding layers compact
    diverging = long_prompt[:40] + ids(30, seed=3)[0].tolist()
    reused = Engine(model, generation(), mode="serving")
    reused.generate(long_prompt, seed=0)
    assert not reused._prefix_cache.can_crop(40)
    again = reused.generate(diverging, seed=5)
    fresh = Engine(model, generation(), mode="serving").generate(diverging, seed=5)
    assert again.encoded_prompt_tokens == len(diverging) and again.tokens == fresh.tokens


@pytest.mark.parametrize("prompt_length", [5, 21, 40])
@torch.inference_mode()
def test_shared_prefix_store_gives_exact_modes_logits(model, prompt_length):
    """Three rows over one batch-1 prompt cache (never copied) against exact mode's per-row copy: the decoder with
    and without self-conditioning, a committed canvas, and the next canvas, with prompts shorter and longer than the
    window."""
    batch = 3
    cache = model.new_cache()
    cache.reserve(prompt_length)
    model.encode(ids(prompt_length, seed=4), 0, cache)
    cache.length = prompt_length
    exact = cache.expanded(batch, 2 * CANVAS)
    store = SharedPrefixKV.over(cache, prompt_length, batch, 2 * CANVAS)
    prefix_before = [k.clone() for k in cache.keys]

    def shared_logits(canvas, store, sc_logits):
        if sc_logits is None:
            signal, mask = torch.zeros(batch, CANVAS, model.config.hidden_size), torch.zeros(batch)
        else:
            signal, mask = model.self_conditioning_signal(sc_logits), torch.ones(batch)
        return model.capped_logits(model.decode_shared(canvas, store, signal, mask))

    canvas = ids(CANVAS, seed=5, batch=batch)
    first = model.decode(canvas, prompt_length, exact, None)
    torch.testing.assert_close(shared_logits(canvas, store, None), first, rtol=0, atol=2e-5)
    second = model.decode(canvas, prompt_length, exact, first)
    torch.testing.assert_close(shared_logits(canvas, store, first), second, rtol=0, atol=2e-5)

    model.encode(canvas, prompt_length, exact)
    exact.length += CANVAS
    hidden = model.encode_shared(canvas, store)
    store = store._replace(tail_length=store.tail_length + CANVAS)
    assert hidden.shape == (batch, CANVAS, model.config.hidden_size)
    following = ids(CANVAS, seed=6, batch=batch)
    torch.testing.assert_close(shared_logits(following, store, second),
                               model.decode(following, prompt_length + CANVAS, exact, second), rtol=0, atol=2e-5)
    assert all(torch.equal(before, after) for before, after in zip(prefix_before, cache.keys))


@pytest.mark.parametrize("causal", [False, True])
@torch.inference_mode()
def test_the_store_hands_flash_attention_the_same_rules_as_positions(model, causal):
    """What runs on CUDA (key positions for the flash kernel; here its torch reference) against the masks."""
    batch, layers = 2, range(model.config.num_layers)
    cache = model.new_cache()
    cache.reserve(40)
    model.encode(ids(40, seed=14), 0, cache)
    cache.length = 40
    store = SharedPrefixKV.over(cache, 33, batch, 2 * CANVAS)
    model.encode_shared(ids(CANVAS, seed=15, batch=batch), store)
    store = store._replace(tail_length=store.tail_length + CANVAS)
    generator = torch.Generator().manual_seed(16)
    for layer in layers:
        kv_heads, head_dim = cache.geometries[layer]
        q = torch.randn(batch, 4, CANVAS, head_dim, generator=generator)
        k, v = (torch.randn(batch, kv_heads, CANVAS, head_dim, generator=generator) for _ in range(2))
        outputs = []
        for by_positions in (False, True):
            tails = [t.clone() for t in store.tail_keys], [t.clone() for t in store.tail_values]
            trial = store._replace(tail_keys=tails[0], tail_values=tails[1])
            outputs.append(trial.attend(layer, "", q, k, v, causal=causal, by_positions=by_positions))
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)


def test_serving_and_exact_modes_score_candidates_alike(model):
    """The reranker's likelihoods: rows over the shared prompt cache vs exact mode's copies."""
    prompt = ids(30, seed=7)[0].tolist()
    candidates = [ids(n, seed=8 + n)[0].tolist() for n in (1, 4, 9)]
    exact = Engine(model, generation(), mode="exact").continuation_log_likelihoods(prompt, candidates)
    serving = Engine(model, generation(), mode="serving").continuation_log_likelihoods(prompt, candidates)
    assert serving == pytest.approx(exact, abs=1e-4)


def test_serving_generation_is_reproducible_and_ends_at_eos(model):
    eng = Engine(model, generation(max_new_tokens=3 * CANVAS), mode="serving")
    prompt = ids(25, seed=9)[0].tolist()
    first = eng.generate(prompt, seed=11, num_candidates=3)
    assert eng.generate(prompt, seed=11, num_candidates=3).candidates == first.candidates
    assert len(first.candidates) == 3 and all(len(row) % CANVAS == 0 for row in first.candidates)
    for row in first.candidates:  # everything after a row's first EOS is padding
        if 1 in row:
            assert all(token == 0 for token in row[row.index(1) + 1:])
    assert eng._prefix_cache.length == len(prompt)  # the rows committed their canvases to their own tails


def _step_inputs(model: DiffusionGemma, cache: KVCache, prompt_length: int, batch: int, seed: int):
    store = SharedPrefixKV.over(cache, prompt_length, batch, 2 * CANVAS)
    generator = torch.Generator().manual_seed(seed)
    canvas = torch.randint(0, VOCAB, (batch, CANVAS), generator=generator)
    state = StepState.initial(canvas, model.config.hidden_size, torch.float32, stability=1)
    return store, state, generator


def _draws(generator: torch.Generator, batch: int):
    return (torch.tensor(0.7), torch.rand(batch, CANVAS, generator=generator), torch.tensor(3),
            torch.randint(0, VOCAB, (batch, CANVAS), generator=generator), 0.1, 0.005)


@torch.inference_mode()
def test_the_denoising_step_is_one_graph_never_recompiled(model):
    """torch.compile (dynamo, fullgraph) sees one graph without breaks, and with recompiles made errors the same
    compiled step runs every step of two canvases of three prompts of different lengths in one bucket."""
    import torch._dynamo

    cache = model.new_cache()
    cache.reserve(200)
    model.encode(ids(60, seed=12), 0, cache)
    cache.length = 60
    store, state, generator = _step_inputs(model, cache, 60, 2, seed=0)

    def step(store, state, *draws):
        return denoising_step(model, store, state, *draws)

    explanation = torch._dynamo.explain(step)(store, state, *_draws(generator, 2))
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="eager", fullgraph=True, dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for prompt_length in (60, 17, 44):
            store, state, generator = _step_inputs(model, cache, prompt_length, 2, seed=prompt_length)
            for block in range(2):
                if block:
                    model.encode_shared(state.argmax, store)
                    store = store._replace(tail_length=store.tail_length + CANVAS)
                    state = StepState.initial(state.argmax, model.config.hidden_size, torch.float32, stability=1)
                for _ in range(3):
                    state, accepted = compiled(store, state, *_draws(generator, 2))
    assert accepted.dtype == torch.bool and state.done.shape == (2,)
    torch._dynamo.reset()


def _compile_inputs(model: DiffusionGemma):
    cache = model.new_cache()
    cache.reserve(40)
    model.encode(ids(40, seed=13), 0, cache)
    cache.length = 40
    store, state, generator = _step_inputs(model, cache, 40, 1, seed=1)
    return store, state, _draws(generator, 1)


def _assert_matches_eager(compiled: StepState, eager: StepState) -> None:
    torch.testing.assert_close(compiled.signal, eager.signal, rtol=1e-4, atol=1e-4)
    assert (compiled.argmax == eager.argmax).float().mean() > 0.9


@torch.inference_mode()
def test_the_step_compiles_in_a_child_process_and_matches_eager(model, tmp_path, monkeypatch):
    """A real AOTInductor compilation in a child process: calls are eager until it is ready, then the package's,
    with the eager step's tokens and logits within float rounding. Meanwhile this process traces nothing and its
    eager calls keep their bits; a restart loads the package without compiling; a model of the same shape with
    other weights gets its own package, not the cached one."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    packages = tmp_path / "inductor" / "aot-steps"
    step = DenoisingStep(model, compile=True)
    store, state, draws = _compile_inputs(model)
    eager, _ = step.eager(store, state, *draws)
    traced = dict(counters["stats"])
    first, _ = step(store, state, *draws)  # starts compiling; this call ran eagerly
    during = []
    while step.compiling:
        during.append(step(store, state, *draws)[0])
        time.sleep(0.05)
    assert step._child.returncode == 0 and list(step.compile_seconds.values())[0] > 0
    assert dict(counters["stats"]) == traced  # nothing was traced in this process
    assert during and all(torch.equal(s.signal, eager.signal) for s in [first, *during])
    compiled, _ = step(store, state, *draws)
    _assert_matches_eager(compiled, eager)
    assert len(list(packages.glob("*.pt2"))) == 1
    mapped = [line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "aotinductor_" in line]
    assert mapped and not any(Path(library).exists() for library in mapped)  # no unpacked copy left on disk

    restarted = DenoisingStep(model, compile=True)
    restarted(store, state, *draws)
    restarted.wait(timeout=60)
    assert restarted._child is None  # loaded from the cache
    assert torch.equal(restarted(store, state, *draws)[0].signal, compiled.signal)

    other = copy.deepcopy(model)
    for parameter in other.parameters():
        parameter.mul_(-1.5)
    other_step = DenoisingStep(other, compile=True)
    other_eager, _ = other_step.eager(store, state, *draws)
    other_step(store, state, *draws)
    other_step.wait(timeout=600)
    other_compiled, _ = other_step(store, state, *draws)
    assert other_step._child is not None and len(list(packages.glob("*.pt2"))) == 2
    assert not torch.allclose(other_eager.signal, eager.signal, atol=1e-2)
    _assert_matches_eager(other_compiled, other_eager)


def test_only_models_a_package_can_hold_compile_ahead_of_time(model, monkeypatch):
    from engine import compiled_step

    assert DenoisingStep(model, compile=True).ahead_of_time
    monkeypatch.setattr(compiled_step, "PACKAGED_WEIGHTS_LIMIT", compiled_step.weight_bytes(model) - 1)
    assert not DenoisingStep(model, compile=True).ahead_of_time  # compiled in this process instead
    assert not DenoisingStep(model, compile=False).ahead_of_time


@torch.inference_mode()
def test_the_step_compiles_in_a_thread_where_asked(model, tmp_path, monkeypatch):
    """The in-process path (CUDA's, for its CUDA graphs): torch.compile on a background thread, eager until ready."""
    import torch._dynamo

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    step = DenoisingStep(model, compile=True, ahead_of_time=False)
    store, state, draws = _compile_inputs(model)
    eager, _ = step.eager(store, state, *draws)
    first, _ = step(store, state, *draws)
    step.wait(timeout=600)
    assert step._child is None and step.compile_seconds and torch.equal(first.canvas, eager.canvas)
    _assert_matches_eager(step(store, state, *draws)[0], eager)
    torch._dynamo.reset()


CHILD_OUTLIVES_NO_PARENT = """
import os, sys, time, torch
sys.path.insert(0, {tests!r})
from test_serving import _compile_inputs, model as build
from engine.serving import DenoisingStep
step = DenoisingStep(build.__wrapped__(), compile=True)
with torch.inference_mode():
    step(*_compile_inputs(step.model)[:2], *_compile_inputs(step.model)[2])
    while step._child is None:
        time.sleep(0.05)
print(step._child.pid, flush=True)
os._exit(0)  # no atexit handlers: as if killed
"""


def test_a_compiling_child_ends_with_its_parent(tmp_path):
    """The child compiling a package stops when the serving process is gone, however it ended."""
    script = CHILD_OUTLIVES_NO_PARENT.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)})
    child = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 30  # the child may still be importing torch under load
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(child), "the compiling child outlived its parent"
    assert not list(tmp_path.glob("aot-steps/*"))  # no package, no request or part of one left behind


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_compile_cache_keeps_the_packages_used_last(tmp_path):
    from engine.compiled_step import KEPT_PACKAGES, prune

    packages = [tmp_path / f"step-{index:02d}.pt2" for index in range(KEPT_PACKAGES + 3)]
    for age, package in enumerate(packages):  # packages[0] was used last
        package.write_bytes(b"package")
        os.utime(package, (1_000_000 - age, 1_000_000 - age))
    in_the_making = [tmp_path / "step-99.1234.partial.pt2", tmp_path / "request-abc.pt", tmp_path / "step-99.lock"]
    left_by_killed_children = [tmp_path / "step-98.1233.partial.pt2", tmp_path / "request-def.pt",
                               tmp_path / "step-98.lock"]
    for leftover in [*in_the_making, *left_by_killed_children]:
        leftover.write_bytes(b"")
    for leftover in left_by_killed_children:
        os.utime(leftover, (time.time() - 2 * 24 * 3600,) * 2)
    prune(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted([*packages[:KEPT_PACKAGES], *in_the_making])
