"""The model shipped inside the package: what `--model embedded` (the default) loads."""

from __future__ import annotations

import json

import engine
from engine.engine import EMBEDDED_MODEL_DIR

SIMPLE_HOLE = ("def add(a, b):\n    return ", "\n\n\nprint(add(1, 2))\n")


def test_embedded_model_is_the_default_and_fits_the_size_budget():
    assert engine.resolve_model_path("embedded") == EMBEDDED_MODEL_DIR
    files = {p.name: p.stat().st_size for p in EMBEDDED_MODEL_DIR.iterdir()}
    for required in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md"):
        assert required in files
    assert sum(files.values()) <= 25 * 1024 * 1024
    config = json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "diffusion_gemma"  # the released model's checkpoint format


def test_embedded_model_infills_a_simple_hole_deterministically():
    eng = engine.load(engine.resolve_model_path("embedded"), device="cpu")
    assert eng.tokenizer is not None
    first = eng.infill(*SIMPLE_HOLE, seed=0)
    again = eng.infill(*SIMPLE_HOLE, seed=0)
    assert first.prompt_format == "fim"
    assert first.middle == again.middle
    assert first.candidates[0].finished, "the model must end the hole with <eos> within one canvas"
    assert first.middle.strip(), "a return line needs an expression"
