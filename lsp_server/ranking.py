"""Rank candidate middles by the syntax errors they introduce, then by model score.

Sampling several canvases is only useful if the best one can be told apart: each candidate is spliced
into the document at the cursor and the tree around it (the document's tree, or for large documents the
segment that contains the cursor) is re-parsed incrementally; the candidate's penalty is the number of
tree-sitter ERROR and MISSING nodes after the splice minus the number before. A candidate that completes
half-typed code can therefore score below zero. Documents without a grammar rank by score alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import tree_sitter

from lsp_server.documents import Document
from lsp_server.positions import PositionLike


@dataclass(frozen=True)
class RankedCandidate:
    """A candidate middle with its model score and the syntax errors it adds (negative: it removes some)."""

    text: str
    score: float
    syntax_errors_added: int


def count_syntax_errors(node: tree_sitter.Node) -> int:
    """Number of ERROR and MISSING nodes in ``node``'s subtree (only error-bearing subtrees are visited)."""
    count = 0
    pending = [node] if node.has_error else []
    while pending:
        current = pending.pop()
        if current.is_error or current.is_missing:
            count += 1
        pending.extend(child for child in current.children if child.has_error)
    return count


def syntax_errors_added(document: Document, offset: int, text: str) -> int:
    """ERROR/MISSING nodes gained (or, negative, lost) by inserting ``text`` at byte ``offset``."""
    before = document.root_at(offset)
    if before is None:
        return 0
    return count_syntax_errors(document.root_with_insertion(offset, text)) - count_syntax_errors(before)


def rank_candidates(
    document: Document, position: PositionLike, candidates: Iterable[tuple[str, float]]
) -> list[RankedCandidate]:
    """Candidates ``(text, score)`` best first: fewest syntax errors added, then highest score.

    Identical texts are merged, keeping the highest score. Ties keep the input order.
    """
    offset = document.offset_at(position)
    best_scores: dict[str, float] = {}
    for candidate in candidates:
        if not (
            isinstance(candidate, tuple)
            and len(candidate) == 2
            and isinstance(candidate[0], str)
            and isinstance(candidate[1], (int, float))
        ):
            raise TypeError(f"a candidate must be a (text, score) pair, got {candidate!r}")
        text, score = candidate
        if text not in best_scores or score > best_scores[text]:
            best_scores[text] = score
    ranked = [
        RankedCandidate(text, score, syntax_errors_added(document, offset, text)) for text, score in best_scores.items()
    ]
    ranked.sort(key=lambda candidate: (candidate.syntax_errors_added, -candidate.score))
    return ranked
