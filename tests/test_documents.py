"""Documents and the store: LSP changes, line index, incrementally re-parsed (and segmented) trees."""

from __future__ import annotations

import random
import re
import statistics
import time

import pytest
import tree_sitter
from fixtures.support import LANGUAGE_IDS, large_python_source, sample
from lsprotocol import types as lsp

from lsp_server import documents
from lsp_server.documents import Document, DocumentNotOpenError, DocumentStore, InvalidChangeError
from lsp_server.positions import PositionEncoding, PositionError

REFERENCE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def reference_lines(text: str) -> list[str]:
    """Lines of ``text`` without terminators, split independently of the code under test."""
    return REFERENCE_LINE_BREAK.split(text)


def utf16_position(text: str, index: int) -> tuple[int, int]:
    """LSP (line, UTF-16 character) of the string index ``index``, computed independently."""
    line_starts = [0] + [match.end() for match in REFERENCE_LINE_BREAK.finditer(text)]
    line = max(number for number, start in enumerate(line_starts) if start <= index)
    return line, len(text[line_starts[line] : index].encode("utf-16-le")) // 2


def node_spans(node: tree_sitter.Node) -> list[tuple[str, int, int]]:
    """(type, start, end) of every node, in document order."""
    spans = []
    cursor = node.walk()
    visited_children = False
    while True:
        if not visited_children:
            spans.append((cursor.node.type, cursor.node.start_byte, cursor.node.end_byte))
            if cursor.goto_first_child():
                continue
        if cursor.goto_next_sibling():
            visited_children = False
        elif cursor.goto_parent():
            visited_children = True
        else:
            return spans


def fresh_tree(document: Document) -> tree_sitter.Tree:
    return tree_sitter.Parser(document.spec.ts_language).parse(document.source)


def top_level_spans(document: Document) -> list[tuple[str, int, int]]:
    nodes = reversed(list(document.top_level_nodes(document.byte_length, backward=True)))
    return [(node.type, node.start_byte, node.end_byte) for node in nodes]


def test_store_follows_open_change_close_with_lsprotocol_events():
    store = DocumentStore()
    document = store.open("file:///a.py", "python", 1, "x = 1\ny = 2\n")
    assert store.get("file:///a.py") is document and "file:///a.py" in store and len(store) == 1
    store.change(
        "file:///a.py",
        2,
        [
            lsp.TextDocumentContentChangePartial(
                range=lsp.Range(start=lsp.Position(line=1, character=4), end=lsp.Position(line=1, character=5)),
                text="42",
            ),
            lsp.TextDocumentContentChangePartial(
                range=lsp.Range(start=lsp.Position(line=2, character=0), end=lsp.Position(line=2, character=0)),
                text="z = x + y\n",
            ),
        ],
    )
    assert document.text == "x = 1\ny = 42\nz = x + y\n"
    assert document.version == 2
    assert str(document.root_at(0)) == str(fresh_tree(document).root_node)
    store.change("file:///a.py", 3, [lsp.TextDocumentContentChangeWholeDocument(text="print('hi')\n")])
    assert document.text == "print('hi')\n" and document.version == 3
    assert str(document.root_at(0)) == str(fresh_tree(document).root_node)
    store.close("file:///a.py")
    assert "file:///a.py" not in store
    with pytest.raises(DocumentNotOpenError):
        store.get("file:///a.py")
    with pytest.raises(DocumentNotOpenError):
        store.close("file:///a.py")
    with pytest.raises(DocumentNotOpenError):
        store.change("file:///a.py", 4, [])


def test_store_accepts_plain_tuples_and_lists_other_documents():
    store = DocumentStore(encoding="utf-8")
    first = store.open("file:///a.go", "go", 0, "package a\n")
    second = store.open("file:///b.go", "go", 0, "package b\n")
    store.change("file:///a.go", None, [(((0, 8), (0, 9)), "main"), (None, "package zz\n")])
    assert first.text == "package zz\n" and first.version == 0
    assert store.others("file:///a.go") == [second]
    assert list(store) == [first, second]


@pytest.mark.parametrize(
    "bad_change",
    [("only-one-item",), (((0, 0), (0, 0)), 5), object(), (42, "text"), ((((0, 0)),), "text")],
)
def test_malformed_changes_raise_invalid_change_error(bad_change):
    store = DocumentStore()
    store.open("file:///a.py", "python", 0, "a = 1\n")
    with pytest.raises((InvalidChangeError, PositionError)):
        store.change("file:///a.py", 1, [bad_change])
    assert store.get("file:///a.py").text == "a = 1\n"


