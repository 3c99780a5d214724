"""The released google/diffusiongemma-26B-A4B-it geometry, checked name by name against transformers on meta.

No weights are read or allocated: transformers' `DiffusionGemmaForBlockDiffusion` and the engine's `DiffusionGemma`
are both built on the meta device at the released text config. The reference's tensor names are the ones
`save_pretrained` writes (tied aliases removed, weight conversion reverted); each goes through the loader's own
`parameter_name` (so the vision tower is skipped exactly as on load) and must name an engine tensor of the same shape.
"""

from __future__ import annotations

import pytest
import torch

from engine.config import FULL, parse_model_config
from engine.loader import _SKIPPED_PREFIXES, checkpoint_name, parameter_name
from engine.model import DiffusionGemma

# The released text config as config.json spells it (the global_head_dim / num_global_key_value_heads form).
# Everything not listed (vocab 262144, rope parameters, rms_norm_eps, soft-cap 30, gelu_pytorch_tanh, the 5:1
# layer pattern) is the transformers 5.23.0 `DiffusionGemmaTextConfig` default, which mirrors the release.
RELEASED_TEXT = {
    "model_type": "diffusion_gemma_text",
    "vocab_size": 262_144,
    "hidden_size": 2816,
    "intermediate_size": 2112,
    "num_hidden_layers": 30,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "global_head_dim": 512,
    "num_global_key_value_heads": 2,
    "sliding_window": 1024,
    "num_experts": 128,
    "top_k_experts": 8,
    "moe_intermediate_size": 704,
    "use_bidirectional_attention": "vision",
}
RELEASED = {"model_type": "diffusion_gemma", "canvas_length": 256, "text_config": RELEASED_TEXT}

TEXT_TENSORS = 691  # 30 layers x 21 + 25 sliding-layer v_proj + 30 encoder layer_scalar + 6 top level
TOTAL_ELEMENTS = 25_250_986_812  # text weights + the 60 one-element layer_scalar buffers
PARAMETERS = 25_250_986_752


@pytest.fixture(scope="module")
def reference():
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    config = DiffusionGemmaConfig(text_config=dict(RELEASED_TEXT), canvas_length=256)
    with torch.device("meta"):
        model = DiffusionGemmaForBlockDiffusion(config)
    return model


@pytest.fixture(scope="module")
def saved_shapes(reference):
    """Tensor name -> shape of what `save_pretrained` would write for the reference (no bytes involved)."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = remove_tied_weights_from_state_dict(reference.state_dict(), reference)
    state = revert_weight_conversion(reference, state)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


@pytest.fixture(scope="module")
def engine_model():
    config = parse_model_config(RELEASED)
    with torch.device("meta"):  # as engine/loader.py's build_model does before reading the file
        model = DiffusionGemma(config)
    return model


def test_released_config_parses_like_transformers(reference):
    config = parse_model_config(RELEASED)
    text = reference.config.text_config
    assert config.layer_types == tuple(text.layer_types)
    assert [i for i, t in enumerate(config.layer_types) if t == FULL] == [5, 11, 17, 23, 29]
    for i in range(config.num_layers):  # transformers' resolved per-layer view of the released overrides
        layer = text.per_layer_config[i]
        assert (config.layer(i).head_dim, config.layer(i).num_kv_heads) == (layer.head_dim, layer.num_key_value_heads)
    assert (config.layer(5).head_dim, config.layer(5).num_kv_heads) == (512, 2)
    assert (config.layer(0).head_dim, config.layer(0).num_kv_heads) == (256, 8)
    assert config.rope_parameters == dict(text.rope_parameters)
    assert (config.vocab_size, config.rms_norm_eps, config.final_logit_softcapping) == (
        text.vocab_size, text.rms_norm_eps, text.final_logit_softcapping)
    assert config.sliding_window == text.sliding_window == 1024
    # The form transformers saves (per_layer_config) parses to the same engine config.
    assert parse_model_config(reference.config.to_dict()) == config


def test_every_reference_text_tensor_has_an_engine_counterpart(saved_shapes, engine_model):
    expected = {name: tuple(t.shape) for name, t in engine_model.state_dict().items()}
    mapped, skipped = {}, []
    for tensor, shape in saved_shapes.items():
        name = parameter_name(tensor)
        if name is None:
            skipped.append(tensor)
            continue
        assert name not in mapped, f"{tensor} and {mapped[name][0]} both map to {name}"
        mapped[name] = (tensor, shape)
        assert checkpoint_name(name) == tensor  # the loader's mapping round-trips

    # Only the vision tower and its embedder are skipped (tied lm_head is not even written by save_pretrained).
    assert skipped and all(t.startswith(_SKIPPED_PREFIXES) for t in skipped)
    assert not any(t.startswith("model.decoder.") or ".language_model." in t for t in skipped)

    unexpected = sorted(set(mapped) - set(expected))
    missing = sorted(set(expected) - set(mapped))
    shape_diffs = [
        (tensor, shape, expected[n]) for n, (tensor, shape) in mapped.items() if n in expected and shape != expected[n]
    ]
    assert unexpected == [], [mapped[n][0] for n in unexpected]
    assert missing == [], [checkpoint_name(n) for n in missing]
    assert shape_diffs == []
    assert len(mapped) == len(expected) == TEXT_TENSORS

    per_layer = [n for n in expected if n.startswith("layers.0.")]
    # 21 shared (decoder layer_scalar included) + v_proj (layer 0 is sliding) + the encoder's layer_scalar
    assert len(per_layer) == 23
    assert sum(n.endswith("self_attn.v_proj.weight") for n in expected) == 25
    assert sum(n.endswith("encoder_layer_scalar") for n in expected) == 30


def test_parameter_count_is_the_released_size(saved_shapes, engine_model):
    elements = {name: t.numel() for name, t in engine_model.state_dict().items()}
    assert sum(elements.values()) == TOTAL_ELEMENTS
    assert sum(p.numel() for p in engine_model.parameters()) == PARAMETERS
    text_in_reference = sum(
        torch.Size(shape).numel() for name, shape in saved_shapes.items() if parameter_name(name) is not None
    )
    assert text_in_reference == TOTAL_ELEMENTS
    experts = sum(n for name, n in elements.items() if ".experts." in name)
    assert experts == 30 * 128 * 3 * 704 * 2816  # 22.84B: gate, up and down of every expert
    assert elements["embed_tokens.weight"] == 262_144 * 2816
    assert round(TOTAL_ELEMENTS / 1e9, 2) == 25.25


def test_fusing_projections_keeps_the_checkpoint_names(engine_model):
    """build_model fuses q/k/v and gate/up after loading: the state dict (checkpoint names) must not change."""
    before = {name: tuple(t.shape) for name, t in engine_model.state_dict().items()}
    engine_model.fuse_projections()
    assert {name: tuple(t.shape) for name, t in engine_model.state_dict().items()} == before
