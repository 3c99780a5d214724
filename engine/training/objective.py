"""The training objective: settings, model shape, initialisation and the loss of one batch.

DiffusionGemma's fine-tuning recipe, per batch (prompt = `<bos><fim_prefix>…<fim_suffix>…<fim_middle>`,
canvas = middle `<eos>` `<pad>`…):
- the encoder runs causally over [prompt ; clean canvas] and is trained with the next-token loss on real tokens up
  to the `<eos>` (its prompt keys/values are what the decoder reads, exactly as at inference);
- each example draws a noise level t ~ U(0, 1) (or, with `noise_schedule` "high", t = sqrt(u): density 2t, more
  of the nearly-all-noise canvases a generation starts from) and every canvas position is independently replaced
  by a uniform random vocabulary token with probability t (no mask token);
- the decoder denoises that canvas with cross-entropy on every canvas position; half the examples are
  self-conditioned: a first, gradient-free decoder pass supplies the logits that the second pass conditions on.

Shared by the trainer and the held-out evaluation, which computes the same terms without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.config import FULL, SLIDING, ModelConfig
from engine.kernels.moe import bounded_gemm_shapes
from engine.model import DiffusionGemma
from engine.training.fim import FimBatch
from engine.training.tokenizer import EOS_ID, PAD_ID


@dataclass
class TrainSettings:
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    global_head_dim: int = 128
    num_global_kv_heads: int = 1
    sliding_window: int = 512
    num_experts: int = 4
    top_k_experts: int = 2
    moe_intermediate_size: int = 256
    canvas_length: int = 32
    max_prompt_tokens: int = 256
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    total_steps: int = 20_000
    weight_decay: float = 0.01
    ar_loss_weight: float = 1.0
    ar_prompt_sample: float = 0.25
    self_conditioning_rate: float = 0.5
    hole_mix: str = "default"  # a key of engine.training.fim.HOLE_MIXES
    noise_schedule: str = "uniform"  # a key of NOISE_SCHEDULES: how the canvas noise level t is drawn
    # "bfloat16": matmuls under CPU/CUDA autocast (master weights and optimizer state stay fp32).
    precision: str = "float32"
    seed: int = 0


def model_config(settings: TrainSettings, vocab_size: int) -> ModelConfig:
    # Every third layer (and the last) is full attention, as in the released model's 5:1 pattern scaled down.
    layer_types = tuple(FULL if (i + 1) % 3 == 0 or i == settings.num_layers - 1 else SLIDING
                        for i in range(settings.num_layers))
    per_layer = {i: {"head_dim": settings.global_head_dim, "num_key_value_heads": settings.num_global_kv_heads}
                 for i, t in enumerate(layer_types) if t == FULL}
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=settings.hidden_size, intermediate_size=settings.intermediate_size,
        num_layers=settings.num_layers, num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads,
        head_dim=settings.head_dim, layer_types=layer_types, per_layer=per_layer,
        sliding_window=settings.sliding_window, num_experts=settings.num_experts,
        top_k_experts=settings.top_k_experts, moe_intermediate_size=settings.moe_intermediate_size,
        use_bidirectional_attention="vision", canvas_length=settings.canvas_length,
        pad_token_id=PAD_ID, eos_token_id=(EOS_ID,), bos_token_id=2,
    )


def initialise(model: DiffusionGemma, seed: int, std: float = 0.02) -> None:
    """Normal(0, std) projections and embeddings; norms, router scales and layer scalars at 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            else:
                parameter.fill_(1.0)
        for name, buffer in model.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.fill_(1.0)


class TrainingStore:
    """Functional (autograd-friendly) key/value store: the encoder's keys for [prompt ; canvas], and the decoder
    reading only the prompt part, as the inference cache holds only what precedes the canvas."""

    def __init__(self, prompt_length: int):
        self.prompt_length = prompt_length
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def encoder_keys_values(self, layer, start, keys, values, first_key):
        self.keys[layer], self.values[layer] = keys, values
        return keys[:, :, first_key:], values[:, :, first_key:]

    def decoder_keys_values(self, layer, keys, values, first_key):
        prompt = slice(first_key, self.prompt_length)
        return (torch.cat([self.keys[layer][:, :, prompt], keys], dim=2),
                torch.cat([self.values[layer][:, :, prompt], values], dim=2))


