"""`--baseline transformers`: the same checkpoint through the reference `generate()` of transformers, per task.

For each task the prompt is the one the server's pipeline builds (its context builder trims the document to the
prompt budget, then the checkpoint's infill prompt format), generated once by `Engine.generate` and once by
transformers' `DiffusionGemmaForBlockDiffusion.generate` after `torch.manual_seed(seed)`, both with the
checkpoint's generation_config.json (EOS and pad included) and the same number of new tokens and denoising
steps. Reported: both wall times, their ratio, and whether the tokens agree.

- `--engine-mode exact`: the engine encodes each prompt from scratch in the engine's dtype and draws the
  reference's random stream, and transformers runs in the same dtype: in float32 on the CPU the tokens must agree
  exactly.
- `--engine-mode serving` (the default): the engine runs as the server does (its dtype, prompt cache, compiled
  step, own random stream) and transformers as a user would, in float32; the tokens differ by sampling, so the
  agreement is only reported.

transformers is a test and benchmark dependency only (`pip install 'diffgemma-lsp[dev]'`): it is imported here,
when a baseline is asked for, and never by the engine or the server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time

import torch

from engine import Engine
from engine.infill import infill_prompt
from lsp_server.bench import BenchError
from lsp_server.bench.completers import CompleterSettings, cursor_position, load_pipeline, task_document
from lsp_server.bench.tasks import InfillTask
from lsp_server.completion_mode import CompletionMode

BASELINES = ("transformers",)
REFERENCE_TRANSFORMERS = "transformers==5.23.0"  # the version the engine is tested against
# engine.save_checkpoint writes no vision_config, and transformers would then build Gemma 4's full vision tower
# (hundreds of MB, unused for text): a tiny one takes its place. Its weights are missing from the checkpoint and
# initialised at random, which changes nothing for text prompts.
TINY_VISION_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=2, head_dim=16)
VISION_WEIGHTS = ("model.encoder.vision_tower.", "model.encoder.embed_vision.")


def make_baseline(name: str, settings: CompleterSettings) -> TransformersBaseline:
    if name == "transformers":
        return TransformersBaseline(settings)
    raise BenchError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


class TransformersBaseline:
    """Our engine and the reference implementation side by side on each task's prompt.

    Both encode the whole prompt: each generation runs on an Engine with an empty prompt cache around the loaded
    model. (The cache a serving engine keeps reuses the prefix a prompt shares with the previous one; encoding a
    prompt in two pieces rounds differently in the last float bits, which can flip a sampled token.)"""

    name = "transformers"

    def __init__(self, settings: CompleterSettings):
        if importlib.util.find_spec("transformers") is None:
            raise BenchError(f"--baseline transformers needs transformers, which is not installed "
                             f"(pip install '{REFERENCE_TRANSFORMERS}', or the dev extra)")
        import transformers

        if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
            raise BenchError(f"transformers {transformers.__version__} has no DiffusionGemma; "
                             f"install {REFERENCE_TRANSFORMERS}")
        self.pipeline, self.settings = load_pipeline(settings)
        self.engine = self.pipeline.model
        self.exact = self.engine.mode == "exact"
        self.reference = _load_reference(self.engine, self.engine.dtype if self.exact else torch.float32)
        generation = self.engine.generation_settings(self.settings.max_new_tokens)
        # Both sides get these explicitly; the rest (EOS, pad, sampler) each reads from generation_config.json.
        self.generation = {"max_new_tokens": generation.max_new_tokens,
                           "max_denoising_steps": generation.max_denoising_steps}
        self._warm_up()

    def compare(self, task: InfillTask) -> dict | None:
        """Both generations on the task's prompt: timings and token agreement; None when the context builder
        decides that no completion belongs at the hole (the back-ends then generate nothing either)."""
        context = self.pipeline.context(task_document(task), cursor_position(task.prefix), self.settings,
                                        invoked=True)
        if context.mode is CompletionMode.NONE:
            return None
        _, prompt_ids = infill_prompt(self.engine, context.prompt_prefix(), context.suffix)
        ours, engine_ms, theirs, transformers_ms = self._generate_both(prompt_ids)
        matching = sum(a == b for a, b in zip(ours.tokens, theirs))
        return {
            "engine_ms": engine_ms,
            "transformers_ms": transformers_ms,
            "speed_ratio": transformers_ms / engine_ms,
            "identical_tokens": ours.tokens == theirs,
            "token_agreement": matching / max(len(ours.tokens), len(theirs), 1),
            "new_tokens": len(ours.tokens),
            "prompt_tokens": len(prompt_ids),
        }

    def _generate_both(self, prompt_ids: list[int]):
        """(engine result, engine ms, reference tokens, reference ms) for one prompt and the run's seed."""
        seed = self.settings.seed
        loaded = self.engine
        if self.exact:
            ours_engine = Engine(loaded.model, loaded.generation_config, loaded.tokenizer, loaded.path)
            sampling = "reference"  # the reference's random stream
        else:
            ours_engine, sampling = loaded, "fast"  # as the server runs it
        started = time.perf_counter()
        ours = ours_engine.generate(prompt_ids, seed=seed, sampling=sampling, **self.generation)
        engine_ms = (time.perf_counter() - started) * 1000.0
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=self.engine.device)
        with torch.inference_mode():
            torch.manual_seed(seed)
            started = time.perf_counter()
            theirs = self.reference.generate(prompt, **self.generation).sequences[0, len(prompt_ids):].tolist()
            transformers_ms = (time.perf_counter() - started) * 1000.0
        return ours, engine_ms, theirs, transformers_ms

    def _warm_up(self) -> None:
        """An untimed generation on each side first: the first call pays for lazy initialisation (over a second for
        transformers). The engine has warmed up at load, compiling its denoising step for the prompts' shape when
        it compiles: that is waited for, so the comparison is of steady-state speed."""
        self.engine.denoising_step.wait()
        _, prompt_ids = infill_prompt(self.engine, "def f():\n    return ", "\n")
        self._generate_both(prompt_ids)

    def close(self) -> None:
        self.reference = None
        self.pipeline = self.engine = None


def _load_reference(loaded, dtype: torch.dtype):
    """transformers' DiffusionGemmaForBlockDiffusion on the engine's checkpoint and device, in `dtype`."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, Gemma4VisionConfig

    path = loaded.path
    try:
        config = DiffusionGemmaConfig.from_pretrained(path)
        if "vision_config" not in json.loads((path / "config.json").read_text(encoding="utf-8")):
            config.vision_config = Gemma4VisionConfig(**TINY_VISION_CONFIG)
        with _quiet_transformers():  # its load report lists the missing vision weights; checked below instead
            model, loading = DiffusionGemmaForBlockDiffusion.from_pretrained(
                path, config=config, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BenchError(f"transformers cannot load {path}: {exc}") from None
    missing = [key for key in loading["missing_keys"] if not key.startswith(VISION_WEIGHTS)]
    problems = [*missing, *loading["unexpected_keys"], *loading["mismatched_keys"], *loading["error_msgs"]]
    if problems:
        raise BenchError(f"transformers loads {path} incompletely ({len(problems)} problems, e.g. "
                         f"{sorted(map(str, problems))[0]}): the comparison would not be of the same model")
    return model.to(loaded.device).eval()


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' logging at error level and without progress bars, restored afterwards."""
    from transformers.utils import logging

    verbosity, progress_bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if progress_bars:
            logging.enable_progress_bar()
