"""Tiny random DiffusionGemma checkpoints written by transformers 5.23.0 (the test oracle; never used by engine/)."""

from __future__ import annotations

from pathlib import Path

import torch

VISION = dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=2, head_dim=16)


def text_config(**overrides):
    config = dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32, num_global_key_value_heads=1,
        layer_types=["sliding_attention"] * 3 + ["full_attention"], sliding_window=16,
        num_experts=4, top_k_experts=2, moe_intermediate_size=32, use_bidirectional_attention="vision",
    )
    config.update(overrides)
    return config


def build_reference(text: dict, canvas_length: int = 8, seed: int = 0, sharpen: float = 1.0):
    """A transformers DiffusionGemma with randomised norms, scales and distinct encoder/decoder layer scalars.

    `sharpen` multiplies the embedding (hence the tied lm_head), making the model confident enough to accept
    several tokens per step and to stop early.
    """
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    vocab = text["vocab_size"]
    config = DiffusionGemmaConfig(text_config=text, vision_config=VISION, canvas_length=canvas_length,
                                  image_token_id=vocab - 1, boi_token_id=vocab - 3, eoi_token_id=vocab - 2)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("router.scale") or "per_expert_scale" in name:
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.copy_(0.3 + torch.rand(buffer.shape, generator=generator))
        model.model.decoder.embed_tokens.weight.mul_(sharpen)
    return model


def save_reference(model, directory: Path, **generation) -> Path:
    model.save_pretrained(directory)
    if generation:
        import json
        path = directory / "generation_config.json"
        data = json.loads(path.read_text())
        data.update(generation)
        path.write_text(json.dumps(data))
    return directory
