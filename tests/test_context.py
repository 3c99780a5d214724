"""Context builder: token budget, syntax-boundary cuts, root-path headers, imports, snippets."""

from __future__ import annotations

import statistics
import time

import pytest
from fixtures.support import LANGUAGE_IDS, large_python_source, sample, token_counter

from lsp_server.completion_mode import CompletionMode
from lsp_server.context import ContextBudget, ContextError, CutKind, InfillContext, build_context, line_edge_kind
from lsp_server.documents import Document
from lsp_server.positions import PositionError

count_tokens = token_counter()


def cursor_at(document: Document, anchor: str, delta: int = 0) -> tuple[int, int]:
    """Position of the first occurrence of ``anchor`` (plus ``delta`` characters) in the document."""
    index = document.text.index(anchor) + delta
    return document.position_at(len(document.text[:index].encode()))


def assert_consistent(document: Document, context: InfillContext, budget: ContextBudget) -> None:
    """Counts are exact, the total is within budget and the window is the document's own text."""
    assert context.prefix_tokens == count_tokens(context.prefix)
    assert context.suffix_tokens == count_tokens(context.suffix)
    assert context.snippet_tokens == count_tokens("".join(snippet.rendered for snippet in context.snippets))
    assert context.total_tokens <= budget.max_tokens
    assert context.prefix.endswith(document.text_between(context.window_start, context.cursor_offset))
    assert context.suffix == document.text_between(context.cursor_offset, context.window_end)


def leaf_spanning(document: Document, offset: int):
    root = document.root_at(offset)
    node = root.descendant_for_byte_range(offset, offset)
    return node if node.child_count == 0 else None


def assert_not_inside_a_token(document: Document, offset: int) -> None:
    leaf = leaf_spanning(document, offset)
    assert leaf is None or not (leaf.start_byte < offset < leaf.end_byte), f"cut inside {leaf.type} at {offset}"


def assert_statement_start(document: Document, offset: int) -> None:
    """``offset`` is a line start whose first token begins a whole statement/member/definition."""
    line = document.line_at(offset)
    assert document.line_start(line) == offset
    text = document.line_text(line)
    first = offset + len(text) - len(text.lstrip())
    node = document.root_at(first).named_descendant_for_byte_range(first, first + 1)
    chain = []
    while node is not None and node.start_byte == first:
        chain.append(node)
        node = node.parent
    body_types = document.spec.body_types
    assert any(n.type in body_types or (n.parent is not None and n.parent.type in body_types) for n in chain), (
        f"{document.uri}: window starts at {text!r}, not at a statement"
    )


def assert_statement_end(document: Document, offset: int) -> None:
    """``offset`` is just past a line terminator (or the end of text) after a whole statement."""
    if offset == document.byte_length:
        return
    line = document.line_at(offset)
    assert document.line_start(line) == offset
    previous = document.line_text(line - 1)
    last = document.line_end(line - 1) - (len(previous) - len(previous.rstrip()))
    if not previous.strip():
        return
    node = document.root_at(last - 1).descendant_for_byte_range(last - 1, last)
    chain = []
    while node is not None and node.end_byte == last:
        chain.append(node)
        node = node.parent
    body_types = document.spec.body_types
    assert any(
        n.is_named and (n.type in body_types or (n.parent is not None and n.parent.type in body_types)) for n in chain
    ), f"{document.uri}: window ends after {previous!r}, not after a statement"


