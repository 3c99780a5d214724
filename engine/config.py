"""Model and generation configuration, parsed from a Hugging Face checkpoint directory.

The checkpoint format is the one transformers writes for DiffusionGemma: `config.json` is either the composite
`diffusion_gemma` config with a `text_config`, or a bare `diffusion_gemma_text` config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config.json / generation_config.json that cannot describe a DiffusionGemma text model."""


SLIDING = "sliding_attention"
FULL = "full_attention"

_DEFAULT_ROPE = {
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}


@dataclass(frozen=True)
class LayerGeometry:
    """Attention geometry of one layer: full-attention layers have their own head_dim and KV heads, and no v_proj."""

    layer_type: str
    head_dim: int
    num_kv_heads: int

    @property
    def is_sliding(self) -> bool:
        return self.layer_type == SLIDING


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 262_144
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_layers: int = 30
    num_heads: int = 8
    num_kv_heads: int = 4
    head_dim: int = 256
    layer_types: tuple[str, ...] = ()
    # Sparse overrides keyed by layer index (the `per_layer_config` of the checkpoint, resolved).
    per_layer: dict[int, dict[str, int]] = field(default_factory=dict)
    rope_parameters: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(_DEFAULT_ROPE))
    sliding_window: int = 512
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float = 30.0
    hidden_activation: str = "gelu_pytorch_tanh"
    num_experts: int = 1
    top_k_experts: int = 1
    moe_intermediate_size: int = 1
    use_bidirectional_attention: str | None = None
    canvas_length: int = 256
    pad_token_id: int | None = 0
    eos_token_id: tuple[int, ...] = (1,)
    bos_token_id: int | None = 2

    def layer(self, index: int) -> LayerGeometry:
        overrides = self.per_layer.get(index, {})
        return LayerGeometry(
            layer_type=self.layer_types[index],
            head_dim=overrides.get("head_dim", self.head_dim),
            num_kv_heads=overrides.get("num_key_value_heads", self.num_kv_heads),
        )

    @property
    def encoder_is_causal(self) -> bool:
        return self.use_bidirectional_attention != "all"

    def to_text_config_dict(self) -> dict[str, Any]:
        """The bare text config as transformers writes it (per_layer_config form), so saved checkpoints round-trip."""
        window = self.sliding_window
        if self.use_bidirectional_attention == "all":
            window = (window - 1) * 2  # undo the halving, as transformers' to_dict does
        return {
            "model_type": "diffusion_gemma_text",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "layer_types": list(self.layer_types),
            "per_layer_config": {str(i): dict(o) for i, o in sorted(self.per_layer.items())},
            "rope_parameters": self.rope_parameters,
            "sliding_window": window,
            "rms_norm_eps": self.rms_norm_eps,
            "final_logit_softcapping": self.final_logit_softcapping,
            "hidden_activation": self.hidden_activation,
            "num_experts": self.num_experts,
            "top_k_experts": self.top_k_experts,
            "moe_intermediate_size": self.moe_intermediate_size,
            "use_bidirectional_attention": self.use_bidirectional_attention,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": list(self.eos_token_id),
            "bos_token_id": self.bos_token_id,
            "tie_word_embeddings": True,
        }


