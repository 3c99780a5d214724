"""Infill context: the prefix, suffix and cross-file snippets the model sees, within a token budget.

Prefix and suffix grow line by line away from the cursor and may only be cut where a line starts (prefix)
or ends (suffix) at a syntax boundary. Cut points are ranked:

* *statement* cuts: the line begins (prefix) or ends (suffix) a whole statement, definition, member or
  comment whose parent is a body (module, block, class body ...). The window only ever stops at one.
* *token* cuts: the line edge is at least not inside a token (e.g. not inside a multi-line string). They
  are used only when not even the statement around the cursor fits.

When the window does not reach the start of the file, the headers of the definitions enclosing the cursor
(root path: class and function signature lines) and, budget permitting, the file's imports are placed
before it, with a ``<comment> ...`` line marking each gap. Snippets from other open documents, ranked by
the Jaccard similarity of their identifiers with those around the cursor, fill the remaining budget.

Tokens are counted with the caller's ``count_tokens`` (the model's tokenizer). Pieces are counted
separately while growing the window; the assembled prefix, suffix and snippet block are then counted
exactly and trimmed if the pieces under-estimated them, so every reported count is exact and within
budget.
"""

from __future__ import annotations

import enum
import re
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import tree_sitter

from lsp_server.completion_mode import CompletionMode, ModeRules, decide_mode_at
from lsp_server.documents import Document
from lsp_server.languages import path_from_uri
from lsp_server.positions import PositionLike, encode_text

TokenCounter = Callable[[str], int]

# Imports may take at most this share of the prefix budget.
_IMPORTS_SHARE = 0.25
# Top-level nodes scanned for imports before giving up (imports sit at the top of a file).
_IMPORT_SCAN_LIMIT = 64
# A pending chunk longer than this many bytes per remaining token cannot fit; stop growing it.
_MAX_BYTES_PER_TOKEN = 32
# Snippet chunks of other documents hold at most this many lines (about a small function).
_SNIPPET_CHUNK_LINES = 16
# A chunk too long for the remaining budget is shortened to its leading lines, if at least this many fit.
_SNIPPET_MIN_LINES = 3
# Lines above and below the cursor whose identifiers are matched against snippets.
_CURSOR_WINDOW_ABOVE, _CURSOR_WINDOW_BELOW = 30, 10
# At most this many top-ranked snippet candidates are tried (each costs a token count).
_SNIPPET_CANDIDATES = 32
_IDENTIFIER = re.compile(r"[^\W\d]\w+")


class ContextError(ValueError):
    """An invalid context budget."""


@dataclass(frozen=True)
class ContextBudget:
    """Token budget of a prompt and how it is split between prefix, suffix and other files.

    Shares are fractions of ``max_tokens`` and must add up to at most 1. Budget a part leaves unused goes
    to the others: prefix <-> suffix first, then to snippets; when no other document has related code the
    snippet share is split between prefix and suffix.
    """

    max_tokens: int = 1024
    prefix_share: float = 0.6
    suffix_share: float = 0.25
    other_files_share: float = 0.15

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ContextError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        shares = (self.prefix_share, self.suffix_share, self.other_files_share)
        if any(share < 0 for share in shares) or sum(shares) > 1 + 1e-9:
            raise ContextError(f"shares must be non-negative and add up to at most 1, got {shares}")


@dataclass(frozen=True)
class Snippet:
    """Code from another open document (from 0-based ``start_line``), labelled with its path."""

    path: str
    start_line: int
    text: str
    score: float
    label: str

    @property
    def rendered(self) -> str:
        """The snippet as it goes into the prompt: label line, then the code."""
        return f"{self.label}{self.text}\n"


@dataclass(frozen=True)
class InfillContext:
    """What to send to the model for one completion request.

    ``window_start``/``window_end`` are the byte offsets where the contiguous text around the cursor was
    cut; ``headers`` and ``imports`` are the pieces placed before that window.
    """

    prefix: str
    suffix: str
    snippets: tuple[Snippet, ...]
    mode: CompletionMode
    prefix_tokens: int
    suffix_tokens: int
    snippet_tokens: int
    cursor_offset: int
    window_start: int
    window_end: int
    headers: tuple[str, ...]
    imports: tuple[str, ...]

    @property
    def total_tokens(self) -> int:
        """Tokens of prefix, suffix and snippets, each counted on its own."""
        return self.prefix_tokens + self.suffix_tokens + self.snippet_tokens

    def prompt_prefix(self) -> str:
        """Snippets followed by the prefix: the text to put before the hole."""
        return "".join(snippet.rendered for snippet in self.snippets) + self.prefix