def test_non_string_text_is_rejected_clearly():
    with pytest.raises(documents.DocumentError, match="must be a string"):
        Document("file:///a.py", b"a = 1\n", "python")
    document = Document("file:///a.py", "a = 1\n", "python")
    with pytest.raises(InvalidChangeError, match="must be a string"):
        document.apply_change(((0, 0), (0, 0)), 42)


@pytest.mark.parametrize(
    ("change_range", "message"),
    [
        (((5, 0), (5, 0)), "line 5 does not exist"),
        (((0, 3), (0, 1)), "ends before it starts"),
    ],
)
def test_out_of_range_changes_raise_position_error(change_range, message):
    document = Document("file:///a.py", "a = 1\n", "python")
    with pytest.raises(PositionError, match=message):
        document.apply_change(change_range, "x")
    assert document.text == "a = 1\n"


@pytest.mark.parametrize("extension", sorted(LANGUAGE_IDS))
def test_random_incremental_edits_keep_text_lines_and_tree_current(extension):
    rng = random.Random(extension)
    reference = sample(extension)
    document = Document(f"file:///sample.{extension}", reference, LANGUAGE_IDS[extension])
    snippets = ["x", " ", "\n", "\r\n", "é", "😀", "日本", "(", "}", "  return 1;\n", "# note\n", "\"", ""]
    for _ in range(40):
        start = rng.randrange(len(reference) + 1)
        end = min(len(reference), start + rng.choice([0, 0, 1, 3, 12]))
        # Never split a surrogate pair's partner or a "\r\n" pair: LSP positions cannot express that.
        if reference[start - 1 : start + 1] == "\r\n" or reference[end - 1 : end + 1] == "\r\n":
            continue
        inserted = "".join(rng.choice(snippets) for _ in range(rng.randint(0, 3)))
        document.apply_change((utf16_position(reference, start), utf16_position(reference, end)), inserted)
        reference = reference[:start] + inserted + reference[end:]

        assert document.text == reference
        lines = reference_lines(reference)
        assert document.line_count == len(lines)
        probe = rng.randrange(len(lines))
        assert document.line_text(probe) == lines[probe]
        assert node_spans(document.root_at(0)) == node_spans(fresh_tree(document).root_node)


def test_positions_round_trip_in_a_crlf_document_with_emoji():
    text = "a = '😀'\r\nb = 'é'\r\n\r\nc = 1"
    document = Document("file:///crlf.py", text, "python")
    assert document.line_count == 4
    assert document.newline == "\r\n"
    assert document.offset_at((0, 7)) == len("a = '😀".encode())  # the emoji is two UTF-16 units
    assert document.offset_at((1, 0)) == len("a = '😀'\r\n".encode())
    assert document.position_at(document.offset_at((1, 6))) == (1, 6)
    assert document.position_at(len("a = '😀'\r".encode())) == (0, 8)  # inside "\r\n": end of its line
    with pytest.raises(PositionError, match="splits the surrogate pair"):
        document.offset_at((0, 6))
    utf32 = Document("file:///crlf.py", text, "python", encoding=PositionEncoding.UTF32)
    assert utf32.offset_at((0, 6)) == len("a = '😀".encode())  # one code point


def test_inserting_lf_after_a_lone_cr_joins_the_two_into_one_terminator():
    document = Document("file:///mac.txt", "one\rtwo", "plaintext")
    assert document.line_count == 2
    document.apply_change(((1, 0), (1, 0)), "\n")
    assert document.text == "one\r\ntwo"
    assert document.line_count == 2
    assert document.line_text(1) == "two"


def test_empty_document_has_one_empty_line_and_a_tree():
    document = Document("file:///empty.rs", "", "rust")
    assert document.line_count == 1 and document.line_text(0) == ""
    assert document.offset_at((0, 0)) == 0
    assert document.root_at(0).type == "source_file"
    document.apply_change(((0, 0), (0, 0)), "fn main() {}\n")
    assert not document.root_at(0).has_error


