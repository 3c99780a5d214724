"""Quantised experts in checkpoints (engine/loader.py, engine/quantized.py): quantising while loading, the
pre-quantised layout and its round trip, loader errors, and the released model's weight memory per precision."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import engine
from checkpoints import cached_checkpoint
from engine.config import load_configs, parse_model_config
from engine.kernels.quantize import SCHEMES
from engine import loader
from engine.loader import SINGLE_FILE, build_model, save_quantized_checkpoint
from engine.quantized import QuantizedExperts, memory_table
from test_released_config import RELEASED, TOTAL_ELEMENTS

CPU = torch.device("cpu")
SCALES = "model.decoder.layers.0.experts.down_proj.scales"


class NoPrefix:
    """A store with no cached prefix: the decoder attends over the canvas alone."""

    def decoder_keys_values(self, layer, keys, values, first_key):
        return keys, values


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    # hidden 128: the experts' reduction dims are 128 and 64, divisible by both int4 group sizes.
    return cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random", hidden_size=128)


@pytest.fixture(scope="module")
def config(dense_dir):
    return load_configs(dense_dir)[0]


@pytest.fixture(scope="module")
def ids(config):
    return torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))


def logits(model, ids):
    with torch.inference_mode():
        return model.decode(ids, 0, NoPrefix(), None)


def packed(model):
    return {name: t for name, t in model.state_dict().items() if name.endswith((".qweight", ".scales"))}


@pytest.fixture(scope="module")
def prequantised(dense_dir, config, tmp_path_factory):
    """scheme -> (directory of the pre-quantised checkpoint, the model quantised on load that wrote it)."""
    saved = {}
    for scheme in SCHEMES:
        model = build_model(config, dense_dir, torch.bfloat16, CPU, quantization=scheme)
        directory = tmp_path_factory.mktemp(scheme)
        save_quantized_checkpoint(model, directory, load_configs(dense_dir)[1], scheme)
        shutil.copy(dense_dir / "tokenizer.json", directory)
        saved[scheme] = (directory, model)
    return saved


# Max |logit difference| to the bf16 model (bf16 activations, logits std ~0.23): quantisation error on top of bf16
# noise (the bf16 and fp32 models themselves differ by ~0.03). Measured ~0.006 for every scheme.
LOGIT_TOLERANCE = 0.02
# Relative L2 error of one layer's expert output (fp32 activations, routed through all experts), where
# quantisation shows undiluted: measured int4-g32 0.18, int4-g64 0.20, fp8 0.044 on N(0, 0.02) weights.
EXPERT_TOLERANCE = {"int4-g32": 0.25, "int4-g64": 0.3, "fp8": 0.07}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantised_model_is_close_to_the_bf16_one(dense_dir, config, ids, scheme):
    dense = build_model(config, dense_dir, torch.bfloat16, CPU)
    model = build_model(config, dense_dir, torch.bfloat16, CPU, quantization=scheme)
    assert all(isinstance(layer.experts, QuantizedExperts) for layer in model.layers)
    difference = (logits(model, ids) - logits(dense, ids)).abs().max()
    assert 0 < difference < LOGIT_TOLERANCE

    dense32 = build_model(config, dense_dir, torch.float32, CPU)
    model32 = build_model(config, dense_dir, torch.float32, CPU, quantization=scheme)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(33, config.hidden_size, generator=generator)
    index = torch.rand(33, config.num_experts, generator=generator).argsort(dim=-1)[:, :2]
    router = torch.rand(33, 2, generator=generator)
    with torch.inference_mode():
        reference = dense32.layers[0].experts(x, router, index)
        relative = (model32.layers[0].experts(x, router, index) - reference).norm() / reference.norm()
    assert 0 < relative < EXPERT_TOLERANCE[scheme]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_prequantised_checkpoint_round_trips(prequantised, config, ids, scheme):
    directory, quantised_on_load = prequantised[scheme]
    entry = json.loads((directory / "config.json").read_text())["quantization_config"]
    assert entry["scheme"] == scheme and entry["quant_method"] == "diffgemma-experts"
    stored = load_file(str(directory / SINGLE_FILE))
    assert "model.decoder.layers.0.experts.gate_up_proj" not in stored
    assert {"model.decoder.layers.1.experts.gate_up_proj.qweight", SCALES} <= set(stored)

    reloaded = build_model(config, directory, torch.bfloat16, CPU)  # recognised from config.json
    assert packed(reloaded).keys() == packed(quantised_on_load).keys() and packed(reloaded)
    for name, tensor in packed(quantised_on_load).items():
        assert torch.equal(packed(reloaded)[name].view(torch.uint8), tensor.view(torch.uint8)), name
    assert torch.equal(logits(reloaded, ids), logits(quantised_on_load, ids))
    assert torch.equal(logits(build_model(config, directory, torch.bfloat16, CPU, quantization=scheme), ids),
                       logits(reloaded, ids))


@pytest.mark.parametrize("scheme", ["int4-g32", "fp8"])
def test_quantised_experts_trace_as_one_graph(prequantised, config, scheme):
    """Per-call dequantisation adds no host read: a compiled decoder step stays one graph."""
    experts = prequantised[scheme][1].layers[0].experts
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(8, config.hidden_size, generator=generator).to(torch.bfloat16)
    index = torch.rand(8, config.num_experts, generator=generator).argsort(dim=-1)[:, :2]
    router = torch.rand(8, 2, generator=generator)
    with torch.inference_mode():
        explanation = torch._dynamo.explain(experts)(x, router, index)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


def test_saving_a_dense_model_quantises_like_loading(dense_dir, config, prequantised, tmp_path, monkeypatch):
    dense = build_model(config, dense_dir, torch.float32, CPU)
    save_quantized_checkpoint(dense, tmp_path, load_configs(dense_dir)[1], "int4-g32")
    from_dense = build_model(config, tmp_path, torch.bfloat16, CPU)
    monkeypatch.setattr(loader, "EXPERT_CHUNK", 1)  # read and quantised one expert at a time: the same bits
    one_by_one = build_model(config, dense_dir, torch.bfloat16, CPU, quantization="int4-g32")
    for name, tensor in packed(prequantised["int4-g32"][1]).items():
        assert torch.equal(packed(from_dense)[name], tensor) and torch.equal(packed(one_by_one)[name], tensor), name
    with pytest.raises(ValueError, match=r"quantised as \['int4-g32'\]; they cannot be saved as 'fp8'"):
        save_quantized_checkpoint(from_dense, tmp_path / "other", load_configs(dense_dir)[1], "fp8")


def test_engine_generates_with_a_prequantised_checkpoint(prequantised):
    eng = engine.load(prequantised["int4-g32"][0], device="cpu", dtype="bfloat16")
    assert all(isinstance(layer.experts, QuantizedExperts) for layer in eng.model.layers)
    result = eng.generate(list(range(3, 20)), seed=0, max_new_tokens=16)  # one canvas of 16
    assert len(result.tokens) == 16 and all(0 <= token < eng.config.vocab_size for token in result.tokens)


@pytest.fixture
def damaged(prequantised, tmp_path):
    """A private copy of the int4-g32 checkpoint that a test may damage."""
    return shutil.copytree(prequantised["int4-g32"][0], tmp_path / "ckpt")


def rewrite(directory, change):
    tensors = load_file(str(directory / SINGLE_FILE))
    change(tensors)
    save_file(tensors, str(directory / SINGLE_FILE), metadata={"format": "pt"})


def test_missing_scale_tensor(damaged, config):
    rewrite(damaged, lambda t: t.pop(SCALES))
    with pytest.raises(engine.CheckpointError, match=rf"missing tensor '{SCALES}' with expected shape \[4, 128, 2\]"):
        build_model(config, damaged, torch.bfloat16, CPU)


@pytest.mark.parametrize(("corrupt", "message"), [
    (lambda s: torch.full_like(s, float("nan")), "non-finite or non-positive scales"),
    (torch.zeros_like, "non-finite or non-positive scales"),
    (lambda s: s.float(), "is torch.float32, expected torch.bfloat16"),
    (lambda s: s[:, :, :1].contiguous(), r"has shape \[4, 128, 1\], expected \[4, 128, 2\]"),
])
def test_corrupt_scale_tensor(damaged, config, corrupt, message):
    rewrite(damaged, lambda t: t.update({SCALES: corrupt(t[SCALES])}))
    with pytest.raises(engine.CheckpointError, match=rf"{SINGLE_FILE}: tensor '{SCALES}' .*{message}"):
        build_model(config, damaged, torch.bfloat16, CPU)


def test_unknown_or_mismatched_scheme(damaged, dense_dir, config):
    with pytest.raises(engine.CheckpointError, match="unknown quantization scheme 'int3'; choose one of int4-g32"):
        build_model(config, dense_dir, torch.bfloat16, CPU, quantization="int3")
    with pytest.raises(engine.CheckpointError, match="stored quantised as 'int4-g32'; it cannot be loaded as 'fp8'"):
        build_model(config, damaged, torch.bfloat16, CPU, quantization="fp8")
    raw = json.loads((damaged / "config.json").read_text())
    raw["quantization_config"]["scheme"] = "nf4"
    (damaged / "config.json").write_text(json.dumps(raw))
    with pytest.raises(engine.CheckpointError, match="unknown quantization scheme 'nf4' in quantization_config"):
        build_model(config, damaged, torch.bfloat16, CPU)
    raw["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (damaged / "config.json").write_text(json.dumps(raw))
    with pytest.raises(engine.CheckpointError, match="unsupported quantization_config"):
        engine.load(damaged, device="cpu")


def test_group_size_that_does_not_divide_an_expert_dim(tmp_path_factory):
    directory = cached_checkpoint(tmp_path_factory.getbasetemp(), kind="random")  # hidden 64: down_proj K = 32
    config = load_configs(directory)[0]
    with pytest.raises(engine.CheckpointError, match="group size 64 does not divide the reduction dim K=32"):
        build_model(config, directory, torch.bfloat16, CPU, quantization="int4-g64")


def test_released_model_weight_memory_per_precision():
    table = memory_table(parse_model_config(RELEASED))
    assert table["bf16"] == 2 * TOTAL_ELEMENTS  # every text tensor of the release, in bf16
    experts = 30 * 128 * 3 * 704 * 2816
    rest = 2 * (TOTAL_ELEMENTS - experts)
    assert table["int4-g32"] == rest + experts // 2 + experts // 32 * 2
    assert table["int4-g64"] == rest + experts // 2 + experts // 64 * 2
    assert table["fp8"] == rest + experts + 30 * 128 * (2 * 704 + 2816) * 4
    assert table["bf16"] > 48e9 and table["int4-g32"] < 24e9  # int4 fits a 24 GB card, bf16 does not fit 48 GB


def test_a_model_too_large_for_the_device_fails_before_loading_and_names_what_fits():
    import sys
    from pathlib import Path

    from engine.engine import check_fits

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gpu_step import released_config

    config = released_config("released", 256)
    device = torch.device("cuda")
    with pytest.raises(engine.CheckpointError, match=r"need 50\.5 GB in bfloat16, but cuda has 24\.0 GB free; "
                                              r"quantization int4-g32 \(17\.7 GB\) or int4-g64 \(17\.0 GB\) would fit"):
        check_fits(config, None, torch.bfloat16, device, available=24 * 10**9)
    check_fits(config, "int4-g32", torch.bfloat16, device, available=24 * 10**9)  # fits: no error
    with pytest.raises(engine.CheckpointError, match="no quantization fits either"):
        check_fits(config, "int4-g64", torch.bfloat16, device, available=8 * 10**9)
