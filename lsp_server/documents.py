"""Open documents and their syntax trees, kept current under incremental LSP edits.

A :class:`Document` stores its text as UTF-8 bytes (what tree-sitter parses; all offsets in this package
are byte offsets) plus a :class:`~lsp_server.positions.LineIndex`. Each change is applied to the bytes, the
line index and, through ``Tree.edit``, to the syntax tree; the tree is re-parsed incrementally the next
time someone asks for it, so a burst of keystrokes costs one re-parse.

Large documents are split into *segments* at top-level nodes that start a line, each with its own tree
parsed over its byte range (tree-sitter ``included_ranges``, so node offsets stay document-global).
tree-sitter re-parses cost time in proportion to the number of top-level nodes of the tree (they are
re-shifted one by one), which is ~10-20 ms per keystroke for a 20,000-line file as a single tree; a
segment keeps that near a constant. Below :data:`SEGMENT_LINES` * 4 lines a document has exactly one
tree. A segment is parsed on its own, so a construct left open across a segment end (an unterminated
string, a missing closing brace) stays an error inside that segment instead of swallowing the rest of the
file; edits that cross a segment boundary merge the segments involved.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import tree_sitter

from lsp_server.languages import LanguageSpec, language_for
from lsp_server.positions import (
    LINE_TERMINATOR,
    LineIndex,
    PositionEncoding,
    PositionError,
    PositionLike,
    as_line_character,
    byte_to_column,
    column_to_byte,
    decode_bytes,
    encode_text,
)

# Target size of a segment, in lines; documents shorter than four segments keep a single tree.
SEGMENT_LINES = 512
INSERTIONS_KEPT = 16  # parsed insertions remembered per document (a request's candidates)


class DocumentError(Exception):
    """Base class of document store errors."""


class DocumentNotOpenError(DocumentError):
    """A request named a document that is not open."""


class InvalidChangeError(DocumentError):
    """A content change that is neither a full-text change nor a (range, text) change."""


class LspRange(Protocol):
    """Anything shaped like ``lsprotocol.types.Range``."""

    start: PositionLike
    end: PositionLike


RangeLike = LspRange | tuple[PositionLike, PositionLike]


@dataclass
class _Segment:
    start: int
    end: int
    start_row: int
    tree: tree_sitter.Tree | None  # None: parse from scratch on next use
    stale: bool = True  # edited (or never parsed) since the tree was last produced


class Document:
    """One open text document: text, version, language and syntax tree(s).

    Not thread-safe: use each document from one thread (the server's event loop).
    """

    def __init__(
        self,
        uri: str,
        text: str,
        language_id: str | None = None,
        version: int = 0,
        encoding: PositionEncoding | str = PositionEncoding.UTF16,
    ) -> None:
        """Open ``text``; the language comes from ``language_id``, else from the URI's extension.

        ``encoding`` is the negotiated LSP position encoding that ``offset_at``/``position_at`` speak.
        ``revision`` counts applied changes (unlike ``version``, it is ours and always increases).
        """
        if not isinstance(text, str):
            raise DocumentError(f"document text must be a string, got {type(text).__name__}")
        self.uri = uri
        self.language_id = language_id
        self.version = version
        self.encoding = PositionEncoding(encoding)
        self.spec: LanguageSpec = language_for(language_id, uri)
        self.revision = 0
        self._parser = tree_sitter.Parser(self.spec.ts_language) if self.spec.has_grammar else None
        # The last insertions parsed, for this revision: post-processing and ranking both check the same
        # candidates, and a parse of a long file costs milliseconds.
        self._insertions: OrderedDict[tuple[int, str], tree_sitter.Node] = OrderedDict()
        self._set_source(encode_text(text))

    # ----------------------------------------------------------------------------------------- text

    @property
    def source(self) -> bytes:
        """A copy of the document as UTF-8 bytes."""
        return bytes(self._source)

    @property
    def byte_length(self) -> int:
        """Length of the document in UTF-8 bytes."""
        return len(self._source)

    @property
    def text(self) -> str:
        """The document as a string (decoded once per revision)."""
        if self._text is None:
            self._text = decode_bytes(self._source)
        return self._text

    @property
    def line_count(self) -> int:
        """Number of lines (a trailing terminator starts a final empty line)."""
        return self._lines.line_count

    def line_start(self, line: int) -> int:
        """Byte offset of the start of ``line``."""
        return self._lines.line_start(line)

    def line_end(self, line: int) -> int:
        """Byte offset of the end of ``line``'s content, before its terminator."""
        return self._lines.line_end(line, self._source)

    def line_at(self, offset: int) -> int:
        """The line that contains byte ``offset``."""
        return self._lines.line_at(offset)

    def line_text(self, line: int) -> str:
        """Content of ``line`` without its terminator."""
        return decode_bytes(self._source[self.line_start(line) : self.line_end(line)])

    def text_between(self, start: int, end: int) -> str:
        """Decoded text of the byte range ``[start, end)``."""
        return decode_bytes(self._source[start:end])

    @property
    def newline(self) -> str:
        """The document's line terminator (that of its first line; ``\\n`` when it has none)."""
        match = LINE_TERMINATOR.search(self._source)
        return decode_bytes(match.group()) if match else "\n"

    def offset_at(self, position: PositionLike) -> int:
        """Byte offset of an LSP position (in this document's position encoding)."""
        line, character = as_line_character(position)
        if line >= self.line_count:
            raise PositionError(f"line {line} does not exist in {self.uri} ({self.line_count} lines)")
        return self.line_start(line) + column_to_byte(self.line_text(line), character, self.encoding)

    def position_at(self, offset: int) -> tuple[int, int]:
        """LSP ``(line, character)`` of a byte offset."""
        line = self.line_at(offset)
        start = self.line_start(line)
        offset = min(offset, self.line_end(line))  # a terminator byte maps to the end of its line
        return line, byte_to_column(self._source[start : self.line_end(line)], offset - start, self.encoding)

    # -------------------------------------------------------------------------------------- editing

    def apply_change(self, change_range: RangeLike | None, text: str) -> None:
        """Apply one LSP content change: replace ``change_range`` by ``text``, or everything if it is None."""
        if not isinstance(text, str):
            raise InvalidChangeError(f"change text must be a string, got {type(text).__name__}")
        new_bytes = encode_text(text)
        if change_range is None:
            self._replace_all(new_bytes)
            return
        try:
            start_position, end_position = (
                change_range if isinstance(change_range, tuple) else (change_range.start, change_range.end)
            )
        except (AttributeError, TypeError, ValueError):
            raise InvalidChangeError(f"not a range: {change_range!r}") from None
        start, end = self.offset_at(start_position), self.offset_at(end_position)
        if end < start:
            raise PositionError(f"change range ends before it starts: {change_range!r}")
        self._splice(start, end, new_bytes, as_line_character(start_position)[0], as_line_character(end_position)[0])

    def _replace_all(self, new_source: bytes) -> None:
        """Full-text change, applied as the smallest equivalent incremental edit."""
        old = self._source
        prefix = _common_prefix_length(old, new_source)
        suffix = _common_suffix_length(old[prefix:], new_source[prefix:])
        old_end, new_end = len(old) - suffix, len(new_source) - suffix
        if prefix == old_end == new_end:
            return
        self._splice(prefix, old_end, new_source[prefix:new_end], self.line_at(prefix), self.line_at(old_end))

    def _splice(self, start: int, end: int, new_bytes: bytes, start_line: int, end_line: int) -> None:
        start_column = start - self.line_start(start_line)
        old_end_point = (end_line, end - self.line_start(end_line))
        old_line_count = self.line_count

        # Re-index from the start of the first touched line to the end of the last one; include the
        # previous line when it ends in a lone "\r" that the new text could turn into "\r\n".
        first_line = start_line
        if start_line > 0 and self._source[self.line_start(start_line) - 1] == ord("\r"):
            first_line -= 1
        region_start = self.line_start(first_line)
        old_region_end = self.line_start(end_line + 1) if end_line + 1 < old_line_count else len(self._source)

        # In place: rebuilding a large bytes object per keystroke costs far more than this memmove.
        self._source[start:end] = new_bytes
        self._text = None
        self.revision += 1
        self._insertions.clear()
        delta = len(new_bytes) - (end - start)
        self._lines.replace_lines(first_line, end_line, self._source, region_start, old_region_end + delta)

        inserted_breaks = [match.end() for match in LINE_TERMINATOR.finditer(new_bytes)]
        if inserted_breaks:
            new_end_point = (start_line + len(inserted_breaks), len(new_bytes) - inserted_breaks[-1])
        else:
            new_end_point = (start_line, start_column + len(new_bytes))
        if self._parser is not None:
            edit = _Edit(start, end, start + len(new_bytes), (start_line, start_column), old_end_point, new_end_point)
            self._edit_segments(edit, self.line_count - old_line_count)

    # --------------------------------------------------------------------------------------- syntax

    @property
    def has_syntax(self) -> bool:
        """Whether this document has syntax trees (its language has a grammar)."""
        return self._parser is not None

    def root_at(self, offset: int) -> tree_sitter.Node | None:
        """Root node of the current tree that covers byte ``offset``; None without a grammar."""
        if self._parser is None:
            return None
        self._settle()
        return self._segments[self._segment_index(offset)].tree.root_node

    def node_at(self, offset: int) -> tree_sitter.Node | None:
        """Smallest node that spans byte ``offset``; None without a grammar."""
        root = self.root_at(offset)
        return None if root is None else root.descendant_for_byte_range(offset, offset)

    def top_level_nodes(self, offset: int, backward: bool) -> Iterator[tree_sitter.Node]:
        """Top-level nodes that end at or before ``offset`` (nearest first), or, forward, start at or after it."""
        root = self.root_at(offset)
        if root is None:
            return
        index = self._segment_index(offset)
        pivot = _first_child_ending_after(root, offset)
        if backward:
            node = _last_child(root) if pivot is None else pivot.prev_sibling
            other_roots = (segment.tree.root_node for segment in reversed(self._segments[:index]))
        else:
            node = pivot if pivot is None or pivot.start_byte >= offset else pivot.next_sibling
            other_roots = (segment.tree.root_node for segment in self._segments[index + 1 :])
        while True:
            while node is not None:
                yield node
                node = node.prev_sibling if backward else node.next_sibling
            root = next(other_roots, None)
            if root is None:
                return
            node = _last_child(root) if backward else root.child(0)

    def root_with_insertion(self, offset: int, text: str) -> tree_sitter.Node | None:
        """Root of the tree covering ``offset``, re-parsed as if ``text`` were inserted at ``offset``.

        The document is not modified: the parse is incremental, on a copy of the current tree.
        """
        if self.root_at(offset) is None:
            return None
        key = (offset, text)
        if key in self._insertions:
            self._insertions.move_to_end(key)
            return self._insertions[key]
        root = self._parse_with_insertion(offset, text)
        self._insertions[key] = root
        if len(self._insertions) > INSERTIONS_KEPT:
            self._insertions.popitem(last=False)
        return root

    def _parse_with_insertion(self, offset: int, text: str) -> tree_sitter.Node:
        index = self._segment_index(offset)
        segment = self._segments[index]
        inserted = encode_text(text)
        row = self.line_at(offset)
        column = offset - self.line_start(row)
        breaks = [match.end() for match in LINE_TERMINATOR.finditer(inserted)]
        new_end = (row + len(breaks), len(inserted) - breaks[-1]) if breaks else (row, column + len(inserted))
        tree = segment.tree.copy()
        _Edit(offset, offset, offset + len(inserted), (row, column), (row, column), new_end).apply(tree)
        self._parser.included_ranges = tree.included_ranges
        # Parse the text with the insertion made in place, then undo it (cheaper than copying the text).
        self._source[offset:offset] = inserted
        try:
            return self._parser.parse(self._source, tree).root_node
        finally:
            del self._source[offset : offset + len(inserted)]

    # ------------------------------------------------------------------------------------- internals

    def _set_source(self, source: bytes) -> None:
        self._source = bytearray(source)
        self._text: str | None = None
        self._lines = LineIndex(source)
        self._segments = [_Segment(0, len(source), 0, None)]
        self._segments_changed()

    def _segments_changed(self) -> None:
        self._settled = False
        self._segment_starts: list[int] | None = None

    def _segment_index(self, offset: int) -> int:
        if not 0 <= offset <= len(self._source):
            raise PositionError(f"byte offset {offset} is outside {self.uri} (0..{len(self._source)})")
        if self._segment_starts is None:
            self._segment_starts = [segment.start for segment in self._segments]
        return bisect_right(self._segment_starts, offset) - 1

    def _settle(self) -> None:
        """Re-parse every stale segment, merging or splitting segments whose boundaries no longer hold."""
        if self._settled:
            return
        index = 0
        while index < len(self._segments):
            if not self._segments[index].stale:
                index += 1
                continue
            self._parse_segment(index)
            if index > 0 and self._starts_inside_previous(index):
                self._merge(index - 1, index)
                index -= 1
            elif not (self._segment_lines(index) >= 4 * SEGMENT_LINES and self._split(index)):
                index += 1
        self._settled = True

    def _parse_segment(self, index: int) -> None:
        segment = self._segments[index]
        if index + 1 < len(self._segments):
            end_byte, end_point = segment.end, (self._segments[index + 1].start_row, 0)
        else:  # the last segment runs to the end of the text, wherever later edits move it
            end_byte, end_point = _UNBOUNDED, (_UNBOUNDED, _UNBOUNDED)
        self._parser.included_ranges = [tree_sitter.Range((segment.start_row, 0), end_point, segment.start, end_byte)]
        if segment.tree is None:
            segment.tree = self._parser.parse(self._source)
        else:
            segment.tree = self._parser.parse(self._source, segment.tree)
        segment.stale = False

    def _starts_inside_previous(self, index: int) -> bool:
        """Whether a segment's first line became indented, i.e. continues the previous segment's code.

        Syntax errors are no reason to merge: tree-sitter often wraps everything from an error back to
        the start of the tree in one ERROR node, and merging on that would cascade through the file.
        """
        segment = self._segments[index]
        return self._source[segment.start : segment.start + 1] in (b" ", b"\t")

    def _segment_lines(self, index: int) -> int:
        following = self._segments[index + 1].start_row if index + 1 < len(self._segments) else self.line_count
        return following - self._segments[index].start_row

    def _split(self, index: int) -> bool:
        """Split a parsed segment every ~SEGMENT_LINES lines at clean top-level nodes that start a line."""
        segment = self._segments[index]
        boundaries = [segment.start]
        rows = [segment.start_row]
        previous = None
        for child in segment.tree.root_node.children:
            if (
                previous is not None
                and not previous.has_error
                and not child.has_error
                and self._starts_line(child.start_byte)
                and self._source[child.start_byte : child.start_byte + 1] not in (b" ", b"\t")
            ):
                row = self.line_at(child.start_byte)
                if row - rows[-1] >= SEGMENT_LINES:
                    boundaries.append(child.start_byte)
                    rows.append(row)
            previous = child
        if len(boundaries) == 1:
            return False
        ends = [*boundaries[1:], segment.end]
        self._segments[index : index + 1] = [
            _Segment(start, end, row, None) for start, end, row in zip(boundaries, ends, rows)
        ]
        self._segments_changed()
        return True

    def _starts_line(self, offset: int) -> bool:
        if offset == 0:
            return True
        before = self._source[offset - 1 : offset]
        return before == b"\n" or (before == b"\r" and self._source[offset : offset + 1] != b"\n")

    def _merge(self, first: int, last: int) -> None:
        """Replace segments ``first..last`` by one segment that is parsed from scratch."""
        merged = _Segment(self._segments[first].start, self._segments[last].end, self._segments[first].start_row, None)
        self._segments[first : last + 1] = [merged]
        self._segments_changed()

    def _edit_segments(self, edit: _Edit, line_delta: int) -> None:
        starts = [segment.start for segment in self._segments]
        self._segments_changed()
        first = bisect_right(starts, edit.start) - 1
        # The last segment whose bytes the edit replaces; a pure insertion belongs to `first` alone.
        last = max(first, bisect_right(starts, edit.old_end - 1) - 1) if edit.old_end > edit.start else first
        byte_delta = edit.new_end - edit.old_end
        for segment in self._segments[last + 1 :]:
            segment.start += byte_delta
            segment.end += byte_delta
            segment.start_row += line_delta
            if segment.tree is not None:
                edit.apply(segment.tree)  # shifts its nodes; its text is unchanged
        self._segments[last].end += byte_delta
        if last > first:
            self._merge(first, last)
        else:
            segment = self._segments[first]
            if segment.tree is not None:
                edit.apply(segment.tree)
            segment.stale = True
        # An edit next to a boundary can leave a segment starting mid-line.
        if first + 1 < len(self._segments) and not self._starts_line(self._segments[first + 1].start):
            self._merge(first, first + 1)
        if first > 0 and not self._starts_line(self._segments[first].start):
            self._merge(first - 1, first)


_UNBOUNDED = 0xFFFFFFFF  # tree-sitter's "no end" for included ranges


def _first_child_ending_after(node: tree_sitter.Node, offset: int) -> tree_sitter.Node | None:
    # Node.first_child_for_byte crashes in py-tree-sitter 0.26.1; the cursor method does the same job.
    cursor = node.walk()
    return None if cursor.goto_first_child_for_byte(offset) is None else cursor.node


def _last_child(node: tree_sitter.Node) -> tree_sitter.Node | None:
    return node.child(node.child_count - 1) if node.child_count else None


@dataclass(frozen=True)
class _Edit:
    start: int
    old_end: int
    new_end: int
    start_point: tuple[int, int]
    old_end_point: tuple[int, int]
    new_end_point: tuple[int, int]

    def apply(self, tree: tree_sitter.Tree) -> None:
        tree.edit(
            start_byte=self.start,
            old_end_byte=self.old_end,
            new_end_byte=self.new_end,
            start_point=self.start_point,
            old_end_point=self.old_end_point,
            new_end_point=self.new_end_point,
        )


def _common_prefix_length(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix, by binary search over C-speed slice comparisons."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix_length(a: bytes, b: bytes) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle : len(a) - low] == b[len(b) - middle : len(b) - low]:
            low = middle
        else:
            high = middle - 1
    return low


class ContentChangeEvent(Protocol):
    """Anything shaped like an lsprotocol content change event; without a ``range`` it replaces everything."""

    text: str


ContentChange = ContentChangeEvent | tuple[RangeLike | None, str]


def _unpack_change(change: ContentChange) -> tuple[RangeLike | None, str]:
    if isinstance(change, tuple):
        if len(change) != 2:
            raise InvalidChangeError(f"a change tuple needs (range, text), got {change!r}")
        change_range, text = change
    else:
        text = getattr(change, "text", None)
        change_range = getattr(change, "range", None)
    if not isinstance(text, str):
        raise InvalidChangeError(f"a content change needs a text string, got {change!r}")
    return change_range, text


class DocumentStore:
    """The server's open documents, keyed by URI, driven by didOpen / didChange / didClose."""

    def __init__(self, encoding: PositionEncoding | str = PositionEncoding.UTF16) -> None:
        self.encoding = PositionEncoding(encoding)
        self._documents: dict[str, Document] = {}

    def open(self, uri: str, language_id: str | None, version: int, text: str) -> Document:
        """Open (or re-open, replacing) a document."""
        document = Document(uri, text, language_id, version, self.encoding)
        self._documents[uri] = document
        return document

    def change(self, uri: str, version: int | None, changes: Iterable[ContentChange]) -> Document:
        """Apply content changes in order: lsprotocol change events or ``(range | None, text)`` tuples.

        On an invalid change the error propagates; the changes before it stay applied and the version
        is not updated.
        """
        document = self.get(uri)
        for change in changes:
            document.apply_change(*_unpack_change(change))
        if version is not None:
            document.version = version
        return document

    def close(self, uri: str) -> None:
        """Forget a document."""
        if self._documents.pop(uri, None) is None:
            raise DocumentNotOpenError(f"document is not open: {uri}")

    def get(self, uri: str) -> Document:
        """The open document ``uri``."""
        try:
            return self._documents[uri]
        except KeyError:
            raise DocumentNotOpenError(f"document is not open: {uri}") from None

    def others(self, uri: str) -> list[Document]:
        """All open documents except ``uri`` (context snippets come from these)."""
        return [document for key, document in self._documents.items() if key != uri]

    def __contains__(self, uri: object) -> bool:
        return uri in self._documents

    def __iter__(self) -> Iterator[Document]:
        return iter(list(self._documents.values()))

    def __len__(self) -> int:
        return len(self._documents)