def test_unknown_language_gets_plain_text_without_a_tree():
    document = Document("file:///notes.xyz", "hello {\nworld\n", "klingon")
    assert document.spec.name == "plaintext"
    assert not document.has_syntax
    assert document.root_at(0) is None and document.node_at(3) is None
    assert list(document.top_level_nodes(0, backward=False)) == []
    document.apply_change(((1, 0), (1, 5)), "there")
    assert document.text == "hello {\nthere\n"


def test_full_text_change_is_applied_as_a_minimal_edit_and_keeps_the_tree_current():
    document = Document("file:///a.ts", sample("ts"), "typescript")
    document.root_at(0)
    edited = sample("ts").replace("return task;", "return { ...task };", 1)
    document.apply_change(None, edited)
    assert document.text == edited
    assert node_spans(document.root_at(0)) == node_spans(fresh_tree(document).root_node)
    assert document.revision == 1


def test_root_with_insertion_leaves_the_document_alone():
    document = Document("file:///a.py", "def f():\n    return 1\n", "python")
    before = node_spans(document.root_at(0))
    offset = document.offset_at((1, 12))
    spliced = document.root_with_insertion(offset, " + (2")
    assert spliced.has_error
    assert document.text == "def f():\n    return 1\n"
    assert node_spans(document.root_at(0)) == before


def test_an_insertion_is_parsed_once_per_revision():
    document = Document("file:///a.py", "def f():\n    return 1\n", "python")
    offset = document.offset_at((1, 12))
    first = document.root_with_insertion(offset, " + (2")
    assert document.root_with_insertion(offset, " + (2") is first  # post-processing and ranking share the parse
    assert document.root_with_insertion(offset, " + 2") is not first and not document.root_with_insertion(
        offset, " + 2").has_error
    document.apply_change(((1, 12), (1, 12)), ")")  # "return 1)": the cached parse is of the old text
    after = document.root_with_insertion(offset, " + (2")
    assert after is not first and document.text == "def f():\n    return 1)\n"
    assert node_spans(after) == node_spans(Document("file:///b.py", "def f():\n    return 1 + (2)\n", "python")
                                           .root_at(0))


@pytest.fixture
def small_segments(monkeypatch):
    """Segment documents every 8 lines so that segment logic is exercised by small files."""
    monkeypatch.setattr(documents, "SEGMENT_LINES", 8)


def test_large_documents_are_segmented_and_read_like_one_tree(small_segments):
    text = sample("py") * 3
    document = Document("file:///big.py", text, "python")
    full = fresh_tree(document).root_node
    assert top_level_spans(document) == [(child.type, child.start_byte, child.end_byte) for child in full.children]
    assert len(document._segments) > 3
    rng = random.Random(3)
    for offset in rng.sample(range(len(document.source)), 200):
        mine, theirs = document.node_at(offset), full.descendant_for_byte_range(offset, offset)
        if theirs.parent is None:  # between top-level nodes: each segment has its own root
            assert mine.parent is None
        else:
            assert (mine.type, mine.start_byte, mine.end_byte) == (theirs.type, theirs.start_byte, theirs.end_byte)
    forward = [(node.type, node.start_byte) for node in document.top_level_nodes(text.index("class Inventory"), False)]
    assert forward[0] == ("class_definition", text.index("class Inventory"))


def segment_trees_are_fresh(document: Document) -> bool:
    """Whether every segment's tree equals a from-scratch parse of the segment's range."""
    parser = tree_sitter.Parser(document.spec.ts_language)
    for segment in document._segments:
        parser.included_ranges = segment.tree.included_ranges
        if node_spans(segment.tree.root_node) != node_spans(parser.parse(document.source).root_node):
            return False
    return True


@pytest.mark.parametrize("extension", ["py", "go", "c", "rs"])
def test_segmented_documents_stay_equal_to_a_full_parse_under_structure_preserving_edits(small_segments, extension):
    rng = random.Random(extension)
    document = Document(f"file:///big.{extension}", sample(extension) * 3, LANGUAGE_IDS[extension])
    comment = "# edited\n" if extension == "py" else "// edited\n"
    for _ in range(30):
        lines = reference_lines(document.text)
        line = rng.randrange(len(lines) - 1)
        action = rng.choice(["comment", "delete blank", "duplicate definition"])
        if action == "comment":
            document.apply_change(((line, 0), (line, 0)), comment)
        elif action == "delete blank" and not lines[line].strip() and line > 0:
            document.apply_change(((line - 1, len(lines[line - 1])), (line, 0)), "")  # may cross a boundary
        else:
            node = rng.choice(list(document.top_level_nodes(0, backward=False)))
            start = document.line_start(document.line_at(node.start_byte))
            end = document.line_end(document.line_at(node.end_byte))  # whole lines: keeps a trailing ";"
            copy = document.text_between(start, end) + "\n"
            document.apply_change((document.position_at(start), document.position_at(start)), copy)
        full = fresh_tree(document).root_node
        assert not full.has_error
        assert top_level_spans(document) == [(child.type, child.start_byte, child.end_byte) for child in full.children]
        assert segment_trees_are_fresh(document)


