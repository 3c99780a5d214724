"""Candidates copied from the open documents: the rest of lines that begin as the cursor's line does.

Code repeats itself (``self.assertEqual(``, ``logger.info(``, the same call with other arguments), and a line
typed before often finishes the one being typed. At the end of a line whose text so far is long enough, every other
line of the document and of the other open documents that starts with the same text (indentation aside) offers the
rest of it. The model then judges them with its own candidates (``score_middles``): a copied line only wins when the
model finds it likely here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from lsp_server.documents import Document

# Shorter starts match too much to be worth a candidate ("x = " begins half the lines of a file).
MIN_START_CHARS = 6


def line_candidates(document: Document, offset: int, others: Iterable[Document] = (), limit: int = 4) -> list[str]:
    """Up to ``limit`` line endings for the cursor at byte ``offset``: most often seen first, then nearest."""
    if limit < 1:
        return []
    line = document.line_at(offset)
    before = document.text_between(document.line_start(line), offset)
    after = document.line_text(line)[len(before):]
    start = before.lstrip()
    if len(start) < MIN_START_CHARS or after.strip():
        return []
    counts: Counter[str] = Counter()
    distance: dict[str, int] = {}
    sources = [(document, line), *((other, None) for other in others if other is not document)]
    for rank, (source, cursor_line) in enumerate(sources):
        for number, text in enumerate(source.text.split("\n")):
            if number == cursor_line:
                continue
            stripped = text.strip()
            if len(stripped) > len(start) and stripped.startswith(start):
                rest = stripped[len(start):]
                counts[rest] += 1
                # Lines of the cursor's document come before other documents', nearer ones first.
                away = abs(number - cursor_line) if cursor_line is not None else 10**9 * rank + number
                distance[rest] = min(distance.get(rest, away), away)
    return sorted(counts, key=lambda rest: (-counts[rest], distance[rest]))[:limit]
