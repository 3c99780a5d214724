"""Exact conversion between LSP positions and UTF-8 byte offsets.

LSP positions are (line, character) where ``character`` counts UTF-16 code units unless the client and
server negotiated UTF-8 or UTF-32 (``general.positionEncodings``). Documents are kept as UTF-8 bytes (what
tree-sitter parses), so every position crossing the protocol boundary goes through this module.

Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (the LSP definition). A position must name an existing
line and a column no further than that line's end (before its terminator) and must not split a
character; anything else raises :class:`PositionError`.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from enum import Enum
from itertools import accumulate
from typing import Protocol

LINE_TERMINATOR = re.compile(rb"\r\n|\r|\n")


class PositionError(ValueError):
    """A position or offset that does not exist in the document (or splits a character)."""


class PositionEncoding(str, Enum):
    """Units of ``Position.character``; the values are LSP's ``PositionEncodingKind`` strings."""

    UTF8 = "utf-8"
    UTF16 = "utf-16"
    UTF32 = "utf-32"


class LspPosition(Protocol):
    """Anything shaped like ``lsprotocol.types.Position``."""

    line: int
    character: int


PositionLike = LspPosition | tuple[int, int]


def encode_text(text: str) -> bytes:
    """UTF-8 bytes of ``text``; lone surrogates (legal in JSON strings) survive the round trip."""
    return text.encode("utf-8", "surrogatepass")


def decode_bytes(data: bytes) -> str:
    """Inverse of :func:`encode_text`."""
    return data.decode("utf-8", "surrogatepass")


def as_line_character(position: PositionLike) -> tuple[int, int]:
    """``(line, character)`` of an lsprotocol ``Position`` or a ``(line, character)`` tuple."""
    if isinstance(position, tuple):
        if len(position) != 2:
            raise PositionError(f"a position tuple needs (line, character), got {position!r}")
        line, character = position
    else:
        try:
            line, character = position.line, position.character
        except AttributeError:
            raise PositionError(f"not a position: {position!r}") from None
    if not isinstance(line, int) or not isinstance(character, int) or isinstance(line, bool):
        raise PositionError(f"position fields must be integers, got {position!r}")
    if line < 0 or character < 0:
        raise PositionError(f"position fields must not be negative, got line={line} character={character}")
    return line, character


def column_to_byte(line_text: str, column: int, encoding: PositionEncoding) -> int:
    """UTF-8 byte offset within ``line_text`` of the column ``column`` counted in ``encoding`` units.

    A column past the end of the line means the end of the line, as LSP specifies ("If the character value is
    greater than the line length it defaults back to the line length"); one inside a character is an error."""
    if column < 0:
        raise PositionError(f"negative column {column}")
    if line_text.isascii():
        return min(column, len(line_text))
    if encoding is PositionEncoding.UTF8:
        line_bytes = encode_text(line_text)
        if column >= len(line_bytes):
            return len(line_bytes)
        if (line_bytes[column] & 0xC0) == 0x80:
            raise PositionError(f"UTF-8 column {column} splits a character")
        return column
    if encoding is PositionEncoding.UTF32:
        return len(encode_text(line_text[:column]))
    return len(encode_text(line_text[: _utf16_column_to_index(line_text, column)]))


def _utf16_column_to_index(line_text: str, column: int) -> int:
    units = 0
    for index, char in enumerate(line_text):
        if units == column:
            return index
        units += 2 if ord(char) > 0xFFFF else 1
        if units > column:
            raise PositionError(f"UTF-16 column {column} splits the surrogate pair of {char!r}")
    return len(line_text)


def byte_to_column(line_bytes: bytes, byte_column: int, encoding: PositionEncoding) -> int:
    """Column in ``encoding`` units of the UTF-8 byte offset ``byte_column`` within ``line_bytes``."""
    if not 0 <= byte_column <= len(line_bytes):
        raise PositionError(f"byte column {byte_column} is outside a {len(line_bytes)}-byte line")
    if encoding is PositionEncoding.UTF8 or line_bytes.isascii():
        return byte_column
    if byte_column < len(line_bytes) and (line_bytes[byte_column] & 0xC0) == 0x80:
        raise PositionError(f"byte column {byte_column} splits a character")
    prefix = decode_bytes(line_bytes[:byte_column])
    if encoding is PositionEncoding.UTF32:
        return len(prefix)
    return len(prefix) + sum(1 for char in prefix if ord(char) > 0xFFFF)


class LineIndex:
    """Byte offsets of line starts, updated per edit in proportion to the edited lines.

    Line lengths (terminator included) are the source of truth; their prefix sums (line starts) are
    recomputed lazily, only as far as a query needs, after an edit invalidates them.
    """

    def __init__(self, source: bytes) -> None:
        self._lengths = _line_lengths(source, at_end_of_file=True)
        self._starts = [0]

    @property
    def line_count(self) -> int:
        """Number of lines; a text ending with a terminator has a final empty line."""
        return len(self._lengths)

    def line_start(self, line: int) -> int:
        """Byte offset where ``line`` starts."""
        if not 0 <= line < len(self._lengths):
            raise PositionError(f"line {line} does not exist (the document has {len(self._lengths)} lines)")
        known = len(self._starts)
        if line >= known:
            tail = accumulate(self._lengths[known - 1 : line], initial=self._starts[-1])
            next(tail)
            self._starts.extend(tail)
        return self._starts[line]

    def line_end(self, line: int, source: bytes) -> int:
        """Byte offset where ``line``'s content ends (before its terminator)."""
        start = self.line_start(line)
        end = start + self._lengths[line]
        if end > start and source[end - 1] == ord("\n"):
            end -= 2 if end - 2 >= start and source[end - 2] == ord("\r") else 1
        elif end > start and source[end - 1] == ord("\r"):
            end -= 1
        return end

    def line_at(self, offset: int) -> int:
        """The line containing byte ``offset`` (a terminator belongs to the line it ends)."""
        self.line_start(len(self._lengths) - 1)
        end_of_text = self._starts[-1] + self._lengths[-1]
        if not 0 <= offset <= end_of_text:
            raise PositionError(f"byte offset {offset} is outside the document (0..{end_of_text})")
        return bisect_right(self._starts, offset) - 1

    def replace_lines(self, first_line: int, last_line: int, new_source: bytes, region_start: int, region_end: int) -> None:
        """Re-index lines ``first_line..last_line`` whose new text is ``new_source[region_start:region_end]``.

        The region must start at a line start and end after a terminator or, when ``last_line`` is the
        final line, at the end of the text.
        """
        at_end = last_line == len(self._lengths) - 1
        self._lengths[first_line : last_line + 1] = _line_lengths(new_source[region_start:region_end], at_end)
        del self._starts[first_line + 1 :]


def _line_lengths(text: bytes, at_end_of_file: bool) -> list[int]:
    """Lengths (terminators included) of the lines of ``text``.

    At the end of the file the text after the last terminator is a line even when empty; elsewhere the
    text is a run of whole lines, so nothing follows its last terminator.
    """
    ends = [match.end() for match in LINE_TERMINATOR.finditer(text)]
    if at_end_of_file or not ends or ends[-1] != len(text):
        ends.append(len(text))
    return [end - start for start, end in zip([0, *ends], ends)]