@pytest.mark.parametrize("extension", ["py", "js"])
def test_segment_trees_stay_fresh_under_arbitrary_broken_edits(small_segments, extension):
    rng = random.Random(extension + "broken")
    document = Document(f"file:///big.{extension}", sample(extension) * 3, LANGUAGE_IDS[extension])
    snippets = ["(", ")", "{", "}", '"', "'''", "\n", "    ", "x", "/*", ""]
    for _ in range(40):
        start = rng.randrange(document.byte_length)
        end = min(document.byte_length, start + rng.choice([0, 1, 5, 40]))
        inserted = "".join(rng.choice(snippets) for _ in range(rng.randint(0, 3)))
        document.apply_change((document.position_at(start), document.position_at(end)), inserted)
        document.root_at(0)
        assert segment_trees_are_fresh(document)
        segments = document._segments
        assert segments[0].start == 0 and segments[-1].end == document.byte_length
        assert all(left.end == right.start for left, right in zip(segments, segments[1:]))


def test_edit_across_a_segment_boundary_merges_the_segments(small_segments):
    document = Document("file:///big.py", sample("py") * 3, "python")
    document.root_at(0)
    boundary = document._segments[2].start
    count = len(document._segments)
    crossing = (document.position_at(boundary - 1), document.position_at(boundary + 1))
    document.apply_change(crossing, document.text_between(boundary - 1, boundary + 1))  # same text, new edit
    assert len(document._segments) == count - 1
    assert top_level_spans(document) == [
        (child.type, child.start_byte, child.end_byte) for child in fresh_tree(document).root_node.children
    ]
    assert segment_trees_are_fresh(document)


def test_indenting_the_first_line_of_a_segment_merges_it_into_the_previous_one(small_segments):
    document = Document("file:///big.py", sample("py") * 2, "python")
    document.root_at(0)
    segment = next(segment for segment in document._segments[1:] if document.text_between(segment.start, segment.start + 3) == "def")
    line = document.line_at(segment.start)
    count = len(document._segments)
    document.apply_change(((line, 0), (line, 0)), "    ")
    document.root_at(0)
    assert len(document._segments) == count - 1
    assert all(document.text_between(s.start, s.start + 1) not in (" ", "\t") for s in document._segments)


def test_a_syntax_error_inside_a_segment_does_not_merge_segments(small_segments):
    document = Document("file:///big.py", sample("py") * 3, "python")
    document.root_at(0)
    count = len(document._segments)
    # An unclosed "(" in a class docstring line: tree-sitter makes the code before it one ERROR node.
    line = document.text.count("\n", 0, document.text.index('    """Keeps quantities per SKU'))
    column = len(document.line_text(line)) - len(document.line_text(line).lstrip())
    document.apply_change(((line, column), (line, column)), "x(")
    assert document.root_at(document.line_start(line)).has_error
    assert len(document._segments) == count
    assert segment_trees_are_fresh(document)


def test_incremental_reparse_of_a_20000_line_file_is_far_cheaper_than_a_full_parse():
    text = large_python_source()
    document = Document("file:///big.py", text, "python")
    started = time.perf_counter()
    fresh_tree(document)
    full_parse = time.perf_counter() - started
    document.root_at(0)
    line = document.line_count // 2
    durations = []
    for attempt in range(5):
        column = len(document.line_text(line + attempt))
        started = time.perf_counter()
        document.apply_change(((line + attempt, column), (line + attempt, column)), "x")
        document.root_at(document.line_start(line + attempt))
        durations.append(time.perf_counter() - started)
    assert statistics.median(durations) < full_parse / 10
    node = document.node_at(document.line_start(line) + len(document.line_text(line)) - 1)
    assert node.end_byte == document.line_end(line)