PRECISIONS = ("float32", "bfloat16")
# The noise level t of a training canvas from u ~ U(0, 1). A generation starts from an all-noise canvas and its first
# steps see mostly noise; "uniform" trains on t = 1 as rarely as on t = 0, "high" draws t with density 2t.
NOISE_SCHEDULES = {"uniform": lambda u: u, "high": torch.sqrt}
AR_TARGET_BUCKET = 128
IGNORED_TARGET = -100


def training_loss(model: DiffusionGemma, batch: FimBatch, settings: TrainSettings, generator: torch.Generator):
    """Returns (total, diffusion, autoregressive) losses for one batch, computed in `settings.precision`."""
    if settings.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {settings.precision!r}")
    device_type = model.embed_tokens.weight.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=settings.precision == "bfloat16"):
        return _batch_loss(model, batch, settings, generator)


def _batch_loss(model: DiffusionGemma, batch: FimBatch, settings: TrainSettings, generator: torch.Generator):
    prompt_length = batch.prompt_ids.shape[1]
    batch_size, canvas_length = batch.canvas_ids.shape
    vocab = model.config.vocab_size
    sequence = torch.cat([batch.prompt_ids, batch.canvas_ids], dim=1)
    real = torch.cat([batch.prompt_mask, torch.ones_like(batch.canvas_ids, dtype=torch.bool)], dim=1)
    store = TrainingStore(prompt_length)
    hidden = model.encode(sequence, 0, store, return_hidden=True, positions=batch.position_ids, key_padding=real)

    # Next-token targets: the middle up to and including <eos>, and a sample of the prompt (the vocabulary head over
    # every prompt position would cost more than the rest of the step).
    # Every random draw comes from the CPU generator and then moves: the same stream on any device, so a run
    # resumes exactly on another one.
    device = sequence.device
    index = torch.arange(sequence.shape[1], device=device)
    within_middle = index[None, :] <= prompt_length + batch.middle_lengths[:, None]
    prompt_sample = torch.rand(sequence.shape, generator=generator).to(device) < settings.ar_prompt_sample
    sampled = (index[None, :] >= prompt_length) | prompt_sample
    target_mask = (real & within_middle & sampled)[:, 1:] & real[:, :-1]
    ar_hidden, ar_targets = hidden[:, :-1][target_mask], sequence[:, 1:][target_mask]
    if bounded_gemm_shapes(ar_hidden):
        # The number of targets changes every batch; in bf16 on the CPU every new GEMM shape costs a compiled kernel
        # that is never freed (see engine.kernels.moe.GROUP_ROWS), so the rows are padded to a whole bucket and
        # the padding is ignored by the loss.
        padding = -ar_hidden.shape[0] % AR_TARGET_BUCKET
        ar_hidden = torch.cat([ar_hidden, ar_hidden.new_zeros(padding, ar_hidden.shape[1])])
        ar_targets = torch.cat([ar_targets, ar_targets.new_full((padding,), IGNORED_TARGET)])
    ar_loss = F.cross_entropy(model.logits(ar_hidden), ar_targets, ignore_index=IGNORED_TARGET)

    noise_level = NOISE_SCHEDULES[settings.noise_schedule](torch.rand(batch_size, 1, generator=generator))
    noised = (torch.rand(batch_size, canvas_length, generator=generator) < noise_level).to(device)
    random_tokens = torch.randint(0, vocab, (batch_size, canvas_length), generator=generator).to(device)
    canvas = torch.where(noised, random_tokens, batch.canvas_ids)
    tables = model.rotary(batch.position_ids[:, prompt_length:], model.embed_tokens.weight.dtype)
    sc_mask = (torch.rand(batch_size, generator=generator) < settings.self_conditioning_rate).to(device)
    sc_logits = None
    if bool(sc_mask.any()):
        with torch.no_grad():
            sc_logits = model.decode(canvas, prompt_length, store, None, tables, key_padding=real).detach()
    logits = model.decode(canvas, prompt_length, store, sc_logits, tables, key_padding=real,
                          sc_mask=sc_mask if sc_logits is not None else None)
    diffusion_loss = F.cross_entropy(logits.reshape(-1, vocab), batch.canvas_ids.reshape(-1))
    return diffusion_loss + settings.ar_loss_weight * ar_loss, diffusion_loss, ar_loss