@dataclass(frozen=True)
class GenerationConfig:
    """Sampler settings. Defaults are the reference's global fallbacks (transformers 5.23.0)."""

    max_new_tokens: int = 256
    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    # None for either temperature disables the schedule (T = 1); None for either threshold disables early stopping.
    t_min: float | None = 0.4
    t_max: float | None = 0.8
    stability_threshold: int | None = 1
    confidence_threshold: float | None = 0.005
    eos_token_id: tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # "reference" draws random numbers exactly as transformers does (same tokens under a seed); "fast" samples the
    # same distributions by inverse CDF, one uniform per position instead of one exponential per vocabulary entry.
    # Not part of generation_config.json: it changes no model behaviour, only which random stream is used.
    sampling: str = "reference"

    def with_overrides(self, **overrides: Any) -> "GenerationConfig":
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(sorted(unknown))}; known: {sorted(known)}")
        if "eos_token_id" in overrides:
            overrides["eos_token_id"] = _as_id_tuple(overrides["eos_token_id"])
        config = replace(self, **overrides)
        config.validate()
        return config

    def validate(self) -> None:
        if self.max_denoising_steps <= 0:
            raise ConfigError(f"max_denoising_steps must be a positive integer, got {self.max_denoising_steps}")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens}")
        if self.entropy_bound <= 0:
            raise ConfigError(f"entropy_bound must be > 0, got {self.entropy_bound}")
        if self.sampling not in ("reference", "fast"):
            raise ConfigError(f"sampling must be 'reference' or 'fast', got {self.sampling!r}")
        if self.t_min is not None and self.t_max is not None and self.t_max <= self.t_min:
            raise ConfigError(f"t_max must be > t_min (got t_max={self.t_max}, t_min={self.t_min})")

    def to_dict(self) -> dict[str, Any]:
        """generation_config.json in the reference's format."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "max_denoising_steps": self.max_denoising_steps,
            "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": self.entropy_bound},
            "t_min": self.t_min,
            "t_max": self.t_max,
            "stability_threshold": self.stability_threshold,
            "confidence_threshold": self.confidence_threshold,
            "eos_token_id": list(self.eos_token_id) if self.eos_token_id is not None else None,
            "pad_token_id": self.pad_token_id,
        }


def _as_id_tuple(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_model_config(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Parse a composite `diffusion_gemma` config or a bare `diffusion_gemma_text` config."""
    model_type = raw.get("model_type")
    canvas_length = 256
    if model_type == "diffusion_gemma":
        canvas_length = raw.get("canvas_length") or 256
        text = raw.get("text_config")
        if not isinstance(text, dict):
            raise ConfigError(f"{source}: a diffusion_gemma config needs a `text_config` object")
        text_type = text.get("model_type", "diffusion_gemma_text")
    elif model_type == "diffusion_gemma_text":
        text, text_type = raw, model_type
        canvas_length = raw.get("canvas_length") or 256
    else:
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r}; expected 'diffusion_gemma' or 'diffusion_gemma_text'"
        )
    if text_type != "diffusion_gemma_text":
        raise ConfigError(f"{source}: unsupported text_config model_type {text_type!r}")

    def get(key: str, default: Any) -> Any:
        value = text.get(key, default)
        return default if value is None else value

    num_layers = int(get("num_hidden_layers", 30))
    layer_types = list(get("layer_types", []))
    if not layer_types:
        layer_types = [SLIDING if (i + 1) % 6 else FULL for i in range(num_layers)]
    if len(layer_types) != num_layers:
        raise ConfigError(f"{source}: layer_types has {len(layer_types)} entries for {num_layers} layers")
    unknown_types = set(layer_types) - {SLIDING, FULL}
    if unknown_types:
        raise ConfigError(f"{source}: unknown layer types {sorted(unknown_types)}")
    layer_types[-1] = FULL  # the reference forces the last layer to full attention

    # Both forms: the saved `per_layer_config` and the released `global_head_dim`/`num_global_key_value_heads`.
    if "per_layer_config" in text and text["per_layer_config"] is not None:
        per_layer = {int(k): {kk: int(vv) for kk, vv in v.items()} for k, v in text["per_layer_config"].items()}
    else:
        overrides = {"head_dim": int(get("global_head_dim", 512))}
        if text.get("num_global_key_value_heads") is not None:
            overrides["num_key_value_heads"] = int(text["num_global_key_value_heads"])
        per_layer = {i: dict(overrides) for i, t in enumerate(layer_types) if t == FULL}

    rope = dict(_DEFAULT_ROPE)
    rope.update(get("rope_parameters", {}))
    bidirectional = text.get("use_bidirectional_attention")
    window = int(get("sliding_window", 512))
    if bidirectional == "all":
        window = window // 2 + 1  # the reference's halving quirk; only the encoder mask uses it
    eos = _as_id_tuple(text.get("eos_token_id", 1)) or ()

    config = ModelConfig(
        vocab_size=int(get("vocab_size", 262_144)),
        hidden_size=int(get("hidden_size", 2304)),
        intermediate_size=int(get("intermediate_size", 9216)),
        num_layers=num_layers,
        num_heads=int(get("num_attention_heads", 8)),
        num_kv_heads=int(get("num_key_value_heads", 4)),
        head_dim=int(get("head_dim", 256)),
        layer_types=tuple(layer_types),
        per_layer=per_layer,
        rope_parameters=rope,
        sliding_window=window,
        rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
        final_logit_softcapping=float(get("final_logit_softcapping", 30.0)),
        hidden_activation=str(get("hidden_activation", "gelu_pytorch_tanh")),
        num_experts=int(get("num_experts", 1)),
        top_k_experts=int(get("top_k_experts", 1)),
        moe_intermediate_size=int(get("moe_intermediate_size", 1)),
        use_bidirectional_attention=bidirectional,
        canvas_length=int(canvas_length),
        pad_token_id=text.get("pad_token_id", 0),
        eos_token_id=eos,
        bos_token_id=text.get("bos_token_id", 2),
    )
    _check_geometry(config, source)
    return config