def build_context(
    document: Document,
    position: PositionLike,
    count_tokens: TokenCounter,
    budget: ContextBudget | None = None,
    other_documents: Iterable[Document] = (),
    invoked: bool = False,
    mode_rules: ModeRules | None = None,
) -> InfillContext:
    """Build the infill context at ``position``.

    ``count_tokens`` is the model tokenizer's counter; ``other_documents`` may include ``document`` itself
    (it is skipped). ``invoked`` is true for explicitly requested completions. When the mode is
    :attr:`CompletionMode.NONE` nothing else is computed and prefix and suffix are empty.
    """
    budget = budget or ContextBudget()
    offset = document.offset_at(position)
    mode = decide_mode_at(document, offset, invoked, mode_rules)
    if mode is CompletionMode.NONE:
        return InfillContext("", "", (), mode, 0, 0, 0, offset, offset, offset, (), ())

    others = [other for other in other_documents if other.uri != document.uri]
    candidates = _snippet_candidates(document, offset, others)
    counter = _MemoCounter(document, count_tokens)
    prefix_budget = int(budget.max_tokens * budget.prefix_share)
    suffix_budget = int(budget.max_tokens * budget.suffix_share)
    if not candidates:  # nothing related in other documents: their share goes to prefix and suffix
        spare = int(budget.max_tokens * budget.other_files_share)
        total_share = budget.prefix_share + budget.suffix_share
        prefix_extra = round(spare * budget.prefix_share / total_share) if total_share else 0
        prefix_budget, suffix_budget = prefix_budget + prefix_extra, suffix_budget + spare - prefix_extra

    prefix = _build_prefix(document, offset, prefix_budget, counter)
    suffix = _build_suffix(document, offset, suffix_budget, counter)
    if not prefix.reached_file_edge and suffix.tokens < suffix_budget:
        prefix = _build_prefix(document, offset, prefix_budget + suffix_budget - suffix.tokens, counter)
    elif not suffix.reached_file_edge and prefix.tokens < prefix_budget:
        suffix = _build_suffix(document, offset, suffix_budget + prefix_budget - prefix.tokens, counter)

    snippet_budget = budget.max_tokens - prefix.tokens - suffix.tokens
    snippets, snippet_tokens = _select_snippets(document, candidates, snippet_budget, count_tokens)
    return InfillContext(
        prefix=prefix.text,
        suffix=suffix.text,
        snippets=snippets,
        mode=mode,
        prefix_tokens=prefix.tokens,
        suffix_tokens=suffix.tokens,
        snippet_tokens=snippet_tokens,
        cursor_offset=offset,
        window_start=prefix.window_edge,
        window_end=suffix.window_edge,
        headers=prefix.headers,
        imports=prefix.imports,
    )


# ------------------------------------------------------------------------------------------ cut points


class CutKind(enum.IntEnum):
    """How good a line edge is as a place to cut the context."""

    NONE = 0  # inside a token (e.g. a multi-line string)
    TOKEN = 1  # between tokens
    STATEMENT = 2  # between whole statements / definitions / members


def line_edge_kind(document: Document, line: int, at_start: bool) -> CutKind:
    """The kind of cut at the start (``at_start``) or at the end of ``line``."""
    if not document.has_syntax:
        return CutKind.STATEMENT
    content = document.line_text(line)
    stripped = content.lstrip(" \t") if at_start else content.rstrip(" \t")
    whitespace = len(content) - len(stripped)  # ASCII, so also its length in bytes
    edge = document.line_start(line) + whitespace if at_start else document.line_end(line) - whitespace
    root = document.root_at(edge)
    if not stripped:
        node = root.descendant_for_byte_range(edge, edge)
        inside_token = node.child_count == 0 and node.start_byte < edge < node.end_byte
        return CutKind.NONE if inside_token else CutKind.TOKEN
    if at_start:
        node = root.descendant_for_byte_range(edge, edge + 1)
        if node.start_byte != edge:
            return CutKind.NONE
    else:
        node = root.descendant_for_byte_range(edge - 1, edge)
        if node.end_byte != edge:
            return CutKind.NONE
    # Climb to the largest node sharing this edge, stopping below the root.
    while node.parent is not None and node.parent.parent is not None:
        parent = node.parent
        if (parent.start_byte if at_start else parent.end_byte) != edge:
            break
        node = parent
    body_types = document.spec.body_types
    parent = node.parent
    if node.is_named and not node.is_error and (
        node.type in body_types or parent is None or parent.type in body_types
    ):
        return CutKind.STATEMENT
    return CutKind.TOKEN


