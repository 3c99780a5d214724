"""Exact match on held-out fill-in-the-middle holes, for one checkpoint or every training snapshot (learning curve).

Holes are drawn from the corpus's held-out files (split by file, never trained on) with a fixed seed, chosen like the
training holes, and completed through `Engine.infill`, the path the server uses.

    python -m engine.training.evaluate --corpus runs/corpus --checkpoint runs/train/checkpoint --holes 200
    python -m engine.training.evaluate --corpus runs/corpus --snapshots runs/train/snapshots --holes 100
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import engine
from engine.infill import text_tokenizer
from engine.training.corpus import load_documents
from engine.training.fim import DEFAULT_HOLE_WEIGHTS, FimBatchStream, choose_hole
from engine.training.text_metrics import edit_similarity, exact_match
from engine.training.objective import TrainSettings, training_loss


@dataclass(frozen=True)
class HeldOutScore:
    checkpoint: str
    tokens_seen: int | None
    holes: int
    exact_match: float
    edit_similarity: float
    exact_match_by_kind: dict[str, float]
    loss: dict[str, float]  # the training objective's terms on held-out batches (no gradient)
    seconds: float
    # Per hole, in order: for paired comparisons of checkpoints on the same holes (not part of the summary).
    edit_similarities: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "edit_similarities"}


def held_out_holes(corpus: Path, count: int, canvas_length: int, seed: int = 0, language: str = "python",
                   kinds: tuple[str, ...] | None = None):
    """`count` non-empty holes from held-out files, of the training mix of kinds or only of `kinds`."""
    weights = DEFAULT_HOLE_WEIGHTS if kinds is None else {kind: 1.0 for kind in kinds}
    documents = [d for d in load_documents(corpus, "heldout", [language]) if d.text.strip()]
    if not documents:
        raise ValueError(f"{corpus}: no held-out {language} documents")
    rng = random.Random(seed)
    holes = []
    while len(holes) < count:
        document = rng.choice(documents)
        hole = choose_hole(document.text, rng, document.language, 4 * (canvas_length - 1), weights)
        if hole.middle.strip() and (kinds is None or hole.kind in kinds):
            holes.append(hole)
    return holes


# The embedded model trains on 256-token prompts (3.5 bytes per token on Python): keep about that much context.
PREFIX_CHARS, SUFFIX_CHARS = 700, 200


def held_out_loss(eng: engine.Engine, corpus: Path, batches: int, max_prompt_tokens: int, seed: int) -> dict:
    """Mean training-objective terms over fixed held-out FIM batches: a learning signal long before exact matches."""
    documents = load_documents(corpus, "heldout", ["python"])
    settings = TrainSettings(canvas_length=eng.config.canvas_length, max_prompt_tokens=max_prompt_tokens)
    stream = iter(FimBatchStream(documents, text_tokenizer(eng), settings.batch_size, max_prompt_tokens,
                                 eng.config.canvas_length, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    totals = {"loss": 0.0, "diffusion_loss": 0.0, "ar_loss": 0.0}
    with torch.no_grad():
        for _ in range(batches):
            for name, value in zip(totals, training_loss(eng.model, next(stream), settings, generator)):
                totals[name] += value.item() / batches
    return {name: round(value, 4) for name, value in totals.items()}


def score_checkpoint(checkpoint: Path, holes, corpus: Path, loss_batches: int, max_prompt_tokens: int,
                     seed: int = 0, **generation_overrides) -> HeldOutScore:
    eng = engine.load(checkpoint, device="cpu")
    started = time.perf_counter()
    hits: dict[str, list[bool]] = {}
    similarities = []
    for index, hole in enumerate(holes):
        middle = eng.infill(hole.prefix[-PREFIX_CHARS:], hole.suffix[:SUFFIX_CHARS], seed=seed + index,
                            **generation_overrides).middle
        hits.setdefault(hole.kind, []).append(exact_match(middle, hole.middle))
        similarities.append(edit_similarity(middle, hole.middle))
    every = [hit for kind in hits.values() for hit in kind]
    tokens_file = checkpoint / "tokens_seen"
    return HeldOutScore(
        checkpoint=str(checkpoint),
        tokens_seen=int(tokens_file.read_text()) if tokens_file.exists() else None,
        holes=len(every),
        exact_match=sum(every) / len(every),
        edit_similarity=round(sum(similarities) / len(similarities), 4),
        exact_match_by_kind={kind: sum(v) / len(v) for kind, v in sorted(hits.items())},
        loss=held_out_loss(eng, corpus, loss_batches, max_prompt_tokens, seed),
        seconds=round(time.perf_counter() - started, 1),
        edit_similarities=similarities,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--checkpoint", type=Path)
    target.add_argument("--snapshots", type=Path, help="a directory of step-NNNNNN checkpoints")
    parser.add_argument("--holes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss-batches", type=int, default=8, help="held-out batches for the loss")
    parser.add_argument("--max-prompt-tokens", type=int, default=256, help="as in training")
    parser.add_argument("--out", type=Path, help="append one JSON line per checkpoint here")
    args = parser.parse_args(argv)
    checkpoints = [args.checkpoint] if args.checkpoint else sorted(p for p in args.snapshots.iterdir() if p.is_dir())
    canvas_length = engine.load(checkpoints[0], device="cpu").config.canvas_length
    holes = held_out_holes(args.corpus, args.holes, canvas_length, args.seed)
    for checkpoint in checkpoints:
        score = score_checkpoint(checkpoint, holes, args.corpus, args.loss_batches, args.max_prompt_tokens, args.seed)
        line = json.dumps(score.summary())
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
