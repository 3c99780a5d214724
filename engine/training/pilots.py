"""Pilot runs: short trainings on one token budget, scored paired on the same held-out holes, to pick the long run.

    python -m engine.training.pilots --corpus runs/corpus --out runs/pilots --tokens 1500000 [--only NAME,...]
    python -m engine.training.pilots --corpus runs/corpus --out runs/pilots --report
    python -m engine.training.pilots --corpus runs/corpus --out runs/branch-pilots --branch-from RUN --steps 350

Branch pilots (`--branch-from`, a run directory: its training_state.pt and checkpoint/) continue a long run instead:
each starts from a copy of that state (weights, optimizer, data position, RNG, schedule) and trains `--steps` more
steps with one objective change that a resumed run may take (engine.training.train.CHANGEABLE_ON_RESUME), against a
branch that changes nothing. Their report adds each branch's edit similarity minus the unchanged branch's, paired
on the same holes, with its standard error.

Each pilot changes one thing against `base` (the shipped model's shape and objective, bf16 autocast). Every pilot
trains from scratch with the same seed, learning-rate schedule and data stream for about `--tokens` training tokens
(the cosine schedule is sized to the budget, so each ends decayed), is exported with the served sampler (canvas 16,
8 denoising steps), then scored on the same held-out holes with the same sampling seeds: exact match, edit
similarity, exact match on line-end holes, and the training objective's terms on fixed held-out batches. The CPU
time is the run's wall time on one thread. A finished pilot is never trained again, and an interrupted one resumes,
so the command can be rerun until every pilot is done.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from dataclasses import asdict
from pathlib import Path

import torch

from engine.training import evaluate
from engine.training.objective import TrainSettings
from engine.training.train import LOG_FILE, STATE_FILE
from engine.training.train import main as train_main

COMMON = {"learning_rate": 2e-3, "warmup_steps": 30, "precision": "bfloat16"}
PILOTS: dict[str, dict] = {
    "base": {},
    "fp32": {"precision": "float32"},
    "ar-every-prompt-position": {"ar_prompt_sample": 1.0},
    "editor-holes-canvas-16": {"hole_mix": "editor", "canvas_length": 16},
    "6-layers": {"num_layers": 6},
}
# The first is the unchanged continuation the others are compared with.
BRANCH_PILOTS: dict[str, dict] = {
    "unchanged": {},
    "high-noise": {"noise_schedule": "high"},
}
SCORES_FILE = "pilots.jsonl"


def pilot_settings(name: str) -> TrainSettings:
    return TrainSettings(**{**COMMON, **PILOTS[name]})


def steps_for(settings: TrainSettings, tokens: int) -> int:
    # Prompts are nearly always full at 256 tokens (the trainer counts real tokens), so this is within ~1%.
    return max(1, round(tokens / (settings.batch_size * (settings.max_prompt_tokens + settings.canvas_length))))


def train_pilot(name: str, corpus: Path, tokenizer: Path, out: Path, tokens: int, minutes: float | None) -> None:
    settings = pilot_settings(name)
    options = {**COMMON, **PILOTS[name], "total_steps": steps_for(settings, tokens)}
    args = ["--corpus", str(corpus), "--tokenizer", str(tokenizer), "--out", str(out), "--resume",
            "--eval-every", "0", "--checkpoint-minutes", "5", "--log-every", "5"]
    if minutes:
        args += ["--minutes", str(minutes)]
    for key, value in options.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    train_main(args)


def finished(out: Path) -> bool:
    state = out / STATE_FILE
    if not state.exists():
        return False
    saved = torch.load(state, weights_only=False, map_location="cpu")
    return saved["step"] >= saved["settings"]["total_steps"]


def saved_step(run: Path) -> int:
    return torch.load(run / STATE_FILE, weights_only=False, map_location="cpu")["step"]


def train_branch(name: str, start: Path, corpus: Path, tokenizer: Path, out: Path, steps: int) -> None:
    """Continue a copy of the run at `start` for `steps` steps with branch `name`'s change (resumable)."""
    if not (out / STATE_FILE).exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(start / "checkpoint", out / "checkpoint", dirs_exist_ok=True)
        shutil.copy2(start / STATE_FILE, out / STATE_FILE)
    remaining = saved_step(start) + steps - saved_step(out)
    if remaining <= 0:
        return
    args = ["--corpus", str(corpus), "--tokenizer", str(tokenizer), "--out", str(out), "--resume",
            "--steps", str(remaining), "--eval-every", "0", "--checkpoint-minutes", "5"]
    for key, value in BRANCH_PILOTS[name].items():
        args += ["--" + key.replace("_", "-"), str(value)]
    train_main(args)


def score_branches(corpus: Path, out: Path, start: Path, holes: int) -> list[dict]:
    """Every branch pilot scored as `score_pilots` scores pilots, with its paired difference to the unchanged one."""
    sets = held_out_sets(corpus, holes)
    begin = torch.load(start / STATE_FILE, weights_only=False, map_location="cpu")
    rows, baseline = [], None
    for name in BRANCH_PILOTS:
        run = out / name
        scores, similarities = held_out_scores(run / "checkpoint", sets, corpus)
        baseline = baseline or similarities
        differences = [a - b for a, b in zip(similarities, baseline)]
        saved = torch.load(run / STATE_FILE, weights_only=False, map_location="cpu")
        rows.append({"pilot": name, "changes": BRANCH_PILOTS[name], "branch_step": begin["step"],
                     "tokens": saved["tokens_seen"] - begin["tokens_seen"], "steps": saved["step"] - begin["step"],
                     **scores, "paired_edit_similarity_difference": round(statistics.fmean(differences), 4),
                     "standard_error": round(statistics.stdev(differences) / len(differences) ** 0.5, 4),
                     "holes": holes})
    return rows


