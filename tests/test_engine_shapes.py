"""Bounded GEMM shapes in bf16 on the CPU: the memory stays flat across prompts, and the numbers stay the model's.

oneDNN compiles and keeps a kernel for every bf16 GEMM shape it sees (about a megabyte each, never freed), so a
server whose prompt lengths and expert group sizes change with every request grew by hundreds of MB. The serving
engine encodes prompts in whole buckets (engine.PROMPT_BUCKET) and pads expert groups (GROUP_ROWS); fp32 keeps the
exact, unpadded path the exactness tests pin to the reference.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import engine
import engine.kernels.moe as moe
from checkpoints import cached_checkpoint
from engine.engine import PROMPT_BUCKET

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random")


def test_bf16_memory_stays_flat_across_200_prompt_lengths(checkpoint):
    """Before the buckets this grew by about 600 MB (677 -> 1302 MB); now by a few tens at most."""
    probe = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import engine

        def rss_mb():
            line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024

        eng = engine.load({str(checkpoint)!r}, device="cpu", dtype="bfloat16")
        ids = list(range(7, 400))
        for n in range(1, 241):  # a new length each time, and no shared prefix with the previous prompt
            eng.generate([2, 3 + n % 2] + ids[:n], seed=n)
            if n == 40:
                warm = rss_mb()
        print(warm, rss_mb())
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, cwd=TESTS.parent)
    assert result.returncode == 0, result.stderr
    warm, final = map(float, result.stdout.split())
    assert final - warm < 100, f"RSS grew from {warm:.0f} to {final:.0f} MB over 200 prompt lengths"


def test_bucketed_encoding_keeps_the_real_positions(checkpoint):
    eng = engine.load(checkpoint, device="cpu", dtype="bfloat16")
    assert eng._bucket_prompts
    exact = engine.load(checkpoint, device="cpu", dtype="bfloat16")
    exact._bucket_prompts = False
    ids = [2, 3] + list(range(7, 7 + 45))  # 47 tokens: not a whole bucket
    for prompt in (ids, ids + [60, 61, 62]):  # then one sharing a prefix that ends mid-bucket
        eng._encode_prompt(prompt)
        exact._encode_prompt(prompt)
        assert eng._prefix_cache.length == exact._prefix_cache.length == len(prompt)
        for layer in range(len(eng.model.layers)):
            bucketed, plain = eng._prefix_cache.span(layer, 0, len(prompt)), exact._prefix_cache.span(layer, 0, len(prompt))
            for a, b in zip(bucketed, plain):
                torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=3e-2)
    assert len(ids) % PROMPT_BUCKET and eng.generate(ids, seed=0).tokens  # generation runs on the bucketed cache


def test_float32_keeps_the_exact_unbucketed_path(checkpoint):
    eng = engine.load(checkpoint, device="cpu", dtype="float32")
    assert not eng._bucket_prompts
    assert not moe.bounded_gemm_shapes(torch.zeros(2, 2)) and moe.bounded_gemm_shapes(torch.zeros(2, 2).bfloat16())


@pytest.mark.parametrize("tokens", [1, 5, 33])
def test_padded_expert_groups_give_the_unpadded_result(tokens, monkeypatch):
    generator = torch.Generator().manual_seed(tokens)
    experts, hidden, width, top_k = 4, 32, 24, 2
    x = torch.randn(tokens, hidden, generator=generator).bfloat16()
    gate_up = torch.randn(experts, 2 * width, hidden, generator=generator).bfloat16() / 4
    down = torch.randn(experts, hidden, width, generator=generator).bfloat16() / 4
    index = torch.randint(0, experts, (tokens, top_k), generator=generator)
    weights = torch.rand(tokens, top_k, generator=generator)
    padded = moe.moe_experts(x, gate_up, down, index, weights)
    monkeypatch.setattr(moe, "bounded_gemm_shapes", lambda rows: False)
    plain = moe.moe_experts(x, gate_up, down, index, weights)
    assert padded.shape == plain.shape == (tokens, hidden)
    torch.testing.assert_close(padded.float(), plain.float(), atol=2e-2, rtol=2e-2)


def test_expert_routing_is_one_graph_without_host_syncs():
    """Group ends by searchsorted, not bincount (whose output size depends on the data): torch.compile traces the
    routing as one graph, and the ends equal the per-expert counts' running sum."""
    index = torch.randint(0, 4, (6, 2), generator=torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(moe.sort_by_expert)(index, 4)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons
    sorted_experts, order, ends = moe.sort_by_expert(index, 4)
    assert ends.dtype == torch.int32 and torch.equal(sorted_experts, index.reshape(-1)[order])
    assert ends.tolist() == torch.bincount(index.reshape(-1), minlength=4).cumsum(0).tolist()


def fp32_experts(tokens: int = 5):
    generator = torch.Generator().manual_seed(tokens)
    experts, hidden, width, top_k = 4, 128, 64, 2  # wide enough that the two paths round differently
    return (torch.randn(tokens, hidden, generator=generator), torch.randn(experts, 2 * width, hidden, generator=generator),
            torch.randn(experts, hidden, width, generator=generator),
            torch.randint(0, experts, (tokens, top_k), generator=generator), torch.rand(tokens, top_k, generator=generator))


def test_fp32_experts_trace_as_one_graph():
    """Traced, fp32 experts take the all-experts product (the eager loop reads group sizes on the host)."""
    args = fp32_experts()
    explanation = torch._dynamo.explain(moe.moe_experts)(*args)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


def test_eager_experts_keep_their_path_while_another_thread_compiles():
    """torch holds `torch.compiler.is_compiling()` True process-wide for a whole compile session (what dynamo enters
    on the compiling thread), so the serving step's background compile made every eager call take the traced
    path: exact-mode logits then differed from the reference's in the last bits. Only dynamo's own trace may."""
    args = fp32_experts()
    eager = moe.moe_experts(*args)
    with torch.compiler._compile_session_context():
        assert torch.compiler.is_compiling()  # what eager code on any thread sees during a compile
        during = moe.moe_experts(*args)
    assert torch.equal(during, eager)


def test_a_bf16_denoising_step_traces_as_one_graph(checkpoint):
    """No host reads inside the decoder forward (routing by searchsorted, expert groups padded into a buffer of the
    largest size the padding can take): torch.compile sees one graph, the precondition of a compiled serving step."""
    eng = engine.load(checkpoint, device="cpu", dtype="bfloat16")
    model, canvas_length = eng.model, eng.config.canvas_length
    eng.prefill(list(range(3, 40)))
    cache = eng._prefix_cache.expanded(1, canvas_length)
    tables = model.canvas_rotary(cache.length, canvas_length, eng.device)
    canvas = torch.randint(0, eng.config.vocab_size, (1, canvas_length), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        sc_logits = model.decode(canvas, cache.length, cache, None, tables)
        explanation = torch._dynamo.explain(model.decode)(canvas, cache.length, cache, sc_logits, tables)
        again = model.decode(canvas, cache.length, cache, sc_logits, tables)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons
    assert torch.isfinite(again.float()).all()
