"""Serving mode against exact mode: the same model? Logit differences on the same inputs, quality paired by hole.

    OMP_NUM_THREADS=1 python benchmarks/serving_quality.py [--model embedded|PATH] [--random-checkpoint]
        [--corpus runs/corpus] [--holes 200] [--logit-prompts 16] [--dtype auto] [--seed 0] [--no-compile]
        [--quantization [SCHEME ...]]

Exact mode is float32 with the reference's random stream (sampling "reference", bit-identical to transformers);
serving mode is the language server's: --dtype (auto: bfloat16 on CPUs with bf16 instructions) with sampling
"fast". See engine/training/serving_check.py.

* Logits: the infill prompts of --logit-prompts holes (held-out corpus holes, or holes cut from the test fixtures'
  sample.py without a corpus) and a noise canvas each, through both loads: the encoder's next-token logits, one
  decoder step, and one decoder step self-conditioned on the exact model's step-1 logits. Max and mean |Δ logit|,
  max |Δ log-prob|, the largest total-variation distance between the two softmaxes, and the argmax agreement.
* Quality: --holes held-out holes completed in both modes through `Engine.infill` with the same per-hole seed
  (seed + i, as engine.training.evaluate) and the prompt cuts of evaluate.py. Mean edit similarity and exact match
  per mode, the paired difference serving - exact with its standard error, and whether it is within 2 standard
  errors. Needs the corpus (`python -m engine.training.corpus build --out runs/corpus`); skipped without it.

--random-checkpoint also checks a tiny random checkpoint (tests/checkpoints.py), built into a temporary directory:
its output is noise, so its quality figures only show that the machinery runs; its logits test the numerics.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import engine  # noqa: E402
from checkpoints import FIXTURES, build_checkpoint  # noqa: E402
from engine.config import load_configs  # noqa: E402
from engine.kernels.quantize import SCHEMES  # noqa: E402
from engine.training.serving_check import (  # noqa: E402
    PARTS, hole_prompts, logit_differences, paired_quality, quantization_quality,
)
from engine.training.evaluate import held_out_holes  # noqa: E402
from engine.training.fim import choose_hole  # noqa: E402

PART_NAMES = {"encoder": "encoder next token", "decoder": "decoder step 1", "decoder_sc": "decoder with SC"}


def fixture_holes(count: int, canvas_length: int, seed: int):
    """Holes cut from tests/fixtures/sample.py: logit inputs when there is no corpus."""
    text = (FIXTURES / "sample.py").read_text(encoding="utf-8")
    rng = random.Random(seed)
    return [choose_hole(text, rng, "python", 4 * (canvas_length - 1)) for _ in range(count)]


def logits_table(rows: list[tuple[str, dict]]) -> None:
    print("| checkpoint | dtypes | part | positions | max abs Δ logit | mean abs Δ logit | max abs Δ log-prob "
          "| max TV | argmax agreement |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, result in rows:
        dtypes = f"{result['exact_dtype']} / {result['serving_dtype']}"
        for part in PARTS:
            p = result["parts"][part]
            print(f"| {name} | {dtypes} | {PART_NAMES[part]} | {p['positions']} | {p['max_abs_logit']:.4f} "
                  f"| {p['mean_abs_logit']:.5f} | {p['max_abs_log_prob']:.4f} | {p['max_total_variation']:.4f} "
                  f"| {p['argmax_agreement']:.3f} |")


def quality_table(rows: list[tuple[str, dict]]) -> None:
    print("| checkpoint | mode | dtype | sampling | holes | edit similarity | exact match | seconds |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name, result in rows:
        for mode in ("exact", "serving"):
            m = result[mode]
            label = f"{m['mode']}, compiled" if m["compiled"] else m["mode"]
            print(f"| {name} | {label} | {m['dtype']} | {m['sampling']} | {result['holes']} "
                  f"| {m['edit_similarity']:.4f} | {m['exact_match']:.3f} | {m['seconds']:.1f} |")
    print()
    print("| checkpoint | Δ edit similarity (serving - exact) | std. error | within noise (2 s.e.) "
          "| Δ exact match | std. error | same middles |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, result in rows:
        print(f"| {name} | {result['edit_similarity_difference']:+.4f} "
              f"| {result['edit_similarity_standard_error']:.4f} "
              f"| {'yes' if result['within_noise'] else 'NO'} | {result['exact_match_difference']:+.3f} "
              f"| {result['exact_match_standard_error']:.3f} | {result['same_middles']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, or a checkpoint directory")
    parser.add_argument("--random-checkpoint", action="store_true",
                        help="also check a tiny random checkpoint built with tests/checkpoints.py")
    parser.add_argument("--corpus", type=Path, default=ROOT / "runs" / "corpus")
    parser.add_argument("--holes", type=int, default=200, help="held-out holes for the paired quality")
    parser.add_argument("--logit-prompts", type=int, default=16, help="prompts for the logit differences")
    parser.add_argument("--dtype", default="auto", help="serving mode's dtype (the server's setting)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true", help="serving mode's step eager (default: compiled, waited for)")
    parser.add_argument("--quantization", nargs="*", metavar="SCHEME",
                        help="also pair serving mode with quantised experts (int4-g32 int4-g64 fp8; no scheme: all "
                             "three) against unquantised experts on the same holes")
    args = parser.parse_args()

    threads = os.environ.get("OMP_NUM_THREADS")
    print("    " + (f"OMP_NUM_THREADS={threads} " if threads else "") + "python " + shlex.join(sys.argv) + "\n")
    has_corpus = (args.corpus / "heldout.jsonl").is_file()

    with tempfile.TemporaryDirectory(prefix="serving-quality-") as scratch:
        checkpoints = [(str(args.model), engine.resolve_model_path(args.model))]
        if args.random_checkpoint:
            checkpoints.append(("random tiny", build_checkpoint(Path(scratch) / "random", kind="random")))

        logit_rows, quality_rows, quantized_rows = [], [], []
        for name, path in checkpoints:
            canvas_length = load_configs(path)[0].canvas_length
            if has_corpus:
                inputs = held_out_holes(args.corpus, args.logit_prompts, canvas_length, args.seed)
            else:
                inputs = fixture_holes(args.logit_prompts, canvas_length, args.seed)
            logit_rows.append((name, logit_differences(path, hole_prompts(path, inputs), serving_dtype=args.dtype,
                                                       seed=args.seed)))
            if has_corpus and args.holes >= 2:
                holes = held_out_holes(args.corpus, args.holes, canvas_length, args.seed)
                quality_rows.append((name, paired_quality(path, holes, args.seed, serving_dtype=args.dtype,
                                                          compile=not args.no_compile)))
                if args.quantization is not None:
                    quantized_rows.append((name, quantization_quality(
                        path, holes, args.seed, schemes=args.quantization or SCHEMES, dtype=args.dtype)))

    source = f"held-out holes of {args.corpus}" if has_corpus else "holes of tests/fixtures/sample.py (no corpus)"
    print(f"## Logits, exact / serving, on the same inputs ({args.logit_prompts} prompts: {source}, "
          f"one noise canvas each)\n")
    logits_table(logit_rows)
    print()
    if not has_corpus:
        print(f"## Paired quality: skipped, no corpus at {args.corpus} (no heldout.jsonl); build one with\n"
              f"    python -m engine.training.corpus build --out {args.corpus}")
        return
    if args.holes < 2:
        print("## Paired quality: skipped, --holes must be at least 2")
        return
    print(f"## Paired quality on {args.holes} held-out holes, seed {args.seed} (hole i: seed + i in both modes)\n")
    quality_table(quality_rows)
    if quantized_rows:
        print(f"\n## Quantised experts against unquantised ones, serving mode, the same {args.holes} holes and "
              f"random stream\n")
        quantization_table(quantized_rows)


def quantization_table(rows: list[tuple[str, dict]]) -> None:
    print("| checkpoint | experts | edit similarity | exact match | Δ edit similarity | std. error | within noise "
          "| same middles | seconds |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for name, result in rows:
        for variant, m in result["variants"].items():
            if "unfit" in m:
                print(f"| {name} | {variant} | n/a: {m['unfit']} | | | | | | |")
                continue
            paired = (f"{m['edit_similarity_difference']:+.4f} | {m['edit_similarity_standard_error']:.4f} | "
                      f"{'yes' if m['within_noise'] else 'NO'} | {m['same_middles']:.2f}"
                      if "edit_similarity_difference" in m else " |  |  | ")
            print(f"| {name} | {variant} | {m['edit_similarity']:.4f} | {m['exact_match']:.3f} | {paired} "
                  f"| {m['seconds']:.1f} |")


if __name__ == "__main__":
    main()
