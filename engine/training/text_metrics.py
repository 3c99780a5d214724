"""Text metrics for completions against a reference: exact match and edit similarity.

Shared by the training evaluation (engine.training.evaluate) and the benchmark runner (lsp_server.bench).
"""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions), bit-parallel (Myers 1999 / Hyyrö 2003): one pass over
    the longer string with Python integers as bit vectors over the shorter one."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    match_masks: dict[str, int] = {}
    for index, char in enumerate(b):
        match_masks[char] = match_masks.get(char, 0) | (1 << index)
    mask = (1 << m) - 1
    top = 1 << (m - 1)
    plus_vertical, minus_vertical, distance = mask, 0, m
    for char in a:
        match = match_masks.get(char, 0)
        x_vertical = match | minus_vertical
        x_horizontal = (((match & plus_vertical) + plus_vertical) ^ plus_vertical) | match
        plus_horizontal = minus_vertical | (~(x_horizontal | plus_vertical) & mask)
        minus_horizontal = plus_vertical & x_horizontal
        if plus_horizontal & top:
            distance += 1
        elif minus_horizontal & top:
            distance -= 1
        plus_horizontal = ((plus_horizontal << 1) | 1) & mask  # the | 1: row 0 grows by one per column (global)
        minus_horizontal = (minus_horizontal << 1) & mask
        plus_vertical = minus_horizontal | (~(x_vertical | plus_horizontal) & mask)
        minus_vertical = plus_horizontal & x_vertical
    return distance


def _normalize(text: str) -> str:
    """Surrounding whitespace is ignored by the text metrics, as in SantaCoder-FIM and CrossCodeEval."""
    return text.strip()


def exact_match(completion: str, reference: str) -> bool:
    return _normalize(completion) == _normalize(reference)


def edit_similarity(completion: str, reference: str) -> float:
    """1 - edit distance / length of the longer text; 1.0 for two empty texts."""
    a, b = _normalize(completion), _normalize(reference)
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest
