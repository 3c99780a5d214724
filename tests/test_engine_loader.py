"""Config parsing and checkpoint loading: both config forms, sharded files, dtypes, and every loader error."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import engine
from engine.config import FULL, SLIDING, parse_generation_config, parse_model_config
from engine.loader import INDEX_FILE, SINGLE_FILE
from reference_models import build_reference, save_reference, text_config

PROMPT = list(range(3, 24))


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reference")
    return save_reference(build_reference(text_config(), canvas_length=8), directory)


@pytest.fixture
def checkpoint(reference_dir, tmp_path):
    """A private copy of the reference checkpoint that a test may damage."""
    return shutil.copytree(reference_dir, tmp_path / "ckpt")


def first_canvas(eng, seed=0):
    return eng.generate(PROMPT, seed=seed, max_new_tokens=8).tokens


def test_released_config_form_with_global_fields():
    raw = {
        "model_type": "diffusion_gemma", "canvas_length": 256,
        "text_config": {"model_type": "diffusion_gemma_text", "hidden_size": 2816, "num_hidden_layers": 30,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                        "global_head_dim": 512, "num_global_key_value_heads": 2, "sliding_window": 1024,
                        "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704,
                        "intermediate_size": 2112, "use_bidirectional_attention": "vision"},
    }
    config = parse_model_config(raw)
    assert [i for i, t in enumerate(config.layer_types) if t == FULL] == [5, 11, 17, 23, 29]
    assert config.layer(5).head_dim == 512 and config.layer(5).num_kv_heads == 2
    assert config.layer(0).head_dim == 256 and config.layer(0).num_kv_heads == 8
    assert config.sliding_window == 1024 and config.canvas_length == 256


def test_bare_text_config_and_per_layer_form():
    raw = {"model_type": "diffusion_gemma_text", "num_hidden_layers": 3, "layer_types": [SLIDING] * 3,
           "per_layer_config": {"2": {"head_dim": 32}}, "head_dim": 16, "num_experts": 2, "top_k_experts": 1}
    config = parse_model_config(raw)
    assert config.layer_types[-1] == FULL  # the reference forces the last layer to full attention
    assert config.layer(2).head_dim == 32 and config.layer(2).num_kv_heads == config.num_kv_heads


def test_bidirectional_all_halves_the_window_and_saves_it_back():
    raw = {"model_type": "diffusion_gemma_text", "sliding_window": 512, "use_bidirectional_attention": "all",
           "num_experts": 2, "top_k_experts": 1}
    config = parse_model_config(raw)
    assert config.sliding_window == 257 and not config.encoder_is_causal
    assert parse_model_config(config.to_text_config_dict()).sliding_window == 257


def test_generation_config_defaults_and_overrides():
    defaults = parse_generation_config({}, None)
    assert (defaults.max_denoising_steps, defaults.entropy_bound, defaults.t_max, defaults.t_min) == (48, 0.1, 0.8, 0.4)
    assert (defaults.stability_threshold, defaults.confidence_threshold) == (1, 0.005)
    released = parse_generation_config({"eos_token_id": [1, 106, 50], "pad_token_id": 0, "max_new_tokens": 256,
                                        "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig",
                                                           "entropy_bound": 0.2}}, None)
    assert released.eos_token_id == (1, 106, 50) and released.entropy_bound == 0.2
    assert released.with_overrides(stability_threshold=None).stability_threshold is None
    with pytest.raises(TypeError, match="unknown generation setting"):
        released.with_overrides(top_p=0.9)


def test_loads_fp32_with_tokenizer_absent(checkpoint):
    eng = engine.load(checkpoint, device="cpu")
    assert eng.dtype == torch.float32 and eng.tokenizer is None
    assert eng.config.canvas_length == 8 and len(first_canvas(eng)) == 8


def test_sharded_checkpoint_gives_identical_tokens(checkpoint, tmp_path):
    eng = engine.load(checkpoint, device="cpu")
    sharded = tmp_path / "sharded"
    engine.save_checkpoint(eng.model, sharded, eng.generation_config, max_shard_bytes=60_000)
    index = json.loads((sharded / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert first_canvas(engine.load(sharded, device="cpu")) == first_canvas(eng)


def test_bf16_load_casts_every_weight(checkpoint):
    fp32 = engine.load(checkpoint, device="cpu")
    bf16 = engine.load(checkpoint, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert len(first_canvas(bf16)) == 8
    ids = torch.tensor([PROMPT])
    from engine.cache import KVCache

    logits = []
    for eng in (fp32, bf16):
        cache = KVCache(1, eng.model.cache_geometries(), eng.dtype, torch.device("cpu"))
        with torch.inference_mode():
            cache.reserve(len(PROMPT) + 8)
            eng.model.encode(ids, 0, cache)
            cache.length = len(PROMPT)
            logits.append(eng.model.decode(torch.arange(8)[None], cache.length, cache, None))
    assert logits[1].dtype == torch.float32
    assert (logits[0] - logits[1]).abs().max() < 0.25  # bf16 noise, not a different model


def test_auto_dtype_is_bfloat16_only_where_the_cpu_multiplies_it_natively(checkpoint):
    from engine.engine import cpu_has_native_bfloat16

    native = cpu_has_native_bfloat16()
    flags = open("/proc/cpuinfo").read().split() if sys.platform == "linux" else None
    if flags is not None:  # the kernel's view of the same instructions
        assert native == ("avx512_bf16" in flags or "amx_bf16" in flags)
    expected = torch.bfloat16 if native else torch.float32
    assert engine.load(checkpoint, device="cpu", dtype="auto").dtype == expected
    assert engine.load(checkpoint, device="cpu").dtype == torch.float32  # the default stays the exact one
    with pytest.raises(ValueError, match="or auto"):
        engine.load(checkpoint, device="cpu", dtype="int8")


def test_vision_tensors_are_never_read(checkpoint):
    """Put the vision tower in its own shard, then truncate that file to garbage: loading must not notice."""
    tensors = load_file(str(checkpoint / SINGLE_FILE))
    vision = {k: v for k, v in tensors.items() if k.startswith("model.encoder.vision_tower.")}
    text = {k: v for k, v in tensors.items() if k not in vision}
    assert vision
    (checkpoint / SINGLE_FILE).unlink()
    save_file(text, str(checkpoint / "text.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "text.safetensors" for k in text} | {k: "vision.safetensors" for k in vision}
    (checkpoint / INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))
    (checkpoint / "vision.safetensors").write_bytes(b"not a safetensors file")
    assert len(first_canvas(engine.load(checkpoint, device="cpu"))) == 8


def rewrite_tensors(checkpoint, change):
    tensors = load_file(str(checkpoint / SINGLE_FILE))
    change(tensors)
    save_file(tensors, str(checkpoint / SINGLE_FILE), metadata={"format": "pt"})


def test_missing_tensor_is_named_with_its_shape(checkpoint):
    rewrite_tensors(checkpoint, lambda t: t.pop("model.decoder.layers.1.self_attn.q_proj.weight"))
    with pytest.raises(engine.CheckpointError, match=r"missing tensor 'model\.decoder\.layers\.1\.self_attn\.q_proj"
                                                     r"\.weight' with expected shape \[64, 64\]"):
        engine.load(checkpoint, device="cpu")


def test_unexpected_tensor_is_named_with_its_file(checkpoint):
    rewrite_tensors(checkpoint, lambda t: t.update({"model.decoder.layers.0.mystery.weight": torch.zeros(2)}))
    with pytest.raises(engine.CheckpointError, match=r"model\.safetensors: unexpected tensor "
                                                     r"'model\.decoder\.layers\.0\.mystery\.weight'"):
        engine.load(checkpoint, device="cpu")


def test_misshaped_tensor_reports_both_shapes(checkpoint):
    rewrite_tensors(checkpoint, lambda t: t.update({"model.decoder.norm.weight": torch.ones(65)}))
    with pytest.raises(engine.CheckpointError, match=r"'model\.decoder\.norm\.weight' has shape \[65\], "
                                                     r"expected \[64\]"):
        engine.load(checkpoint, device="cpu")


def test_full_layer_with_a_v_proj_is_unexpected(checkpoint):
    rewrite_tensors(checkpoint, lambda t: t.update({"model.decoder.layers.3.self_attn.v_proj.weight": torch.ones(32, 64)}))
    with pytest.raises(engine.CheckpointError, match=r"unexpected tensor 'model\.decoder\.layers\.3\.self_attn\.v_proj"):
        engine.load(checkpoint, device="cpu")


def test_unknown_model_type(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "llama"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(engine.CheckpointError, match="unsupported model_type 'llama'"):
        engine.load(checkpoint, device="cpu")


def test_unreadable_config(checkpoint):
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(engine.CheckpointError, match=r"config\.json: unreadable JSON"):
        engine.load(checkpoint, device="cpu")


def test_truncated_weights_file(checkpoint):
    path = checkpoint / SINGLE_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(engine.CheckpointError, match=r"model\.safetensors"):
        engine.load(checkpoint, device="cpu")


def test_missing_weights_and_missing_shard(checkpoint):
    (checkpoint / SINGLE_FILE).unlink()
    with pytest.raises(engine.CheckpointError, match="neither model.safetensors nor"):
        engine.load(checkpoint, device="cpu")
    (checkpoint / INDEX_FILE).write_text(json.dumps({"weight_map": {"model.decoder.norm.weight": "gone.safetensors"}}))
    with pytest.raises(engine.CheckpointError, match=r"gone\.safetensors: shard file not found"):
        engine.load(checkpoint, device="cpu")


def test_not_a_directory(tmp_path):
    with pytest.raises(engine.CheckpointError, match="not a checkpoint directory"):
        engine.load(tmp_path / "nowhere", device="cpu")


def test_prefix_cache_reuses_a_shared_prompt_prefix(checkpoint):
    eng = engine.load(checkpoint, device="cpu")
    first = eng.generate(PROMPT, seed=1, max_new_tokens=8)
    extended = eng.generate(PROMPT + [40, 41], seed=1, max_new_tokens=8)
    edited = eng.generate(PROMPT[:-2] + [50, 51, 52], seed=1, max_new_tokens=8)
    assert (first.encoded_prompt_tokens, extended.encoded_prompt_tokens, edited.encoded_prompt_tokens) == (21, 2, 3)
    fresh = engine.load(checkpoint, device="cpu")
    assert fresh.generate(PROMPT[:-2] + [50, 51, 52], seed=1, max_new_tokens=8).tokens == edited.tokens


def test_step_hook_and_cancellation(checkpoint):
    eng = engine.load(checkpoint, device="cpu")
    events = []
    observed = eng.generate(PROMPT, seed=0, max_new_tokens=16, on_step=events.append)
    assert [e.step for e in events[:3]] == [1, 2, 3] and {e.block for e in events} == {0, 1}
    assert all(0 < e.accepted_fraction <= 1 for e in events)
    polls = []
    with pytest.raises(engine.GenerationCancelled):
        eng.generate(PROMPT, seed=0, max_new_tokens=16, cancelled=lambda: len(polls) > 3 or polls.append(1))
    assert len(polls) == 4  # stopped at the first poll after cancellation, between denoising steps
    # A cancelled run leaves the engine usable, its prefix cache consistent.
    assert eng.generate(PROMPT, seed=0, max_new_tokens=16).tokens == observed.tokens
