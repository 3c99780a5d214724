"""What cheaper inference settings cost in quality: dtype and denoising steps, paired on held-out FIM holes.

    OMP_NUM_THREADS=1 python benchmarks/sampler_settings.py --corpus runs/corpus [--holes 600] [--steps 8 6 4]

Every hole (from the corpus's held-out files, never trained on; see engine.training.evaluate) is completed once per
(dtype, steps) setting with the same seed, through `Engine.infill` with the server's sampling. Prints each setting's
mean edit similarity, its paired difference to the first setting and that difference's standard error, and the
median decoder milliseconds per hole (the prompt's encoding is shared by the settings of one dtype: not counted).
For the first setting it also follows the canvas: how often the text after step k already is the final text, and its
edit similarity (whether adaptive stopping could end the denoising earlier without changing the answer). Build the corpus first: `python -m engine.training.corpus build --out runs/corpus`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine  # noqa: E402
from engine.training.evaluate import PREFIX_CHARS, SUFFIX_CHARS, held_out_holes  # noqa: E402
from engine.training.text_metrics import edit_similarity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--steps", nargs="+", type=int, default=[8, 6, 4])
    parser.add_argument("--holes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()

    path = engine.resolve_model_path(args.model)
    engines = {dtype: engine.load(path, device="cpu", dtype=dtype) for dtype in args.dtypes}
    canvas_length = next(iter(engines.values())).config.canvas_length
    holes = held_out_holes(args.corpus, args.holes, canvas_length, args.seed)
    settings = [(dtype, steps) for dtype in args.dtypes for steps in args.steps]
    similarity: dict[tuple[str, int], list[float]] = {setting: [] for setting in settings}
    seconds: dict[tuple[str, int], list[float]] = {setting: [] for setting in settings}
    baseline = settings[0]
    canvases: list[list[str]] = []  # the first setting's canvas text after every step, per hole
    for index, hole in enumerate(holes):
        for dtype, steps in settings:
            texts: list[str] = []
            result = engines[dtype].infill(hole.prefix[-PREFIX_CHARS:], hole.suffix[:SUFFIX_CHARS],
                                           seed=args.seed * 100_000 + index, sampling="fast",
                                           max_denoising_steps=steps,
                                           on_canvas=(lambda canvas: texts.append(canvas.text))
                                           if (dtype, steps) == baseline else None)
            seconds[dtype, steps].append(result.generation.decoder_time_s)
            similarity[dtype, steps].append(edit_similarity(result.candidates[0].text, hole.middle))
            if texts:
                canvases.append(texts)

    print(f"{path.name}: {len(holes)} held-out holes, seed {args.seed}; paired differences against "
          f"{baseline[0]} / {baseline[1]} steps\n")
    print("| dtype    | steps | edit similarity | difference | std. error | decoder ms |")
    print("|----------|------:|----------------:|-----------:|-----------:|-----------:|")
    for setting in settings:
        differences = [a - b for a, b in zip(similarity[setting], similarity[baseline])]
        error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0.0
        print(f"| {setting[0]:<8} | {setting[1]:>5} | {statistics.fmean(similarity[setting]):>15.4f} "
              f"| {statistics.fmean(differences):>+10.4f} | {error:>10.4f} "
              f"| {statistics.median(seconds[setting]) * 1000:>10.1f} |")

    steps = baseline[1]
    stopped = sum(len(texts) < steps for texts in canvases)
    # A canvas that stopped early keeps its text for the remaining steps.
    canvases = [texts + texts[-1:] * (steps - len(texts)) for texts in canvases]
    print(f"\n{baseline[0]} / {steps} steps, the canvas after step k ({stopped} of {len(canvases)} stopped early):\n")
    print("| step | is the final text | edit similarity |")
    print("|-----:|------------------:|----------------:|")
    for step in range(steps):
        final = statistics.fmean(texts[step] == texts[-1] for texts in canvases)
        similar = statistics.fmean(edit_similarity(texts[step], hole.middle) for texts, hole in zip(canvases, holes))
        print(f"| {step + 1:>4} | {final:>17.2f} | {similar:>15.4f} |")


if __name__ == "__main__":
    main()