# ------------------------------------------------------------------------------------- prefix/suffix


@dataclass(frozen=True)
class _Side:
    text: str
    tokens: int
    window_edge: int  # where the contiguous window was cut (byte offset)
    reached_file_edge: bool
    headers: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()


class _MemoCounter:
    """Token counts of document ranges, remembered so that re-growing a window is cheap."""

    def __init__(self, document: Document, count_tokens: TokenCounter) -> None:
        self._document = document
        self.count = count_tokens
        self._ranges: dict[tuple[int, int], int] = {}

    def range(self, start: int, end: int) -> int:
        key = (start, end)
        if key not in self._ranges:
            self._ranges[key] = self.count(self._document.text_between(start, end))
        return self._ranges[key]


@dataclass(frozen=True)
class _Header:
    start: int  # line start of the definition
    end: int  # end of its header: just past "{", or where the body starts
    text: str


Overhead = Callable[[int], int]


def _no_overhead(edge: int) -> int:
    return 0


def _grow_window(
    document: Document, cursor: int, budget: int, counter: _MemoCounter, backward: bool, overhead: Overhead
) -> int:
    """Grow the window from the cursor while it fits in ``budget``; return its edge (a byte offset).

    The edge moves from statement cut to statement cut. Only when not even the first one fits does it
    fall back to token cuts, line by line and then within the cursor line. ``overhead(edge)`` is the
    budget taken by pieces kept outside a window with that edge (headers, imports).
    """
    edge, used = cursor, 0
    crossed: list[int] = []  # lines crossed since the last accepted edge, nearest first
    step = -1 if backward else 1
    line, last_line = document.line_at(cursor), document.line_count - 1
    while 0 <= line <= last_line:
        crossed.append(line)
        boundary = _line_boundary(document, line, backward)
        at_file_edge = line == (0 if backward else last_line)
        if at_file_edge or line_edge_kind(document, line, at_start=backward) is CutKind.STATEMENT:
            tokens = counter.range(*sorted((boundary, edge)))
            if used + tokens + overhead(boundary) > budget:
                break
            edge, used, crossed = boundary, used + tokens, []
        elif abs(boundary - edge) > _MAX_BYTES_PER_TOKEN * max(budget - used, 1):
            break  # far too long to fit: do not tokenize it
        line += step
    if edge != cursor:
        return edge
    for line in crossed:
        if line_edge_kind(document, line, at_start=backward) is CutKind.NONE:
            continue
        boundary = _line_boundary(document, line, backward)
        tokens = counter.range(*sorted((boundary, edge)))
        if used + tokens + overhead(boundary) > budget:
            break
        edge, used = boundary, used + tokens
    if edge != cursor:
        return edge
    return _grow_within_line(document, cursor, budget, counter, backward, overhead)


def _grow_within_line(
    document: Document, cursor: int, budget: int, counter: _MemoCounter, backward: bool, overhead: Overhead
) -> int:
    """Last resort for a cursor line too long for the budget: its farthest token edge that fits."""
    line = document.line_at(cursor)
    start, end = (document.line_start(line), cursor) if backward else (cursor, document.line_end(line))
    best = cursor
    for token_edge in _token_edges(document, start, end, starts=backward):
        if counter.range(*sorted((token_edge, cursor))) + overhead(token_edge) > budget:
            break
        best = token_edge
    return best


def _token_edges(document: Document, start: int, end: int, starts: bool) -> Iterator[int]:
    """Token starts in ``[start, end)`` from the end backwards (``starts``), or token ends from the start."""
    text = document.text_between(start, end)
    words = list(re.finditer(r"\S+", text))
    if starts:
        words.reverse()
    root = document.root_at(start)
    for word in words:
        position = start + len(encode_text(text[: word.start() if starts else word.end()]))
        if root is None:
            yield position
            continue
        node = root.descendant_for_byte_range(position, position + 1) if starts else root.descendant_for_byte_range(
            position - 1, position
        )
        if node.child_count == 0 and (node.start_byte if starts else node.end_byte) == position:
            yield position


