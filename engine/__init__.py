"""DiffusionGemma block-diffusion inference engine (no LSP imports).

    import engine
    eng = engine.load("path/to/checkpoint", device="auto", dtype=None)
    result = eng.generate(prompt_ids, max_new_tokens=64, seed=0)
"""

from engine.config import ConfigError, GenerationConfig, ModelConfig
from engine.engine import EMBEDDED_MODEL, Engine, GenerationResult, load, resolve_model_path
from engine.generate import GenerationCancelled, StepEvent
from engine.infill import CanvasText, InfillCandidate, InfillError, InfillResult
from engine.loader import CheckpointError, save_checkpoint

__all__ = [
    "EMBEDDED_MODEL",
    "CanvasText",
    "CheckpointError",
    "ConfigError",
    "Engine",
    "GenerationCancelled",
    "GenerationConfig",
    "GenerationResult",
    "InfillCandidate",
    "InfillError",
    "InfillResult",
    "ModelConfig",
    "StepEvent",
    "load",
    "resolve_model_path",
    "save_checkpoint",
]
