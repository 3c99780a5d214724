"""Turn a raw model middle into the text to insert at the cursor, or None when nothing is worth showing.

Steps, in order:

1. Line endings to ``\\n`` (converted to the document's own at the end).
2. Indentation to the document's style: no leading spaces or tabs on a first line that starts where the
   cursor already follows whitespace (indentation, or `return `); leading tabs/spaces of the other lines
   converted to the document's choice.
3. Single-line mode keeps the first line only.
4. Multi-line and block modes stop at the end of the enclosing block: by syntax when the middle spliced
   into the document parses without new errors (the innermost body around the middle's first code ends
   before the middle does), otherwise by indentation (at the first line indented less than the block's
   body, keeping a closing bracket line at the header's indentation).
5. Trailing lines that repeat the lines following the cursor are removed.
6. Brackets and quotes are balanced against the rest of the line: of the middle, the middle without a
   tail that repeats the text right of the cursor, and the middle with its unclosed brackets closed, the
   variant adding the fewest syntax errors wins (the unchanged middle on ties).
7. Trailing whitespace is stripped (the last line keeps it when text follows the cursor on its line).
8. Empty or whitespace-only results become None.

At the very start of a line of code (``|foo()``: nothing left of the cursor, code right of it) the middle is whole
lines inserted above that line: it ends with a newline, lines repeating the cursor's line and those after it are
removed, and steps 6 and 7 (which fit the middle to the text right of the cursor on its line) do not apply.
"""

from __future__ import annotations

import math

from lsp_server.completion_mode import CompletionMode
from lsp_server.documents import Document
from lsp_server.positions import PositionLike, decode_bytes, encode_text
from lsp_server.ranking import count_syntax_errors, syntax_errors_added

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = frozenset(_OPENERS.values())
_QUOTES = frozenset({"'", '"', "`"})
# Lines around the cursor sampled to detect the document's indentation style.
_STYLE_SAMPLE_LINES = 200


def postprocess(raw_middle: str, document: Document, position: PositionLike, mode: CompletionMode) -> str | None:
    """The cleaned-up middle for ``position``, or None if nothing useful remains."""
    if not isinstance(raw_middle, str):
        raise TypeError(f"the raw middle must be a string, got {type(raw_middle).__name__}")
    if mode is CompletionMode.NONE:
        return None
    offset = document.offset_at(position)
    line = document.line_at(offset)
    left = document.text_between(document.line_start(line), offset)
    right = document.text_between(offset, document.line_end(line))

    above = not left and bool(right.strip())  # whole lines inserted above the cursor's line of code
    middle = raw_middle.replace("\r\n", "\n").replace("\r", "\n")
    middle = normalize_indentation(middle, document, line, left)
    if above and not middle.endswith("\n"):
        middle += "\n"  # so that the spliced parse sees the cursor's line of code on a line of its own
    if mode is CompletionMode.SINGLE_LINE:
        middle = middle.split("\n", 1)[0]
    else:
        middle = cut_at_block_end(middle, document, offset, mode)
        middle = remove_repeated_suffix_lines(middle, document, line if above else line + 1, left)
    if above:
        middle = strip_trailing_whitespace(middle, keep_last_line=False)
        return middle.replace("\n", document.newline) + document.newline if middle.strip() else None
    middle = balance_with_suffix(middle, document, offset, left, right)
    middle = strip_trailing_whitespace(middle, keep_last_line=bool(right.strip()))
    if not middle.strip():
        return None
    return middle.replace("\n", document.newline)


# ------------------------------------------------------------------------------------------ indentation