def _line_boundary(document: Document, line: int, backward: bool) -> int:
    """Start of ``line`` (backward) or the end of its terminator (forward)."""
    if backward:
        return document.line_start(line)
    return document.line_start(line + 1) if line + 1 < document.line_count else document.byte_length


def _build_suffix(document: Document, cursor: int, budget: int, counter: _MemoCounter) -> _Side:
    window_budget = budget
    while True:
        edge = _grow_window(document, cursor, window_budget, counter, backward=False, overhead=_no_overhead)
        tokens = counter.range(cursor, edge)
        if tokens <= budget:
            return _Side(document.text_between(cursor, edge), tokens, edge, edge == document.byte_length)
        window_budget -= tokens - budget  # the pieces under-estimated the whole: aim lower


def _build_prefix(document: Document, cursor: int, budget: int, counter: _MemoCounter) -> _Side:
    headers = _enclosing_headers(document, cursor)
    header_costs = [counter.count(_piece_text(header.text, "", document)) for header in headers]
    imports = _file_imports(document, cursor)
    import_costs = [counter.count(_piece_text(document.text_between(*span), "", document)) for span in imports]

    # Keep the innermost headers if not all fit, and imports in file order up to their cap.
    while headers and sum(header_costs) > budget:
        headers, header_costs = headers[1:], header_costs[1:]
    import_cap = min(int(budget * _IMPORTS_SHARE), budget - sum(header_costs))
    kept_imports = 0
    while kept_imports < len(imports) and sum(import_costs[: kept_imports + 1]) <= import_cap:
        kept_imports += 1
    imports, import_costs = imports[:kept_imports], import_costs[:kept_imports]

    def overhead(edge: int) -> int:
        outside_headers = sum(cost for header, cost in zip(headers, header_costs) if header.start < edge)
        outside_imports = sum(cost for (start, _), cost in zip(imports, import_costs) if start < edge)
        return outside_headers + outside_imports

    edge = _grow_window(document, cursor, budget, counter, backward=True, overhead=overhead)
    headers = tuple(header for header in headers if header.start < edge)
    imports = [span for span in imports if span[0] < edge]
    window_budget = budget
    # The pieces were counted separately; shed imports, then outer headers, then window until it fits.
    while True:
        text = _assemble_prefix(document, imports, headers, edge, cursor)
        tokens = counter.count(text)
        if tokens <= budget:
            break
        if imports:
            imports.pop()
        elif headers:
            headers = headers[1:]
        else:
            window_budget -= tokens - budget
            edge = _grow_window(document, cursor, window_budget, counter, backward=True, overhead=_no_overhead)
    return _Side(
        text=text,
        tokens=tokens,
        window_edge=edge,
        reached_file_edge=edge == 0,
        headers=tuple(header.text for header in headers),
        imports=tuple(document.text_between(*span).rstrip() for span in imports),
    )


def _assemble_prefix(
    document: Document, imports: list[tuple[int, int]], headers: tuple[_Header, ...], edge: int, cursor: int
) -> str:
    """Imports, headers and the window in document order; touching pieces merge, gaps get a marker."""
    pieces = sorted([*imports, *((header.start, header.end) for header in headers)])
    merged: list[list[int]] = []
    for start, end in [*pieces, (edge, cursor)]:
        if merged and not document.text_between(merged[-1][1], max(start, merged[-1][1])).strip():
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    texts = [document.text_between(start, end) for start, end in merged]
    indents = [text[: len(text) - len(text.lstrip(" \t"))] for text in texts]
    return "".join(_piece_text(text, indent, document) for text, indent in zip(texts, indents[1:])) + texts[-1]


def _piece_text(text: str, next_indent: str, document: Document) -> str:
    """A prefix piece followed by a gap: its text, then a gap marker indented like the next piece."""
    newline = document.newline
    marker = f"{next_indent}{document.spec.line_comment} ...{newline}" if document.spec.line_comment else ""
    return text.rstrip() + newline + marker


