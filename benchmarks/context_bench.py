"""Benchmark: infill context build time and incremental re-parse time on a 20,000-line file.

    python benchmarks/context_bench.py [--file PATH] [--tokenizer tokenizer.json] [--runs 50]

Without ``--file`` the document is a 20,000+ line Python module made of the repository's sample module
(tests/fixtures/sample.py) repeated under distinct names. Token counting uses ``--tokenizer`` (a Hugging
Face tokenizer.json, e.g. the model's) or else a byte-level BPE trained here on the document itself.
The other sample files are open as other documents, so snippet selection is part of the build.

Reports the median and 90th percentile over ``--runs`` cursor positions of
  * build_context (1024-token budget) on the already parsed document, and
  * applying a one-character LSP change plus the incremental re-parse it triggers.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from lsp_server.context import ContextBudget, build_context  # noqa: E402
from lsp_server.documents import Document  # noqa: E402
from lsp_server.languages import language_for  # noqa: E402
from fixtures.support import large_python_source  # noqa: E402  (the 20,000-line file the tests use)

FIXTURES = ROOT / "tests" / "fixtures"
TARGET_LINES = 20_000


def trained_tokenizer(text: str) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def milliseconds(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p90 {p90 * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="document to benchmark (default: a generated 20,000-line module)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json to count tokens with")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.file:
        text, uri = args.file.read_text(encoding="utf-8"), args.file.resolve().as_uri()
    else:
        text, uri = large_python_source(TARGET_LINES), "file:///bench/generated.py"
    tokenizer = Tokenizer.from_file(str(args.tokenizer)) if args.tokenizer else trained_tokenizer(text)

    def count_tokens(piece: str) -> int:
        return len(tokenizer.encode(piece, add_special_tokens=False).ids)

    started = time.perf_counter()
    document = Document(uri, text, language_for(None, uri).language_ids[0])
    document.root_at(0)
    open_seconds = time.perf_counter() - started
    others = [
        Document(path.as_uri(), path.read_text(encoding="utf-8"), language_for(None, path.as_uri()).language_ids[0])
        for path in sorted(FIXTURES.glob("sample.*"))
    ]
    print(f"document: {uri} ({document.line_count} lines, {document.byte_length} bytes, {document.spec.name})")
    print(f"open + first parse: {open_seconds * 1000:.0f} ms ({len(document._segments)} tree segment(s))")

    rng = random.Random(args.seed)
    lines = [rng.randrange(document.line_count) for _ in range(args.runs + 5)]
    budget = ContextBudget(max_tokens=1024)

    build_times = []
    for index, line in enumerate(lines):
        position = (line, len(document.line_text(line)))
        started = time.perf_counter()
        build_context(document, position, count_tokens, budget, others)
        if index >= 5:  # the first builds warm up caches (snippet chunks of the other documents)
            build_times.append(time.perf_counter() - started)

    edit_times = []
    for index, line in enumerate(lines):
        text_of_line = document.line_text(line)
        column = len(text_of_line) - len(text_of_line.lstrip())  # type at the start of the code
        started = time.perf_counter()
        document.apply_change(((line, column), (line, column)), "x")
        document.root_at(document.line_start(line))
        if index >= 5:
            edit_times.append(time.perf_counter() - started)
        document.apply_change(((line, column), (line, column + 1)), "")
        document.root_at(document.line_start(line))

    print(f"build_context (1024 tokens, {len(others)} other documents): {milliseconds(build_times)}")
    print(f"one-character change + incremental re-parse: {milliseconds(edit_times)}")


if __name__ == "__main__":
    main()
