"""Pilot: do likelihood reranking and lines copied from the document pay? Paired, through the server's pipeline.

    OMP_NUM_THREADS=1 python benchmarks/candidate_ranking.py --corpus runs/corpus \
        --checkpoint runs/train/snapshots/step-002072 --holes 100

Holes come from the corpus's held-out files (never trained on): line ends, the kind editors ask for most, and the
training mix of kinds. Each goes through ``InfillPipeline.complete`` (context, model, post-processing, ranking) as
an editor would send it: the document is the file with the hole emptied, the cursor at the hole. Every
configuration runs on the same holes with the same seeds. Prints exact match and edit similarity of the first
suggestion per configuration, how often it is a copied line, and the p50 time of a completion.

Configurations: the model's candidates alone, one, or four ranked by the model's tokens per forward, or four
reranked by the model's likelihood of each between prefix and suffix (``rerank``); and one or four candidates with up
to four line endings copied from the document (``documentCandidates``), reranked. The server's default is one
candidate with the copied lines, reranked. The last column is each configuration's edit similarity minus the
default's, hole by hole (mean ± standard error).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.training.evaluate import held_out_holes  # noqa: E402
from engine.training.text_metrics import edit_similarity, exact_match  # noqa: E402
from lsp_server.documents import Document  # noqa: E402
from lsp_server.pipeline import InfillPipeline, load_model  # noqa: E402
from lsp_server.settings import Settings  # noqa: E402

# Every setting the configurations differ in is explicit: the server's defaults are one of them.
CONFIGURATIONS = {
    "1 candidate": {"candidates": 1, "document_candidates": 0, "rerank": False},
    "4 candidates, tokens/forward": {"candidates": 4, "document_candidates": 0, "rerank": False},
    "4 candidates, reranked": {"candidates": 4, "document_candidates": 0, "rerank": True},
    "1 candidate + document lines, reranked (the default)": {"candidates": 1, "document_candidates": 4,
                                                             "rerank": True},
    "4 candidates + document lines, reranked": {"candidates": 4, "document_candidates": 4, "rerank": True},
}
DEFAULT = "1 candidate + document lines, reranked (the default)"


def run(pipeline: InfillPipeline, settings: Settings, holes, seed: int) -> dict[str, list]:
    """First suggestion's exact match and edit similarity per hole, whether it was a copied line, and its time."""
    rows: dict[str, list] = {"hit": [], "similarity": [], "copied": [], "ms": []}
    for index, hole in enumerate(holes):
        document = Document("file:///heldout/hole.py", hole.prefix + hole.suffix, language_id="python")
        position = document.position_at(len(hole.prefix.encode("utf-8")))
        completion = pipeline.complete(document, position, replace(settings, seed=seed + index), invoked=True)
        text = completion.text or ""
        rows["hit"].append(exact_match(text, hole.middle))
        rows["similarity"].append(edit_similarity(text, hole.middle))
        copied = pipeline.document_candidates(document, position, settings)
        rows["copied"].append(bool(text) and text.strip() in {c.strip() for c in copied})
        rows["ms"].append(completion.timings_ms["total"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, or embedded")
    parser.add_argument("--holes", type=int, default=100, help="holes per set (line ends; the training mix)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    base = Settings(model=args.checkpoint)
    pipeline = InfillPipeline(load_model(base))
    canvas = pipeline.model.config.canvas_length
    sets = {"line ends": held_out_holes(args.corpus, args.holes, canvas, args.seed, kinds=("line_end",)),
            "training mix": held_out_holes(args.corpus, args.holes, canvas, args.seed)}
    print(f"candidate ranking pilot: {args.checkpoint}, {args.holes} held-out holes per set, seed {args.seed}, "
          f"through InfillPipeline.complete")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    print("| holes | configuration | exact match | edit similarity | copied line | p50 ms | edit sim − default |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for set_name, holes in sets.items():
        # The copied lines alone, most frequent first, without the model: what the model's judgement adds to them.
        firsts = []
        for hole in holes:
            document = Document("file:///heldout/hole.py", hole.prefix + hole.suffix, language_id="python")
            copied = pipeline.document_candidates(document, document.position_at(len(hole.prefix.encode("utf-8"))),
                                                  replace(base, document_candidates=1))
            firsts.append(copied[0] if copied else "")
        print(f"| {set_name} | first document line, no model | "
              f"{statistics.fmean(exact_match(f, h.middle) for f, h in zip(firsts, holes)):.3f} | "
              f"{statistics.fmean(edit_similarity(f, h.middle) for f, h in zip(firsts, holes)):.3f} | "
              f"{statistics.fmean(bool(f) for f in firsts):.2f} | | |")
        runs = {name: run(pipeline, replace(base, **changes), holes, args.seed)
                for name, changes in CONFIGURATIONS.items()}
        for name, rows in runs.items():
            print(f"| {set_name} | {name} | {statistics.fmean(rows['hit']):.3f} | "
                  f"{statistics.fmean(rows['similarity']):.3f} | {statistics.fmean(rows['copied']):.2f} | "
                  f"{statistics.median(rows['ms']):.0f} | {paired(rows['similarity'], runs[DEFAULT]['similarity'])} |",
                  flush=True)


def paired(values: list[float], baseline: list[float]) -> str:
    """Mean ± standard error of the hole-by-hole difference (empty for the baseline itself)."""
    if values is baseline:
        return ""
    differences = [a - b for a, b in zip(values, baseline)]
    return f"{statistics.fmean(differences):+.4f} ± {statistics.stdev(differences) / len(differences) ** 0.5:.4f}"


if __name__ == "__main__":
    main()
