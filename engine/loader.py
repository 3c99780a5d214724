"""Checkpoint loading and saving: Hugging Face DiffusionGemma directories, mapped onto `engine.model`.

All knowledge of the on-disk tensor names lives here. The file stores the shared text weights under
`model.decoder.*`; the encoder contributes only its per-layer `layer_scalar` buffers; `lm_head` is the embedding;
the vision tower is skipped without being read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.config import ConfigError, GenerationConfig, ModelConfig
from engine.model import DiffusionGemma


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file and tensor at fault."""


DECODER_PREFIX = "model.decoder."
_ENCODER_SCALAR = re.compile(r"^model\.encoder\.language_model\.layers\.(\d+)\.layer_scalar$")
_DECODER_SCALAR = re.compile(r"^layers\.(\d+)\.layer_scalar$")
_SKIPPED_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.embed_vision.", "model.encoder.embed_audio.")
_TIED = ("lm_head.weight",)
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def checkpoint_name(parameter: str) -> str:
    """Inverse of `parameter_name`: the tensor name a parameter of `DiffusionGemma` has in the file."""
    match = re.match(r"^layers\.(\d+)\.(encoder|decoder)_layer_scalar$", parameter)
    if match and match.group(2) == "encoder":
        return f"model.encoder.language_model.layers.{match.group(1)}.layer_scalar"
    if match:
        return f"{DECODER_PREFIX}layers.{match.group(1)}.layer_scalar"
    return DECODER_PREFIX + parameter


def parameter_name(tensor: str) -> str | None:
    """The `DiffusionGemma` parameter a file tensor maps to; None for tensors that are skipped unread."""
    if tensor.startswith(_SKIPPED_PREFIXES) or tensor in _TIED:
        return None
    if match := _ENCODER_SCALAR.match(tensor):
        return f"layers.{match.group(1)}.encoder_layer_scalar"
    if tensor.startswith(DECODER_PREFIX):
        name = tensor[len(DECODER_PREFIX) :]
        if match := _DECODER_SCALAR.match(name):
            return f"layers.{match.group(1)}.decoder_layer_scalar"
        return name
    return tensor  # reported as unexpected by the caller


def tensor_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (single file or sharded index)."""
    index_path = directory / INDEX_FILE
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index_path}: unreadable shard index ({exc!r})") from None
        files = {name: directory / shard for name, shard in weight_map.items()}
        for path in set(files.values()):
            if not path.exists():
                raise CheckpointError(f"{path}: shard file not found (listed in {INDEX_FILE})")
        return files
    single = directory / SINGLE_FILE
    if not single.exists():
        raise CheckpointError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    with _open(single) as handle:
        return {name: single for name in handle.keys()}


def _open(path: Path):
    if not path.exists():
        raise CheckpointError(f"{path}: shard file not found")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def load_weights(model: DiffusionGemma, directory: Path, dtype: torch.dtype, device: torch.device) -> None:
    """Read every tensor the model needs (mmap, one shard at a time), check names and shapes, cast, assign."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for tensor, path in tensor_files(directory).items():
        name = parameter_name(tensor)
        if name is None:
            continue
        if name not in expected:
            raise CheckpointError(f"{path}: unexpected tensor {tensor!r} (not part of a DiffusionGemma text model)")
        by_file.setdefault(path, []).append((tensor, name))
    found = {name for pairs in by_file.values() for _, name in pairs}
    missing = sorted(set(expected) - found)
    if missing:
        name = missing[0]
        raise CheckpointError(
            f"{directory}: missing tensor {checkpoint_name(name)!r} with expected shape {list(expected[name])}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    state: dict[str, torch.Tensor] = {}
    for path, pairs in by_file.items():
        with _open(path) as handle:
            for tensor, name in pairs:
                shape = tuple(handle.get_slice(tensor).get_shape())
                if shape != expected[name]:
                    raise CheckpointError(
                        f"{path}: tensor {tensor!r} has shape {list(shape)}, expected {list(expected[name])}"
                    )
                try:
                    value = handle.get_tensor(tensor)
                except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                    raise CheckpointError(f"{path}: cannot read tensor {tensor!r} ({exc})") from None
                # A fresh copy: tensors read from the file can sit at 8-byte offsets, which sends matmuls down
                # slower unaligned kernels (with different rounding).
                state[name] = value.to(device=device, dtype=dtype, copy=True)
    model.load_state_dict(state, strict=True, assign=True)


def save_checkpoint(
    model: DiffusionGemma,
    directory: Path,
    generation: GenerationConfig,
    max_shard_bytes: int | None = None,
) -> None:
    """Write config.json, generation_config.json and safetensors weights in the reference's format."""
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    composite = {
        "model_type": "diffusion_gemma",
        "architectures": ["DiffusionGemmaForBlockDiffusion"],
        "canvas_length": config.canvas_length,
        "text_config": config.to_text_config_dict(),
        "tie_word_embeddings": True,
    }
    (directory / "config.json").write_text(json.dumps(composite, indent=2) + "\n", encoding="utf-8")
    (directory / "generation_config.json").write_text(json.dumps(generation.to_dict(), indent=2) + "\n")
    tensors = {checkpoint_name(name): t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    if max_shard_bytes is None:
        save_file(tensors, str(directory / SINGLE_FILE), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / filename), metadata={"format": "pt"})
        weight_map.update({name: filename for name in shard})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
    index["weight_map"] = weight_map
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def build_model(config: ModelConfig, directory: Path, dtype: torch.dtype, device: torch.device) -> DiffusionGemma:
    with torch.device("meta"):
        model = DiffusionGemma(config)
    try:
        load_weights(model, directory, dtype, device)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    # Buffers that are not in the checkpoint (RoPE tables) must be rebuilt on the real device.
    model.rotary = type(model.rotary)(config).to(device)
    model.fuse_projections()
    return model.eval()
