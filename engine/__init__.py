"""DiffusionGemma block-diffusion inference engine (no LSP imports).

    import engine
    eng = engine.load("path/to/checkpoint", device="auto", dtype=None)
    result = eng.generate(prompt_ids, max_new_tokens=64, seed=0)
"""

from engine.config import ConfigError, GenerationConfig, ModelConfig
from engine.engine import Engine, GenerationResult, load
from engine.generate import GenerationCancelled, StepEvent
from engine.loader import CheckpointError, save_checkpoint

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Engine",
    "GenerationCancelled",
    "GenerationConfig",
    "GenerationResult",
    "ModelConfig",
    "StepEvent",
    "load",
    "save_checkpoint",
]