def sample_positions(document: Document) -> list[tuple[int, int]]:
    """Cursor positions spread over the document: line ends and indentation ends."""
    positions = []
    for line in range(0, document.line_count, max(1, document.line_count // 7)):
        text = document.line_text(line)
        positions.append((line, len(text)))
        positions.append((line, len(text) - len(text.lstrip())))
    return positions


@pytest.mark.parametrize("extension", sorted(LANGUAGE_IDS))
@pytest.mark.parametrize("max_tokens", [48, 200, 1024])
def test_budget_is_respected_and_cuts_fall_on_syntax_boundaries(extension, max_tokens):
    document = Document(f"file:///sample.{extension}", sample(extension), LANGUAGE_IDS[extension])
    budget = ContextBudget(max_tokens=max_tokens)
    for position in sample_positions(document):
        context = build_context(document, position, count_tokens, budget)
        if context.mode is CompletionMode.NONE:
            continue
        assert_consistent(document, context, budget)
        assert_not_inside_a_token(document, context.window_start)
        assert_not_inside_a_token(document, context.window_end)
        if max_tokens >= 200:  # room for at least the statement around the cursor
            if context.window_start > 0:
                assert_statement_start(document, context.window_start)
            assert_statement_end(document, context.window_end)


def test_whole_small_file_fits_without_headers_or_gaps():
    document = Document("file:///sample.ts", sample("ts"), "typescript")
    context = build_context(document, cursor_at(document, "task.done = true;"), count_tokens, ContextBudget(4096))
    assert context.window_start == 0 and context.window_end == document.byte_length
    assert context.prefix + context.suffix == document.text
    assert context.headers == () and context.imports == ()


ENCLOSING = {
    "py": ("del self.items[sku]", ["class Inventory:", "    def remove(self, sku: str, quantity: int = 1) -> int:"]),
    "js": ("this.entries.delete(key);\n      }", ["export class ExpiringCache {", "  prune() {"]),
    "ts": ("task.done = true;", ["export class TaskStore extends EventEmitter {", "  complete(id: number): boolean {"]),
    "go": ("s.quantities[sku] = remaining", ["func (s *Store) Remove(sku string, quantity int) (int, error) {"]),
    "rs": (
        "self.items.remove(sku);",
        ["impl Store {", "    pub fn remove(&mut self, sku: &str, quantity: u32) -> Result<u32, StoreError> {"],
    ),
    "java": ("items.remove(sku);", ["public class Inventory {", "    public int remove(String sku, int quantity) {"]),
    "c": ("item->price_cents = price;", ["int inventory_add(struct inventory *inv, const char *sku, const char *name, long price) {"]),
    "cpp": (
        "items_.erase(sku);",
        ["namespace inventory {", "class Store {", "    int remove(const std::string& sku, int quantity) {"],
    ),
}


@pytest.mark.parametrize("extension", sorted(ENCLOSING))
def test_headers_of_enclosing_definitions_are_kept_in_order(extension):
    anchor, expected_headers = ENCLOSING[extension]
    document = Document(f"file:///sample.{extension}", sample(extension), LANGUAGE_IDS[extension])
    budget = ContextBudget(max_tokens=100)
    context = build_context(document, cursor_at(document, anchor), count_tokens, budget)
    assert_consistent(document, context, budget)
    positions = [context.prefix.index(header + "\n") for header in expected_headers]
    assert positions == sorted(positions)
    # Headers outside the window are listed and placed before it; the others are inside the window.
    outside = [header for header in expected_headers if document.text.index(header) < context.window_start]
    assert list(context.headers) == outside and outside
    window = document.text_between(context.window_start, context.cursor_offset)
    assert all(context.prefix.index(header) < context.prefix.index(window) for header in outside)


def test_gaps_are_marked_with_an_indented_comment():
    document = Document("file:///sample.py", sample("py"), "python")
    context = build_context(document, cursor_at(document, "del self.items[sku]"), count_tokens, ContextBudget(120))
    assert "class Inventory:\n    # ...\n    def remove(" in context.prefix
    assert "-> int:\n        # ...\n" in context.prefix


def test_imports_are_kept_when_the_budget_allows_and_dropped_when_not():
    document = Document("file:///big.py", large_python_source(3000), "python")
    position = (document.line_count - 20, 0)
    roomy = build_context(document, position, count_tokens, ContextBudget(max_tokens=600))
    assert "import json" in roomy.imports and "from pathlib import Path" in roomy.imports
    assert roomy.prefix.startswith("from __future__ import annotations\n")
    tight = build_context(document, position, count_tokens, ContextBudget(max_tokens=40))
    assert tight.imports == ()
    assert tight.prefix_tokens <= 40


def test_snippets_from_other_documents_are_ranked_by_identifier_overlap_and_labelled():
    document = Document("file:///proj/report.py", sample("py"), "python")
    related = Document(
        "file:///proj/stock.py",
        "def low_stock(inventory, threshold):\n"
        "    return [sku for sku, quantity in inventory.quantities.items() if quantity < threshold]\n\n\n"
        "def restock(inventory, sku, quantity):\n"
        "    inventory.quantities[sku] = inventory.quantities.get(sku, 0) + quantity\n",
        "python",
    )
    unrelated = Document("file:///proj/geometry.py", "def hypot(a, b):\n    return (a * a + b * b) ** 0.5\n", "python")
    budget = ContextBudget(max_tokens=400)
    position = cursor_at(document, "if quantity < threshold:")
    context = build_context(document, position, count_tokens, budget, [unrelated, document, related])
    assert_consistent(document, context, budget)
    assert context.snippets, "the related document should contribute"
    assert {snippet.path for snippet in context.snippets} == {"/proj/stock.py"}
    assert all(snippet.label == "# Path: /proj/stock.py\n" for snippet in context.snippets)
    assert [snippet.score for snippet in context.snippets] == sorted(
        (snippet.score for snippet in context.snippets), reverse=True
    )
    assert context.snippets[0].text in related.text
    assert context.prompt_prefix().startswith("# Path: /proj/stock.py\n")
    assert context.prompt_prefix().endswith(context.prefix)


def test_other_files_share_goes_to_prefix_and_suffix_when_no_other_document_is_related():
    document = Document("file:///big.py", large_python_source(2000), "python")
    unrelated = Document("file:///notes.txt", "nothing in common here\n", "plaintext")
    budget = ContextBudget(max_tokens=300, prefix_share=0.5, suffix_share=0.3, other_files_share=0.2)
    alone = build_context(document, (1000, 8), count_tokens, budget)
    with_unrelated = build_context(document, (1000, 8), count_tokens, budget, [unrelated])
    assert with_unrelated.snippets == ()
    assert (with_unrelated.prefix, with_unrelated.suffix) == (alone.prefix, alone.suffix)
    assert alone.prefix_tokens + alone.suffix_tokens > 0.8 * 300


def test_snippets_only_fill_leftover_budget():
    document = Document("file:///proj/report.py", large_python_source(2000), "python")
    other = Document("file:///proj/copy.py", sample("py"), "python")
    budget = ContextBudget(max_tokens=300, prefix_share=0.5, suffix_share=0.3, other_files_share=0.2)
    context = build_context(document, (1000, 0), count_tokens, budget, [other])
    assert_consistent(document, context, budget)
    assert context.snippets
    assert context.snippet_tokens <= budget.max_tokens - context.prefix_tokens - context.suffix_tokens
    assert context.prefix_tokens <= 150 + 90  # its share plus what the suffix could have left


def test_budget_split_is_configurable():
    document = Document("file:///big.py", large_python_source(2000), "python")
    position = (1000, 8)
    prefix_heavy = build_context(document, position, count_tokens, ContextBudget(300, 0.9, 0.1, 0.0))
    suffix_heavy = build_context(document, position, count_tokens, ContextBudget(300, 0.1, 0.9, 0.0))
    assert prefix_heavy.prefix_tokens > suffix_heavy.prefix_tokens
    assert suffix_heavy.suffix_tokens > prefix_heavy.suffix_tokens
    assert prefix_heavy.prefix_tokens <= 270 and suffix_heavy.suffix_tokens <= 270
    no_suffix = build_context(document, position, count_tokens, ContextBudget(300, 1.0, 0.0, 0.0))
    assert no_suffix.suffix_tokens <= count_tokens(document.line_text(1000)) and no_suffix.prefix_tokens > 200


def test_unused_budget_flows_to_the_other_side():
    document = Document("file:///big.py", large_python_source(2000), "python")
    budget = ContextBudget(400, 0.5, 0.5, 0.0)
    near_start = build_context(document, (3, 0), count_tokens, budget)
    assert near_start.window_start == 0 and near_start.suffix_tokens > 200
    near_end = build_context(document, (document.line_count - 2, 0), count_tokens, budget)
    assert near_end.window_end == document.byte_length and near_end.prefix_tokens > 200


@pytest.mark.parametrize(
    "arguments",
    [
        dict(max_tokens=0),
        dict(max_tokens=True),
        dict(max_tokens=10, prefix_share=0.8, suffix_share=0.5),
        dict(max_tokens=10, suffix_share=-0.1),
    ],
)
def test_invalid_budgets_are_rejected(arguments):
    with pytest.raises(ContextError):
        ContextBudget(**arguments)


def test_mid_identifier_gives_an_empty_context_unless_invoked():
    document = Document("file:///sample.py", sample("py"), "python")
    position = cursor_at(document, "restock_report", 3)
    skipped = build_context(document, position, count_tokens)
    assert skipped.mode is CompletionMode.NONE and skipped.prefix == skipped.suffix == "" and skipped.total_tokens == 0
    invoked = build_context(document, position, count_tokens, invoked=True)
    assert invoked.mode is CompletionMode.SINGLE_LINE and invoked.prefix.endswith("def res")


def test_empty_document_and_cursor_at_the_edges_of_a_file():
    empty = Document("file:///empty.go", "", "go")
    context = build_context(empty, (0, 0), count_tokens)
    assert (context.prefix, context.suffix, context.mode) == ("", "", CompletionMode.MULTI_LINE)
    document = Document("file:///sample.rs", sample("rs"), "rust")
    budget = ContextBudget(max_tokens=200)
    at_start = build_context(document, (0, 0), count_tokens, budget)
    assert at_start.prefix == "" and at_start.suffix.startswith("use std::collections::HashMap;")
    assert_consistent(document, at_start, budget)
    last = document.line_count - 1
    at_end = build_context(document, (last, len(document.line_text(last))), count_tokens, budget)
    assert at_end.suffix == "" and document.text.endswith(at_end.prefix[-50:])
    assert_consistent(document, at_end, budget)


@pytest.mark.parametrize(
    ("language_id", "text", "anchor"),
    [
        ("python", "import os\n\ndef load(path:\n    with open(path) as f:\n        data = f.rea\n\nclass Broken(\n", "f.rea"),
        ("javascript", "function f( {\n  const x = [1, 2,\n  if (x) {\n    retur\n}\n", "retur"),
        ("rust", "fn main() {\n    let v = vec![1, 2\n    for x in v {\n        println!(\"{}\", x\n", "x\n"),
    ],
)
def test_half_typed_code_still_gets_a_valid_context(language_id, text, anchor):
    document = Document("file:///broken", text, language_id)
    budget = ContextBudget(max_tokens=60)
    context = build_context(document, cursor_at(document, anchor, len(anchor)), count_tokens, budget)
    assert_consistent(document, context, budget)
    assert_not_inside_a_token(document, context.window_start)
    assert context.prefix.endswith(anchor)


def test_a_huge_string_before_the_cursor_is_never_cut_inside():
    docstring = "".join(f"    line {index} of a very long docstring about nothing in particular\n" for index in range(300))
    text = f'def f():\n    """\n{docstring}    """\n    value = 1\n    return value\n'
    document = Document("file:///doc.py", text, "python")
    budget = ContextBudget(max_tokens=100)
    context = build_context(document, cursor_at(document, "return value"), count_tokens, budget)
    assert_consistent(document, context, budget)
    assert line_edge_kind(document, document.line_at(context.window_start), at_start=True) is not CutKind.NONE
    assert "of a very long docstring" not in context.prefix


def test_a_line_longer_than_the_budget_is_cut_at_a_token_start():
    text = "values = [" + ", ".join(f"item_{index}" for index in range(400)) + "]\n"
    document = Document("file:///long.py", text, "python")
    budget = ContextBudget(max_tokens=40, prefix_share=0.5, suffix_share=0.5, other_files_share=0.0)
    context = build_context(document, (0, len(text) - 2), count_tokens, budget)
    assert_consistent(document, context, budget)
    assert context.prefix.startswith("item_") and context.prefix.endswith("item_399")
    assert 0 < context.window_start
    assert_not_inside_a_token(document, context.window_start)


def test_crlf_documents_keep_their_line_endings():
    text = sample("java").replace("\n", "\r\n")
    document = Document("file:///Inventory.java", text, "java")
    budget = ContextBudget(max_tokens=160)
    context = build_context(document, cursor_at(document, "items.remove(sku);"), count_tokens, budget)
    assert_consistent(document, context, budget)
    assert "\r\n" in context.prefix and "\n" not in context.prefix.replace("\r\n", "")
    assert context.suffix.startswith("items.remove(sku);\r\n")


def test_plain_text_is_cut_at_lines():
    text = "".join(f"paragraph line {index} with some words\n" for index in range(200))
    document = Document("file:///notes.txt", text, "plaintext")
    budget = ContextBudget(max_tokens=100)
    context = build_context(document, (100, 0), count_tokens, budget)
    assert_consistent(document, context, budget)
    assert document.line_start(document.line_at(context.window_start)) == context.window_start
    assert context.headers == () and context.imports == ()


def test_invalid_positions_raise_position_error():
    document = Document("file:///sample.py", sample("py"), "python")
    with pytest.raises(PositionError):
        build_context(document, (document.line_count, 0), count_tokens)
    with pytest.raises(PositionError):
        build_context(document, (-1, 0), count_tokens)


def test_context_of_a_20000_line_file():
    document = Document("file:///big.py", large_python_source(), "python")
    assert document.line_count >= 20_000
    budget = ContextBudget(max_tokens=1024)
    position = cursor_at(document, "class Inventory150:")
    position = (position[0] + 30, 8)
    durations = []
    for _ in range(3):
        started = time.perf_counter()
        context = build_context(document, position, count_tokens, budget)
        durations.append(time.perf_counter() - started)
    assert_consistent(document, context, budget)
    assert_statement_start(document, context.window_start)
    assert context.imports and "Inventory150" in context.prefix
    assert statistics.median(durations) < 0.2  # the target is 20 ms; this only guards against regressions