def training_seconds(out: Path) -> float:
    """Time in training steps (checkpoints and restarts excluded): each log record's tokens at its own rate."""
    records = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    return sum((r["tokens"] - previous["tokens"]) / r["tokens_per_s"]
               for previous, r in zip([{"tokens": 0}] + steps, steps))


def held_out_sets(corpus: Path, holes: int) -> tuple[list, list]:
    """The pilots' fixed held-out holes: the training mix, and line ends."""
    return (evaluate.held_out_holes(corpus, holes, canvas_length=16, seed=0),
            evaluate.held_out_holes(corpus, holes, canvas_length=16, seed=1, kinds=("line_end",)))


def held_out_scores(checkpoint: Path, sets: tuple[list, list], corpus: Path) -> tuple[dict, list[float]]:
    """A checkpoint's scores on both sets and the loss on 8 held-out batches; and its edit similarity per hole."""
    mixed, line_ends = sets
    score = evaluate.score_checkpoint(checkpoint, mixed, corpus, loss_batches=8, max_prompt_tokens=256)
    line_end = evaluate.score_checkpoint(checkpoint, line_ends, corpus, loss_batches=0, max_prompt_tokens=256)
    return ({"exact_match": score.exact_match, "edit_similarity": score.edit_similarity,
             "line_end_exact_match": line_end.exact_match, "line_end_edit_similarity": line_end.edit_similarity,
             "heldout_loss": score.loss}, score.edit_similarities + line_end.edit_similarities)


def score_pilots(corpus: Path, out: Path, names: list[str], holes: int) -> list[dict]:
    sets = held_out_sets(corpus, holes)
    rows = []
    for name in names:
        run = out / name
        scores, _ = held_out_scores(run / "checkpoint", sets, corpus)
        saved = torch.load(run / STATE_FILE, weights_only=False, map_location="cpu")
        rows.append({"pilot": name, "changes": PILOTS[name], "tokens": saved["tokens_seen"], "steps": saved["step"],
                     "cpu_minutes": round(training_seconds(run) / 60, 1), "settings": asdict(pilot_settings(name)),
                     **scores, "holes": holes})
    return rows


def markdown(rows: list[dict]) -> str:
    """The pilot table; branch pilots (rows with a paired difference) have that column instead of CPU minutes."""
    branches = bool(rows) and "paired_edit_similarity_difference" in rows[0]
    header = ["branch" if branches else "pilot", "tokens", *([] if branches else ["CPU min"]), "held-out AR CE",
              "held-out diffusion CE", "edit sim", "exact match", "line-end EM", "line-end edit sim",
              *(["edit sim − unchanged (both sets)"] if branches else [])]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        cells = [r["pilot"], f"{r['tokens'] / 1e6:.2f}M", *([] if branches else [r["cpu_minutes"]]),
                 r["heldout_loss"]["ar_loss"], r["heldout_loss"]["diffusion_loss"], r["edit_similarity"],
                 f"{r['exact_match']:.3f}", f"{r['line_end_exact_match']:.3f}", r["line_end_edit_similarity"]]
        if branches:
            cells.append(f"{r['paired_edit_similarity_difference']:+.4f} ± {r['standard_error']:.4f}")
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path,
                        default=Path(__file__).resolve().parents[1] / "embedded_model" / "tokenizer.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=1_500_000, help="training tokens per pilot")
    parser.add_argument("--minutes", type=float, help="stop each pilot after this wall time (resume later)")
    parser.add_argument("--holes", type=int, default=200, help="held-out holes per score")
    parser.add_argument("--only", help="comma-separated pilot names (default: all)")
    parser.add_argument("--report", action="store_true", help="only score the finished pilots")
    parser.add_argument("--branch-from", type=Path, metavar="RUN", help="run the branch pilots from this run's state")
    parser.add_argument("--steps", type=int, default=350, help="training steps per branch pilot")
    args = parser.parse_args(argv)
    if args.branch_from:
        if not args.report:
            for name in BRANCH_PILOTS:
                train_branch(name, args.branch_from, args.corpus, args.tokenizer, args.out / name, args.steps)
        rows = score_branches(args.corpus, args.out, args.branch_from, args.holes)
        with (args.out / SCORES_FILE).open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        print(markdown(rows))
        return
    names = args.only.split(",") if args.only else list(PILOTS)
    unknown = sorted(set(names) - set(PILOTS))
    if unknown:
        parser.error(f"unknown pilot(s) {', '.join(unknown)}; known: {', '.join(PILOTS)}")
    if not args.report:
        for name in names:
            if not finished(args.out / name):
                train_pilot(name, args.corpus, args.tokenizer, args.out / name, args.tokens, args.minutes)
    done = [name for name in names if finished(args.out / name)]
    rows = score_pilots(args.corpus, args.out, done, args.holes)
    with (args.out / SCORES_FILE).open("a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