def _enclosing_headers(document: Document, cursor: int) -> tuple[_Header, ...]:
    """Headers of the definitions whose body encloses the cursor, outermost first."""
    headers = []
    for node in enclosing_nodes(document, cursor):
        if node.type not in document.spec.definition_types:
            continue
        first_line = document.line_at(node.start_byte)
        start = document.line_start(first_line)
        body = node.child_by_field_name("body")
        if body is not None and body.start_byte <= cursor:
            opens_with_brace = document.text_between(body.start_byte, body.start_byte + 1) == "{"
            end = body.start_byte + 1 if opens_with_brace else body.start_byte
        elif body is None and first_line < document.line_at(cursor):
            end = document.line_end(first_line)
        else:
            continue  # the cursor is in the signature itself
        headers.append(_Header(start, end, document.text_between(start, end).rstrip()))
    return tuple(reversed(headers))


def enclosing_nodes(document: Document, cursor: int) -> list[tree_sitter.Node]:
    """Nodes that contain the cursor, innermost first, excluding the root.

    In indentation-scoped languages a block ends with its last statement, so an indented blank line
    below it lies outside it by extent; a node then still encloses the cursor when the cursor is indented
    deeper than the node's first line.
    """
    if not document.has_syntax:
        return []
    line = document.line_at(cursor)
    left = document.text_between(document.line_start(line), cursor)
    blank_left = not left.strip()
    anchor = _last_code_byte_before(document, cursor) if document.spec.indentation_scoped and blank_left else cursor
    cursor_indent = _indent_width(left if blank_left else document.line_text(line))
    nodes = []
    node = document.node_at(anchor)
    while node is not None and node.parent is not None:
        if node.start_byte < cursor and (
            node.end_byte >= cursor
            or cursor_indent > _indent_width(document.line_text(document.line_at(node.start_byte)))
        ):
            nodes.append(node)
        node = node.parent
    return nodes


def _last_code_byte_before(document: Document, cursor: int) -> int:
    """Offset of the last non-whitespace byte before ``cursor`` (``cursor`` itself if there is none)."""
    line = document.line_at(cursor)
    for candidate in range(line, -1, -1):
        start = document.line_start(candidate)
        text = document.text_between(start, cursor if candidate == line else document.line_end(candidate))
        if text.strip():
            return start + len(encode_text(text.rstrip())) - 1
    return cursor


def _indent_width(text: str) -> int:
    expanded = text.expandtabs(4)
    return len(expanded) - len(expanded.lstrip())


def _file_imports(document: Document, cursor: int) -> list[tuple[int, int]]:
    """Byte ranges (from their line start) of the top-level imports above the cursor."""
    spec = document.spec
    if not spec.import_types:
        return []
    imports = []
    for index, node in enumerate(document.top_level_nodes(0, backward=False)):
        if index >= _IMPORT_SCAN_LIMIT or node.start_byte >= cursor or node.type in spec.definition_types:
            break
        if node.type in spec.import_types:
            imports.append((document.line_start(document.line_at(node.start_byte)), node.end_byte))
    return imports


# -------------------------------------------------------------------------------------------- snippets


@dataclass(frozen=True)
class _Chunk:
    start_line: int
    text: str
    identifiers: frozenset[str]


_CHUNK_CACHE: weakref.WeakKeyDictionary[Document, tuple[int, tuple[_Chunk, ...]]] = weakref.WeakKeyDictionary()


def _identifiers(text: str, document: Document) -> frozenset[str]:
    return frozenset(_IDENTIFIER.findall(text)) - document.spec.keywords


def _document_chunks(document: Document) -> tuple[_Chunk, ...]:
    """A document cut into snippet-sized chunks at top-level (or member-level) nodes; cached per revision."""
    cached = _CHUNK_CACHE.get(document)
    if cached is not None and cached[0] == document.revision:
        return cached[1]
    if document.has_syntax:
        spans = list(_node_spans(document, document.top_level_nodes(0, backward=False)))
    else:
        spans = [
            (line, min(line + _SNIPPET_CHUNK_LINES, document.line_count) - 1)
            for line in range(0, document.line_count, _SNIPPET_CHUNK_LINES)
        ]
    chunks = []
    for first, last in spans:
        text = document.text_between(document.line_start(first), document.line_end(last)).strip("\r\n")
        identifiers = _identifiers(text, document)
        if identifiers:
            chunks.append(_Chunk(first, text, identifiers))
    _CHUNK_CACHE[document] = (document.revision, tuple(chunks))
    return tuple(chunks)


