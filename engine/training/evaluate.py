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
from dataclasses import asdict, dataclass
from pathlib import Path

import engine
from engine.training.corpus import load_documents
from engine.training.fim import choose_hole


@dataclass(frozen=True)
class HeldOutScore:
    checkpoint: str
    tokens_seen: int | None
    holes: int
    exact_match: float
    exact_match_by_kind: dict[str, float]
    seconds: float


def held_out_holes(corpus: Path, count: int, canvas_length: int, seed: int = 0, language: str = "python"):
    documents = [d for d in load_documents(corpus, "heldout", [language]) if d.text.strip()]
    if not documents:
        raise ValueError(f"{corpus}: no held-out {language} documents")
    rng = random.Random(seed)
    holes = []
    while len(holes) < count:
        document = rng.choice(documents)
        hole = choose_hole(document.text, rng, document.language, max_middle_chars=4 * (canvas_length - 1))
        if hole.middle.strip():
            holes.append(hole)
    return holes


# The embedded model trains on 256-token prompts (3.5 bytes per token on Python): keep about that much context.
PREFIX_CHARS, SUFFIX_CHARS = 700, 200


def score_checkpoint(checkpoint: Path, holes, seed: int = 0) -> HeldOutScore:
    eng = engine.load(checkpoint, device="cpu")
    started = time.perf_counter()
    hits: dict[str, list[bool]] = {}
    for index, hole in enumerate(holes):
        middle = eng.infill(hole.prefix[-PREFIX_CHARS:], hole.suffix[:SUFFIX_CHARS], seed=seed + index).middle
        hits.setdefault(hole.kind, []).append(middle.strip() == hole.middle.strip())
    every = [hit for kind in hits.values() for hit in kind]
    tokens_file = checkpoint / "tokens_seen"
    return HeldOutScore(
        checkpoint=str(checkpoint),
        tokens_seen=int(tokens_file.read_text()) if tokens_file.exists() else None,
        holes=len(every),
        exact_match=sum(every) / len(every),
        exact_match_by_kind={kind: sum(v) / len(v) for kind, v in sorted(hits.items())},
        seconds=round(time.perf_counter() - started, 1),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--checkpoint", type=Path)
    target.add_argument("--snapshots", type=Path, help="a directory of step-NNNNNN checkpoints")
    parser.add_argument("--holes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="append one JSON line per checkpoint here")
    args = parser.parse_args(argv)
    checkpoints = [args.checkpoint] if args.checkpoint else sorted(p for p in args.snapshots.iterdir() if p.is_dir())
    canvas_length = engine.load(checkpoints[0], device="cpu").config.canvas_length
    holes = held_out_holes(args.corpus, args.holes, canvas_length, args.seed)
    for checkpoint in checkpoints:
        score = score_checkpoint(checkpoint, holes, args.seed)
        line = json.dumps(asdict(score))
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
