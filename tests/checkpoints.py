"""Tiny DiffusionGemma checkpoints built with the engine itself (no transformers), for tests and benchmarks.

    python tests/checkpoints.py OUT_DIR [--kind random|constant] [--canvas-length 16] [--steps 8] [--like-embedded]

A checkpoint is a directory the engine loads: config.json, generation_config.json, model.safetensors and a
byte-level BPE tokenizer.json with the project's special tokens (<pad>=0 <eos>=1 <bos>=2 <fim_prefix>=3
<fim_suffix>=4 <fim_middle>=5 <file_sep>=6), trained here on the sample sources of tests/fixtures.

``--like-embedded`` gives the architecture, vocabulary size and sampler settings the embedded model is trained
with (engine.training.train), for latency measurements before it exists; its weights are still the kind's.

Kinds:
* ``random``: weights drawn from N(0, 0.02), norms one. Its output is noise; tests assert shapes, never text.
* ``constant``: every residual branch writes zeros and every embedding row points the same way, the output
  token's twice as far, so every canvas position's argmax is ``output_token`` whatever the prompt, and no
  canvas stops before its last denoising step. Tests that need a known, non-empty completion (or one that is
  empty because the token is <eos>) use it.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from engine import GenerationConfig, ModelConfig, save_checkpoint  # noqa: E402
from engine.config import FULL, SLIDING  # noqa: E402
from engine.model import DiffusionGemma, RMSNorm  # noqa: E402
from engine.training.tokenizer import DEFAULT_VOCAB_SIZE, EOS_ID, PAD_ID, train_tokenizer  # noqa: E402
from engine.training.objective import TrainSettings, model_config  # noqa: E402
from engine.training.train import default_generation_config  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOKENIZER_VOCAB = 512
# Entries of every embedding row of the constant model (the output token's are twice as large). Small enough
# that the model is never confident (mean entropy stays far above the early-stop threshold), so every canvas
# runs all its denoising steps: runs of predictable length. The argmax is the output token all the same.
_CONSTANT_ROW_VALUE = 0.05


def sample_sources() -> list[str]:
    return [path.read_text(encoding="utf-8") for path in sorted(FIXTURES.glob("sample.*"))]


@functools.cache
def sample_tokenizer() -> Tokenizer:
    """The byte-level BPE every test checkpoint uses (deterministic for the same sources; built once)."""
    return train_tokenizer(sample_sources(), vocab_size=TOKENIZER_VOCAB, min_frequency=2)


def tiny_config(vocab_size: int, canvas_length: int = 16, num_layers: int = 2, hidden_size: int = 64) -> ModelConfig:
    layer_types = tuple(SLIDING if (i + 1) % 2 else FULL for i in range(num_layers - 1)) + (FULL,)
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_layers=num_layers,
        num_heads=4, num_kv_heads=2, head_dim=16, layer_types=layer_types, sliding_window=128,
        num_experts=4, top_k_experts=2, moe_intermediate_size=hidden_size // 2, canvas_length=canvas_length,
        pad_token_id=PAD_ID, eos_token_id=(EOS_ID,), bos_token_id=2,
    )


def _initialise(model: DiffusionGemma, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RMSNorm) and module.weight is not None:
                module.weight.fill_(1.0)
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                continue
            if name.endswith("router.scale") or name.endswith("per_expert_scale"):
                parameter.fill_(1.0)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


def _make_constant(model: DiffusionGemma, output_token: int) -> None:
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            layer.experts.down_proj.zero_()
        model.self_conditioning["down_proj"].weight.zero_()
        model.embed_tokens.weight.fill_(_CONSTANT_ROW_VALUE)
        model.embed_tokens.weight[output_token].fill_(2 * _CONSTANT_ROW_VALUE)


def build_checkpoint(
    directory: Path,
    *,
    kind: str = "random",
    output_token: int | None = None,
    canvas_length: int = 16,
    denoising_steps: int = 8,
    num_layers: int = 2,
    hidden_size: int = 64,
    model_vocab_size: int | None = None,
    like_embedded: bool = False,
    seed: int = 0,
) -> Path:
    """Write a tiny checkpoint to ``directory`` and return it.

    ``output_token`` (constant kind) defaults to the token of "x". ``model_vocab_size`` smaller than the
    tokenizer's makes a mis-packaged checkpoint whose prompts the engine rejects (a real engine error).
    ``like_embedded`` replaces the size arguments by the embedded model's (see the module docstring).
    """
    tokenizer = sample_tokenizer()
    if like_embedded:
        config = model_config(TrainSettings(canvas_length=16), model_vocab_size or DEFAULT_VOCAB_SIZE)
        generation = default_generation_config(config.canvas_length)
    else:
        config = tiny_config(model_vocab_size or tokenizer.get_vocab_size(), canvas_length, num_layers, hidden_size)
        generation = GenerationConfig(max_new_tokens=canvas_length, max_denoising_steps=denoising_steps,
                                      eos_token_id=(EOS_ID,), pad_token_id=PAD_ID)
    model = DiffusionGemma(config)
    _initialise(model, seed)
    if kind == "constant":
        _make_constant(model, tokenizer.token_to_id("x") if output_token is None else output_token)
    elif kind != "random":
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose random or constant")
    save_checkpoint(model, Path(directory), generation)
    tokenizer.save(str(Path(directory) / "tokenizer.json"))
    return Path(directory)


def cached_checkpoint(base: Path, **options) -> Path:
    """The checkpoint ``build_checkpoint(**options)`` makes, built once under ``base`` (e.g. pytest's basetemp)."""
    directory = Path(base) / "checkpoints" / "-".join(f"{key}={value}" for key, value in sorted(options.items()))
    if not (directory / "tokenizer.json").exists():  # written last: its presence means the build finished
        build_checkpoint(directory, **options)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--kind", choices=("random", "constant"), default="random")
    parser.add_argument("--canvas-length", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per canvas")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--like-embedded", action="store_true",
                        help="the embedded model's architecture and sampler settings (ignores the size options)")
    args = parser.parse_args(argv)
    build_checkpoint(args.out_dir, kind=args.kind, canvas_length=args.canvas_length, denoising_steps=args.steps,
                     num_layers=args.layers, hidden_size=args.hidden_size, like_embedded=args.like_embedded)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