def indentation_style(document: Document, line: int) -> tuple[bool, int] | None:
    """(uses tabs, spaces per level) judged from the lines around ``line``; None without indented lines."""
    first = max(0, line - _STYLE_SAMPLE_LINES // 2)
    last = min(document.line_count, first + _STYLE_SAMPLE_LINES)
    tab_lines, space_widths = 0, []
    for sample_line in range(first, last):
        text = document.line_text(sample_line)
        if text.startswith("\t"):
            tab_lines += 1
        elif text.startswith(" ") and text.strip():
            space_widths.append(len(text) - len(text.lstrip(" ")))
    if not tab_lines and not space_widths:
        return None
    return tab_lines > len(space_widths), _indent_unit(space_widths)


def _indent_unit(widths: list[int]) -> int:
    unit = 0
    for width in widths:
        unit = math.gcd(unit, width)
    return unit if 2 <= unit <= 8 else 4


def normalize_indentation(middle: str, document: Document, line: int, left: str) -> str:
    """Re-indent ``middle`` in the document's style (see the module docstring, step 2)."""
    lines = middle.split("\n")
    if left.endswith((" ", "\t")):
        # The cursor already sits after whitespace (indentation, or `return `): byte-level BPE models write the
        # space with the next word (" obj"), which would double it.
        lines[0] = lines[0].lstrip(" \t")
    style = indentation_style(document, line)
    if style is None:  # nothing to go by: keep the model's indentation
        return "\n".join(lines)
    uses_tabs, width = style
    middle_unit = _indent_unit([len(text) - len(text.lstrip(" ")) for text in lines[1:] if text.startswith(" ")])
    for index in range(1, len(lines)):
        text = lines[index]
        indent = text[: len(text) - len(text.lstrip(" \t"))]
        if uses_tabs and " " in indent:
            columns = len(indent.expandtabs(middle_unit))
            indent = "\t" * (columns // middle_unit) + " " * (columns % middle_unit)
        elif not uses_tabs and "\t" in indent:
            indent = indent.expandtabs(width)
        lines[index] = indent + text.lstrip(" \t")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- block end


def cut_at_block_end(middle: str, document: Document, offset: int, mode: CompletionMode) -> str:
    """Cut ``middle`` where the block it is written in ends (syntax first, indentation as fallback)."""
    by_syntax = _block_end_by_syntax(middle, document, offset)
    if by_syntax is not None:
        return middle[:by_syntax]
    return middle[: _block_end_by_indentation(middle, document, offset, mode)]


def _block_end_by_syntax(middle: str, document: Document, offset: int) -> int | None:
    """Character index in ``middle`` where its enclosing body ends, if the spliced parse adds no error."""
    if not document.has_syntax:
        return None
    root = document.root_with_insertion(offset, middle)
    if count_syntax_errors(root) > count_syntax_errors(document.root_at(offset)):
        return None
    middle_bytes = encode_text(middle)
    code_start = offset + len(middle_bytes) - len(encode_text(middle.lstrip()))
    node = root.descendant_for_byte_range(code_start, code_start)
    while node is not None and node.type not in document.spec.body_types:
        node = node.parent
    if node is None or node.parent is None:
        return len(middle)  # top level: no enclosing block to leave
    end = node.end_byte - offset
    if end >= len(middle_bytes):
        return len(middle)
    return len(decode_bytes(middle_bytes[: max(end, 0)]))


def _block_end_by_indentation(middle: str, document: Document, offset: int, mode: CompletionMode) -> int:
    """Character index where the middle leaves the cursor's scope by indentation.

    At the end of a block header (or on a blank line under one whose body is empty) the scope is that
    header's body, and a closing bracket line at the header's indentation still belongs to it. On a blank
    line in a body the scope is the cursor's indentation level.
    """
    line = document.line_at(offset)
    left = document.text_between(document.line_start(line), offset)
    header_scope = bool(left.strip()) or mode is CompletionMode.BLOCK
    if header_scope:
        header = line if left.strip() else _previous_non_blank(document, line)
        scope_indent = _indent_width(document.line_text(header)) + 1
    else:
        scope_indent = _indent_width(left)
    position = 0
    for index, text in enumerate(middle.split("\n")):
        if index > 0 and text.strip() and _indent_width(text) < scope_indent:
            closes_header = header_scope and text.strip()[0] in _CLOSERS and _indent_width(text) == scope_indent - 1
            return position + len(text) if closes_header else position
        position += len(text) + 1
    return len(middle)


def _previous_non_blank(document: Document, line: int) -> int:
    for candidate in range(line - 1, -1, -1):
        if document.line_text(candidate).strip():
            return candidate
    return line


def _indent_width(text: str) -> int:
    expanded = text.expandtabs(4)
    return len(expanded) - len(expanded.lstrip())


# --------------------------------------------------------------------------------------- suffix overlap


def remove_repeated_suffix_lines(middle: str, document: Document, first_following: int, left: str) -> str:
    """Drop the middle's last lines when they repeat the first non-blank lines from ``first_following`` on (the
    line after the cursor's, or the cursor's own when the middle goes above it).

    The middle's first line is compared as it will read in the document, after ``left`` (the cursor
    line's text before the cursor).
    """
    middle_lines = [text.rstrip() for text in (left + middle).rstrip().split("\n")]
    following = []
    for next_line in range(first_following, min(document.line_count, first_following + 2 * len(middle_lines))):
        text = document.line_text(next_line).rstrip()
        if text.strip():
            following.append(text)
    for count in range(min(len(middle_lines), len(following)), 0, -1):
        if middle_lines[-count:] == following[:count]:
            return "\n".join(middle.rstrip().split("\n")[:-count])
    return middle


def balance_with_suffix(middle: str, document: Document, offset: int, left: str, right: str) -> str:
    """The variant of ``middle`` that leaves brackets and quotes balanced with the text around it."""
    variants = [middle]
    for length in range(len(right), 0, -1):
        if middle.endswith(right[:length]):
            variants.append(middle[:-length])
    closers = unclosed(middle)[0]
    if closers:
        variants.append(middle.rstrip() + "".join(closers))
    if len(variants) == 1:
        return middle

    def penalty(variant: str) -> int:
        if document.has_syntax:
            return syntax_errors_added(document, offset, variant)
        missing, stray = unclosed(left + variant + right)
        return len(missing) + len(stray)

    return min(variants, key=penalty)  # min keeps the first (least changed) variant on ties


def unclosed(text: str) -> tuple[list[str], list[str]]:
    """(closers that would balance ``text``, in order; closers in ``text`` that match no opener)."""
    stack: list[str] = []
    stray: list[str] = []
    quote = None
    escaped = False
    for char in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in _QUOTES:
            quote = char
        elif char in _OPENERS:
            stack.append(_OPENERS[char])
        elif char in _CLOSERS:
            if stack and stack[-1] == char:
                stack.pop()
            else:
                stray.append(char)
    closers = ([quote] if quote is not None else []) + stack[::-1]
    return closers, stray


def strip_trailing_whitespace(middle: str, keep_last_line: bool) -> str:
    """Strip trailing whitespace from every line; the last line keeps it when ``keep_last_line``."""
    lines = middle.split("\n")
    stripped = [text.rstrip() for text in lines[:-1]]
    last = lines[-1] if keep_last_line else lines[-1].rstrip()
    result = "\n".join([*stripped, last])
    return result if keep_last_line else result.rstrip()
