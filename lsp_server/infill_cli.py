"""``diffgemma-infill``: one completion at a position of a file, through the server's pipeline.

    diffgemma-infill app.py --line 12 --character 9 [--model PATH] [--json] [--show-canvas]

Lines and characters count from 1, as editors and compilers show them; characters are Unicode code points.
Prints the completion (nothing when there is none at that position), or with --json the completion with its
candidates, timings and context sizes. --show-canvas redraws the denoising canvas on stderr after every step.
Exit status: 0 after a run (with or without a completion), 2 for bad arguments, an unreadable file or a model
that does not load.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from engine import EMBEDDED_MODEL, CanvasText
from lsp_server.documents import Document
from lsp_server.pipeline import Completion, InfillPipeline, load_model
from lsp_server.positions import PositionEncoding
from lsp_server.remote import RemoteError
from lsp_server.settings import DTYPE_CHOICES, DTYPE_HELP, MODEL_HELP, Settings, apply_changes


class CanvasView:
    """Shows each denoising step: redrawn in place on a terminal, one frame after another elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.in_place = stream.isatty()
        self.rows_drawn = 0

    def draw(self, canvas: CanvasText) -> None:
        text = "".join(ch if ch.isprintable() or ch in "\n\t" else f"\\x{ord(ch):02x}" for ch in canvas.text)
        frame = (f"canvas {canvas.block + 1}, step {canvas.step}/{canvas.max_steps}, "
                 f"{canvas.accepted_fraction:.0%} accepted\n{text}\n")
        if self.in_place:
            if self.rows_drawn:
                self.stream.write(f"\x1b[{self.rows_drawn}F\x1b[J")  # back to the frame's first row, clear below
            columns = max(1, shutil.get_terminal_size().columns)
            self.rows_drawn = sum(max(1, math.ceil(len(row.expandtabs()) / columns))
                                  for row in frame.split("\n")[:-1])
        else:
            frame += "\n"
        self.stream.write(frame)
        self.stream.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffgemma-infill", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="source file to complete in")
    parser.add_argument("--line", type=int, required=True, help="cursor line, from 1")
    parser.add_argument("--character", type=int, required=True, help="cursor column in code points, from 1")
    parser.add_argument("--language", help="LSP languageId (default: from the file extension)")
    parser.add_argument("--model", default=EMBEDDED_MODEL,
                        help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--candidates", type=int, default=1, help="canvases sampled as one batch, then ranked")
    parser.add_argument("--seed", type=int, default=None, help="make the sampling reproducible")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per canvas (default: checkpoint's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: one canvas")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024, help="context budget (prefix, suffix)")
    parser.add_argument("--json", action="store_true", help="print the completion with timings and context sizes")
    parser.add_argument("--show-canvas", action="store_true", help="redraw the canvas on stderr at every step")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def fail(message: str) -> int:
        print(f"diffgemma-infill: {message}", file=sys.stderr)
        return 2

    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return fail(f"cannot read {args.file}: {error}")
    if args.line < 1 or args.character < 1:
        return fail(f"--line and --character count from 1, got {args.line}:{args.character}")

    settings, problems = apply_changes(Settings(), {
        "model": args.model, "device": args.device, "dtype": args.dtype, "candidates": args.candidates,
        "seed": args.seed, "denoisingSteps": args.steps, "maxNewTokens": args.max_new_tokens,
        "maxPromptTokens": args.max_prompt_tokens,
        "compile": False,  # one completion: compiling the step would cost more than it saves
    })
    if problems:
        return fail("; ".join(problems))
    document = Document(args.file.resolve().as_uri(), text, args.language, encoding=PositionEncoding.UTF32)
    # Checked here, in the flags' own 1-based terms (the document's positions count from 0, and LSP clamps a
    # column past the end of a line, where a command-line user has simply made a mistake).
    if args.line > document.line_count:
        return fail(f"{args.file}:{args.line}:{args.character} is not in the file: --line must be 1-"
                    f"{document.line_count}, the file has {document.line_count} lines")
    line_length = len(document.line_text(args.line - 1))
    if args.character > line_length + 1:
        return fail(f"{args.file}:{args.line}:{args.character} is not in the file: line {args.line} has "
                    f"{line_length} characters, so --character must be 1-{line_length + 1}")
    position = (args.line - 1, args.character - 1)

    started = time.perf_counter()
    try:
        pipeline = InfillPipeline(load_model(settings))
    except (ValueError, OSError, RuntimeError) as error:  # CheckpointError and InfillError are ValueErrors
        return fail(f"cannot load the model {settings.model!r}: {error}")
    load_ms = (time.perf_counter() - started) * 1000.0

    view = CanvasView(sys.stderr) if args.show_canvas else None
    try:
        completion = pipeline.complete(document, position, settings, on_canvas=view.draw if view else None)
    except RemoteError as error:
        return fail(f"the remote model failed: {error}")
    if args.json:
        print(json.dumps(_report(args, completion, pipeline.prompt_format, load_ms), indent=2, ensure_ascii=False))
    elif completion.text is not None:
        print(completion.text)
    else:
        print(f"diffgemma-infill: no completion at {args.line}:{args.character} "
              f"(mode {completion.context.mode.value})", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace, completion: Completion, prompt_format: str, load_ms: float) -> dict[str, Any]:
    context, result = completion.context, completion.result
    generation = result.generation if result is not None else None
    timings = {"load": load_ms, **completion.timings_ms}
    if generation is not None:
        timings.update(encoder=generation.encoder_time_s * 1000.0, decoder=generation.decoder_time_s * 1000.0)
    return {
        "file": str(args.file),
        "position": {"line": args.line, "character": args.character},
        "mode": context.mode.value,
        "completion": completion.text,
        "candidates": [{"text": c.text, "score": c.score, "syntaxErrorsAdded": c.syntax_errors_added}
                       for c in completion.ranked],
        "rawCandidates": [] if result is None else [
            {"text": c.text, "score": c.score, "finished": c.finished} for c in result.candidates],
        "promptFormat": prompt_format,
        "timingsMs": timings,
        "context": {
            "prefixTokens": context.prefix_tokens,
            "suffixTokens": context.suffix_tokens,
            "snippetTokens": context.snippet_tokens,
            "promptTokens": generation.prompt_tokens if generation else 0,
            "encodedPromptTokens": generation.encoded_prompt_tokens if generation else 0,
        },
        "generation": None if generation is None else {
            "steps": generation.steps, "blocks": generation.blocks,
            "tokensPerForward": generation.tokens_per_forward,
        },
    }


if __name__ == "__main__":
    sys.exit(main())
