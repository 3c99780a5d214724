"""How much code to ask for at the cursor: nothing, one line, several lines, or a whole block body.

Rules, in order (the first that applies wins):

1. Cursor between two identifier characters (``fo|o``): no completion unless explicitly invoked, then one
   line.
2. Code to the right of the cursor on its line: one line, except right after a block opener whose closer
   the editor already inserted (``function f() {|}``): a block; and at the very start of the line (``|foo()``),
   several whole lines inserted above it.
3. Text to the left of the cursor on its line: a block when that text ends a block header (``def f():``,
   ``... {``) outside comments and strings and the block has no body yet, several lines when it has one
   (we insert at the top of it), otherwise one line (we are inside a statement or expression).
4. Blank line inside a bracketed expression (call arguments, list, dict or object literal): one line.
5. Blank line right after a block header whose body is still empty: a block.
6. Any other blank line: several lines.

The per-language inputs (block opener pattern, body node types) come from :mod:`lsp_server.languages` and
can be overridden with :class:`ModeRules`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from lsp_server.documents import Document
from lsp_server.languages import LanguageSpec
from lsp_server.positions import PositionLike, encode_text

# How far above a blank cursor line to look for the block header it may belong to.
_HEADER_LOOKBACK_LINES = 64
_OPENING_BRACKETS = frozenset({"(", "[", "{"})


class CompletionMode(str, Enum):
    """The shape of completion to request."""

    NONE = "none"
    SINGLE_LINE = "single_line"
    MULTI_LINE = "multi_line"
    BLOCK = "block"


@dataclass(frozen=True)
class ModeRules:
    """Language-specific inputs of :func:`decide_mode`; replace fields to override a language's defaults."""

    block_opener: re.Pattern[str] | None
    body_types: frozenset[str]

    @classmethod
    def for_language(cls, spec: LanguageSpec) -> ModeRules:
        """The default rules of a language."""
        return cls(block_opener=spec.block_opener, body_types=spec.body_types)


def decide_mode(
    document: Document, position: PositionLike, invoked: bool = False, rules: ModeRules | None = None
) -> CompletionMode:
    """The completion mode at an LSP position (see the module docstring for the rules)."""
    return decide_mode_at(document, document.offset_at(position), invoked, rules)


def decide_mode_at(
    document: Document, offset: int, invoked: bool = False, rules: ModeRules | None = None
) -> CompletionMode:
    """:func:`decide_mode` for a byte offset."""
    rules = rules or ModeRules.for_language(document.spec)
    line = document.line_at(offset)
    left = document.text_between(document.line_start(line), offset)
    right = document.text_between(offset, document.line_end(line))

    if left and right and _is_identifier_char(left[-1]) and _is_identifier_char(right[0]):
        return CompletionMode.SINGLE_LINE if invoked else CompletionMode.NONE
    if right.strip():
        if _ends_block_header(document, offset, left, rules) and right.lstrip().startswith("}"):
            return CompletionMode.BLOCK
        return CompletionMode.SINGLE_LINE if left else CompletionMode.MULTI_LINE
    if left.strip():
        if not _ends_block_header(document, offset, left, rules):
            return CompletionMode.SINGLE_LINE
        return CompletionMode.BLOCK if _body_is_empty(document, line) else CompletionMode.MULTI_LINE
    if _inside_bracketed_expression(document, offset, rules):
        return CompletionMode.SINGLE_LINE
    header_line = _neighbour_non_blank_line(document, line, step=-1)
    if header_line is not None:
        header_end = document.line_end(header_line)
        if _ends_block_header(document, header_end, document.line_text(header_line), rules) and _body_is_empty(
            document, header_line
        ):
            return CompletionMode.BLOCK
    return CompletionMode.MULTI_LINE


def _is_identifier_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _ends_block_header(document: Document, offset: int, line_prefix: str, rules: ModeRules) -> bool:
    """Whether ``line_prefix`` (the line's text up to ``offset``) ends with a block opener in code.

    A brace opens a block only when it starts a body (not an object literal or initializer list); when
    the parser could not place it (the code around it has errors) the textual match decides.
    """
    if rules.block_opener is None or not rules.block_opener.search(line_prefix):
        return False
    if _inside_comment_or_string(document, offset):
        return False
    brace = line_prefix.rfind("{")
    if brace < 0 or not document.has_syntax:
        return True
    brace_offset = offset - len(encode_text(line_prefix[brace:]))
    node = document.root_at(brace_offset).descendant_for_byte_range(brace_offset, brace_offset + 1)
    parent = node.parent
    return parent is None or parent.has_error or parent.type in rules.body_types


def _inside_comment_or_string(document: Document, offset: int) -> bool:
    """Whether the character before ``offset`` belongs to a comment or string literal."""
    if offset == 0:
        return False
    root = document.root_at(offset)
    if root is None:
        return False
    node = root.descendant_for_byte_range(offset - 1, offset)
    while node is not None:
        if "comment" in node.type or "string" in node.type:
            return True
        node = node.parent
    return False


def _inside_bracketed_expression(document: Document, offset: int, rules: ModeRules) -> bool:
    """Whether the innermost container around ``offset`` is a bracketed expression, not a body."""
    node = document.node_at(offset)
    while node is not None:
        if node.type in rules.body_types:
            return False
        if not node.is_error and node.child_count and node.child(0).type in _OPENING_BRACKETS:
            return node.start_byte < offset < node.end_byte
        node = node.parent
    return False


def _body_is_empty(document: Document, header_line: int) -> bool:
    """Whether no line below a block header is indented deeper than it (the block has no body yet)."""
    body_line = _neighbour_non_blank_line(document, header_line, step=1)
    if body_line is None:
        return True
    return _indent_width(document.line_text(body_line)) <= _indent_width(document.line_text(header_line))


def _indent_width(line_text: str) -> int:
    return len(line_text.expandtabs(4)) - len(line_text.expandtabs(4).lstrip())


def _neighbour_non_blank_line(document: Document, line: int, step: int) -> int | None:
    """The nearest non-blank line above (step -1) or below (step 1) ``line``, looking a bounded distance."""
    stop = line + step * (_HEADER_LOOKBACK_LINES + 1)
    for candidate in range(line + step, max(-1, min(stop, document.line_count)), step):
        if document.line_text(candidate).strip():
            return candidate
    return None
