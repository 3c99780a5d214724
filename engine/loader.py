"""Checkpoint loading and saving: Hugging Face DiffusionGemma directories, mapped onto `engine.model`.

All knowledge of the on-disk tensor names lives here. The file stores the shared text weights under
`model.decoder.*`; the encoder contributes only its per-layer `layer_scalar` buffers; `lm_head` is the embedding;
the vision tower is skipped without being read.

Expert weights can be quantised (schemes "int4-g32", "int4-g64", "fp8"; engine/kernels/quantize.py): while a
bf16/fp32 checkpoint is read (`quantization=`), or stored that way by `save_quantized_checkpoint` (tensor names in
engine/quantized.py, config.json `quantization_config`), which `load_weights` then loads as stored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.config import ConfigError, GenerationConfig, ModelConfig
from engine.kernels.quantize import SCHEMES, QuantizedWeight, group_size, quantize
from engine.model import DiffusionGemma
from engine.quantized import QuantizedExperts, is_packed_tensor, quantize_experts_modules


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file and tensor at fault."""


DECODER_PREFIX = "model.decoder."
_ENCODER_SCALAR = re.compile(r"^model\.encoder\.language_model\.layers\.(\d+)\.layer_scalar$")
_DECODER_SCALAR = re.compile(r"^layers\.(\d+)\.layer_scalar$")
_SKIPPED_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.embed_vision.", "model.encoder.embed_audio.")
_TIED = ("lm_head.weight",)
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DENSE_EXPERT = re.compile(r"^layers\.\d+\.experts\.(gate_up_proj|down_proj)$")
QUANT_METHOD = "diffgemma-experts"
# Experts quantised per read: a few at a time (1408 x 2816 bf16 = 7.9 MB each in the released model), so neither
# the host nor the device ever holds a whole expert tensor (1 GB) in bf16.
EXPERT_CHUNK = 8


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


def load_weights(
    model: DiffusionGemma, directory: Path, dtype: torch.dtype, device: torch.device, quantization: str | None = None
) -> None:
    """Read every tensor the model needs (mmap, one shard at a time), check names and shapes, cast, assign.

    With `quantization` (or a pre-quantised checkpoint) the layers' experts become `QuantizedExperts`; dense expert
    tensors are quantised on `device` a few experts at a time as they are read, packed ones are loaded as stored.
    """
    stored = stored_quantization(directory)
    scheme = _resolve_quantization(directory, stored, quantization)
    dense = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if scheme is not None:
        try:
            quantize_experts_modules(model, scheme)
        except ValueError as exc:  # a group size that does not divide an expert's reduction dim
            raise CheckpointError(f"{directory}: {exc}") from None
    # The file holds the dense tensors unless it is pre-quantised.
    expected = dense if stored is None else {name: tuple(t.shape) for name, t in model.state_dict().items()}
    packed_dtypes = {name: t.dtype for name, t in model.state_dict().items() if is_packed_tensor(name)}
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
                if scheme is not None and stored is None and _DENSE_EXPERT.match(name):
                    weight = _quantize_streamed(handle, path, tensor, scheme, device)
                    state[f"{name}.qweight"], state[f"{name}.scales"] = weight.data, weight.scales
                    continue
                value = _read(handle, path, tensor)
                if name in packed_dtypes:
                    _check_packed(path, tensor, value, packed_dtypes[name])
                    state[name] = value.to(device=device, copy=True)
                else:
                    # A fresh copy: tensors read from the file can sit at 8-byte offsets, which sends matmuls down
                    # slower unaligned kernels (with different rounding).
                    state[name] = value.to(device=device, dtype=dtype, copy=True)
    model.load_state_dict(state, strict=True, assign=True)


def _read(handle, path: Path, tensor: str) -> torch.Tensor:
    try:
        return handle.get_tensor(tensor)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read tensor {tensor!r} ({exc})") from None


def stored_quantization(directory: Path) -> str | None:
    """The scheme a pre-quantised checkpoint's config.json declares (None for an unquantised one)."""
    path = directory / "config.json"
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    entry = raw.get("quantization_config") if isinstance(raw, dict) else None
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"{path}: unsupported quantization_config {entry!r} (expected quant_method "
                              f"{QUANT_METHOD!r})")
    scheme = entry.get("scheme")
    if scheme not in SCHEMES:
        raise CheckpointError(f"{path}: unknown quantization scheme {scheme!r} in quantization_config; expected one "
                              f"of {', '.join(SCHEMES)}")
    return scheme


def _resolve_quantization(directory: Path, stored: str | None, requested: str | None) -> str | None:
    if requested is not None and requested not in SCHEMES:
        raise CheckpointError(f"unknown quantization scheme {requested!r}; choose one of {', '.join(SCHEMES)}")
    if stored is not None and requested is not None and requested != stored:
        raise CheckpointError(f"{directory}: the checkpoint is stored quantised as {stored!r}; it cannot be loaded "
                              f"as {requested!r} (re-quantise from the unquantised checkpoint)")
    return stored or requested


def _quantize_streamed(handle, path: Path, tensor: str, scheme: str, device: torch.device) -> QuantizedWeight:
    """A dense [E, N, K] expert tensor read from the file EXPERT_CHUNK experts at a time, each slice moved to
    `device` and quantised there."""
    tensor_slice = handle.get_slice(tensor)

    def chunks():
        for start in range(0, tensor_slice.get_shape()[0], EXPERT_CHUNK):
            try:
                chunk = tensor_slice[start : start + EXPERT_CHUNK]
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: cannot read tensor {tensor!r} ({exc})") from None
            yield chunk.to(device)

    return _quantize_chunks(chunks(), scheme)


def _quantize_chunks(chunks, scheme: str) -> QuantizedWeight:
    """One QuantizedWeight from consecutive expert slices quantised one by one (bounded fp32 temporaries)."""
    pieces = [quantize(chunk, scheme) for chunk in chunks]
    return QuantizedWeight(scheme, torch.cat([p.data for p in pieces]), torch.cat([p.scales for p in pieces]))


def _check_packed(path: Path, tensor: str, value: torch.Tensor, dtype: torch.dtype) -> None:
    if value.dtype != dtype:
        raise CheckpointError(f"{path}: tensor {tensor!r} is {value.dtype}, expected {dtype}")
    if tensor.endswith(".scales") and not bool((torch.isfinite(value) & (value > 0)).all()):
        raise CheckpointError(f"{path}: tensor {tensor!r} holds non-finite or non-positive scales (corrupt)")


def save_checkpoint(
    model: DiffusionGemma,
    directory: Path,
    generation: GenerationConfig,
    max_shard_bytes: int | None = None,
) -> None:
    """Write config.json, generation_config.json and safetensors weights in the reference's format."""
    tensors = {checkpoint_name(name): t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    _write_checkpoint(model.config, tensors, directory, generation, max_shard_bytes, extra_config={})


def save_quantized_checkpoint(
    model: DiffusionGemma,
    directory: Path,
    generation: GenerationConfig,
    scheme: str,
    max_shard_bytes: int | None = None,
) -> None:
    """`save_checkpoint` with the experts stored under `scheme`: dense expert weights are quantised on the model's
    device; experts that are already `QuantizedExperts` (a model loaded with `quantization=scheme`) are written
    as they are. config.json gains `quantization_config` {quant_method, scheme, group_size, modules}."""
    group = group_size(scheme)  # ValueError for an unknown scheme
    held = {layer.experts.gate_up_proj.scheme for layer in model.layers if isinstance(layer.experts, QuantizedExperts)}
    if held - {scheme}:
        raise ValueError(f"the model's experts are quantised as {sorted(held)}; they cannot be saved as {scheme!r}")
    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach()
        if _DENSE_EXPERT.match(name):
            weight = _quantize_chunks(value.split(EXPERT_CHUNK), scheme)
            tensors[checkpoint_name(f"{name}.qweight")] = weight.data.cpu()
            tensors[checkpoint_name(f"{name}.scales")] = weight.scales.cpu()
        else:
            tensors[checkpoint_name(name)] = value.contiguous().cpu()
    entry = {"quant_method": QUANT_METHOD, "scheme": scheme, "group_size": group,
             "modules": ["experts.gate_up_proj", "experts.down_proj"]}
    _write_checkpoint(model.config, tensors, directory, generation, max_shard_bytes, {"quantization_config": entry})


def _write_checkpoint(
    config: ModelConfig,
    tensors: dict[str, torch.Tensor],
    directory: Path,
    generation: GenerationConfig,
    max_shard_bytes: int | None,
    extra_config: dict,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    composite = {
        "model_type": "diffusion_gemma",
        "architectures": ["DiffusionGemmaForBlockDiffusion"],
        "canvas_length": config.canvas_length,
        "text_config": config.to_text_config_dict(),
        "tie_word_embeddings": True,
    } | extra_config
    (directory / "config.json").write_text(json.dumps(composite, indent=2) + "\n", encoding="utf-8")
    (directory / "generation_config.json").write_text(json.dumps(generation.to_dict(), indent=2) + "\n")
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


def build_model(
    config: ModelConfig, directory: Path, dtype: torch.dtype, device: torch.device, quantization: str | None = None
) -> DiffusionGemma:
    with torch.device("meta"):
        model = DiffusionGemma(config)
    try:
        load_weights(model, directory, dtype, device, quantization)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    # Buffers that are not in the checkpoint (RoPE tables) must be rebuilt on the real device.
    model.rotary = type(model.rotary)(config).to(device)
    model.fuse_projections()
    return model.eval()