def _node_spans(document: Document, nodes: Iterable[tree_sitter.Node]) -> Iterator[tuple[int, int]]:
    """Line spans grouping consecutive nodes up to the chunk size; oversized nodes are split by members."""
    group: tuple[int, int] | None = None
    for node in nodes:
        first, last = document.line_at(node.start_byte), document.line_at(node.end_byte)
        if last - first + 1 > _SNIPPET_CHUNK_LINES:
            if group is not None:
                yield group
                group = None
            body = _body_of(node)
            members = body.named_children if body is not None else []
            if members:
                yield from _node_spans(document, members)
            else:
                for start in range(first, last + 1, _SNIPPET_CHUNK_LINES):
                    yield start, min(start + _SNIPPET_CHUNK_LINES - 1, last)
        elif group is not None and last - group[0] + 1 <= _SNIPPET_CHUNK_LINES:
            group = (group[0], last)
        else:
            if group is not None:
                yield group
            group = (first, last)
    if group is not None:
        yield group


def _body_of(node: tree_sitter.Node) -> tree_sitter.Node | None:
    """The ``body`` of a definition, looking through one wrapper (export, decorator, template)."""
    body = node.child_by_field_name("body")
    if body is None and node.named_child_count:
        body = node.named_child(node.named_child_count - 1).child_by_field_name("body")
    return body


def _snippet_candidates(document: Document, cursor: int, others: list[Document]) -> list[tuple[float, str, _Chunk]]:
    """(Jaccard score, path, chunk) of the other documents' chunks sharing identifiers with the cursor
    window, best first (the few best only)."""
    if not others:
        return []
    line = document.line_at(cursor)
    around = document.text_between(
        document.line_start(max(0, line - _CURSOR_WINDOW_ABOVE)),
        document.line_end(min(document.line_count - 1, line + _CURSOR_WINDOW_BELOW)),
    )
    wanted = _identifiers(around, document)
    candidates = []
    for other in others:
        path = path_from_uri(other.uri)
        for chunk in _document_chunks(other):
            shared = len(wanted & chunk.identifiers)
            if shared:
                candidates.append((shared / len(wanted | chunk.identifiers), path, chunk))
    candidates.sort(key=lambda candidate: (-candidate[0], candidate[1], candidate[2].start_line))
    return candidates[:_SNIPPET_CANDIDATES]


def _select_snippets(
    document: Document, candidates: list[tuple[float, str, _Chunk]], budget: int, count_tokens: TokenCounter
) -> tuple[tuple[Snippet, ...], int]:
    """The best candidates that fit in ``budget`` tokens, labelled in ``document``'s comment syntax."""
    comment = document.spec.line_comment
    chosen: list[Snippet] = []
    remaining = budget
    for score, path, chunk in candidates:
        if remaining <= 0:
            break
        label = f"{comment} Path: {path}\n" if comment else f"Path: {path}\n"
        snippet = Snippet(path, chunk.start_line, chunk.text, score, label)
        cost = count_tokens(snippet.rendered)
        if cost <= remaining:
            chosen.append(snippet)
            remaining -= cost
            continue
        # The best chunk that does not fit is shortened to fill the rest of the budget, which ends the search.
        shortened = _shortened_snippet(snippet, remaining, count_tokens)
        if shortened is not None:
            chosen.append(shortened)
        break
    # Separate counts can under-estimate the joined block: drop the weakest snippets until it fits.
    while chosen:
        tokens = count_tokens("".join(snippet.rendered for snippet in chosen))
        if tokens <= budget:
            return tuple(chosen), tokens
        chosen.pop()
    return (), 0


def _shortened_snippet(snippet: Snippet, budget: int, count_tokens: TokenCounter) -> Snippet | None:
    """The longest run of ``snippet``'s leading lines (at least a few) that fits in ``budget`` tokens."""
    lines = snippet.text.split("\n")
    low, high = _SNIPPET_MIN_LINES - 1, len(lines) - 1  # binary search for the longest fitting run
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(replace(snippet, text="\n".join(lines[:middle])).rendered) <= budget:
            low = middle
        else:
            high = middle - 1
    if low < _SNIPPET_MIN_LINES:
        return None
    return replace(snippet, text="\n".join(lines[:low]).rstrip())