def _check_geometry(config: ModelConfig, source: str) -> None:
    if config.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ConfigError(f"{source}: unsupported hidden_activation {config.hidden_activation!r}")
    if config.top_k_experts > config.num_experts:
        raise ConfigError(f"{source}: top_k_experts={config.top_k_experts} > num_experts={config.num_experts}")
    for i in range(config.num_layers):
        geometry = config.layer(i)
        if config.num_heads % geometry.num_kv_heads:
            raise ConfigError(f"{source}: layer {i}: {config.num_heads} heads not divisible by {geometry.num_kv_heads}")
        rope = config.rope_parameters.get(geometry.layer_type)
        if rope is None or rope.get("rope_type", "default") not in ("default", "proportional"):
            raise ConfigError(f"{source}: unsupported rope_parameters for {geometry.layer_type}: {rope!r}")


def parse_generation_config(raw: dict[str, Any], model: ModelConfig) -> GenerationConfig:
    """generation_config.json over the reference defaults. Missing keys fall back; explicit nulls disable."""
    defaults = GenerationConfig()
    sampler = raw.get("sampler_config") or {}

    def pick(key: str, fallback: Any) -> Any:
        # The reference treats a null in the file like an unset value: the global default applies.
        value = raw.get(key)
        return fallback if value is None else value

    config = GenerationConfig(
        max_new_tokens=int(pick("max_new_tokens", defaults.max_new_tokens)),
        max_denoising_steps=int(pick("max_denoising_steps", defaults.max_denoising_steps)),
        entropy_bound=float(sampler.get("entropy_bound", defaults.entropy_bound)),
        t_min=pick("t_min", defaults.t_min),
        t_max=pick("t_max", defaults.t_max),
        stability_threshold=pick("stability_threshold", defaults.stability_threshold),
        confidence_threshold=pick("confidence_threshold", defaults.confidence_threshold),
        eos_token_id=_as_id_tuple(raw.get("eos_token_id")),
        pad_token_id=raw.get("pad_token_id"),
    )
    config.validate()
    return config


def load_configs(directory: Path) -> tuple[ModelConfig, GenerationConfig]:
    config_path = directory / "config.json"
    model = parse_model_config(_read_json(config_path), str(config_path))
    generation_path = directory / "generation_config.json"
    raw_generation = _read_json(generation_path) if generation_path.exists() else {}
    return model, parse_generation_config(raw_generation, model)
