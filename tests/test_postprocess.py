"""Post-processing of raw middles: one rule per test, then each language's block end ("‸" is the cursor)."""

from __future__ import annotations

import pytest

from lsp_server.completion_mode import CompletionMode, decide_mode
from lsp_server.documents import Document
from lsp_server.postprocess import postprocess, unclosed

CURSOR = "‸"


def run(language_id: str, marked: str, raw: str, mode: CompletionMode | None = None) -> str | None:
    index = marked.index(CURSOR)
    text = marked.replace(CURSOR, "")
    document = Document(f"file:///case.{language_id}", text, language_id)
    position = document.position_at(len(text[:index].encode()))
    return postprocess(raw, document, position, mode or decide_mode(document, position))


def test_single_line_mode_keeps_only_the_first_line():
    assert run("python", "total = ‸\n", "price * quantity\nprint(total)\n") == "price * quantity"


def test_single_line_starting_with_a_newline_is_dropped():
    assert run("python", "total = ‸\n", "\nprint(total)") is None


def test_block_ends_where_the_syntax_tree_says_even_across_a_dedented_continuation_line():
    raw = "\n    total = compute(\n        x,\n)\n    return total\n\ndef unrelated():\n    pass\n"
    # The ")" line is less indented than the body, but the parse knows the call continues.
    assert run("python", "def f(x):‸\n", raw) == "\n    total = compute(\n        x,\n)\n    return total"


def test_block_end_falls_back_to_indentation_when_the_splice_does_not_parse():
    raw = "\n  return 1;\n}\n\nfunction g() {\n  broken(\n"
    assert run("javascript", "function f() {‸\n}\n", raw) == "\n  return 1;"


def test_indentation_fallback_at_a_header_with_a_body_keeps_to_the_body_and_closes_brackets():
    raw = "\n    x = compute(\n\ndef other(:\n"
    assert run("python", "def f():‸\n    return 1\n", raw) == "\n    x = compute()"


def test_multi_line_completion_stops_at_a_dedent():
    marked = "class A:\n    def f(self):\n        x = 1\n        ‸\n"
    raw = "y = x + 1\n        return y\n\n    def g(self):\n        return 2\n"
    assert run("python", marked, raw) == "y = x + 1\n        return y"


def test_trailing_lines_repeating_the_following_lines_are_removed():
    marked = "def f():\n    x = 1\n    ‸\n    return x\n"
    assert run("python", marked, "y = 2\n    return x\n") == "y = 2"
    assert run("python", marked, "return x") is None


def test_closing_brace_already_in_the_suffix_is_not_repeated():
    assert run("javascript", "function f() {‸}\n", "\n  return 1;\n}") == "\n  return 1;\n"
    assert run("c", "int main(void) {‸\n}\n", "\n  return 0;\n}\n") == "\n  return 0;"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a, b);", "a, b"),  # repeats the ");" right of the cursor
        ("a, b)", "a, b"),
        ("bar()", "bar()"),  # its ")" closes its own "(": nothing to remove
        ("bar(a", "bar(a)"),  # unclosed: closed so the suffix's ")" still closes foo(
    ],
)
def test_brackets_are_balanced_with_the_rest_of_the_line(raw, expected):
    assert run("javascript", "const x = foo(‸);\n", raw) == expected


def test_quotes_are_balanced_with_the_rest_of_the_line():
    assert run("python", 'print("‸")\n', 'hello")') == "hello"
    assert run("python", "names = [‸]\n", "'ada', 'grace") == "'ada', 'grace'"


def test_brackets_are_balanced_lexically_in_plain_text():
    assert run("plaintext", "(see ‸)\n", "the notes above)") == "the notes above"
    assert run("plaintext", "(see ‸)\n", "f(x)") == "f(x)"


def test_indentation_is_converted_to_tabs_in_a_tab_indented_document():
    marked = "package main\n\nfunc main() {\n\tx := 1\n\t‸\n}\n"
    raw = "if x > 0 {\n        fmt.Println(x)\n    }\n"
    assert run("go", marked, raw) == "if x > 0 {\n\t\tfmt.Println(x)\n\t}"


def test_indentation_is_converted_to_spaces_in_a_space_indented_document():
    marked = "def f(xs):\n    total = 0\n    ‸\n"
    assert run("python", marked, "for x in xs:\n\t\ttotal += x\n\treturn total") == (
        "for x in xs:\n        total += x\n    return total"
    )


def test_first_line_is_not_indented_again_when_the_cursor_already_is():
    assert run("python", "def f():\n    x = 1\n    ‸\n", "    return x * 2") == "return x * 2"


@pytest.mark.parametrize(("marked", "raw", "expected"), [
    ("def f(obj):\n    return ‸\n", " obj", "obj"),
    ("def f(obj):\n    return ‸\n", "\tobj", "obj"),
    ("x = ‸\n", "  1 + 2", "1 + 2"),
    ("x =‸\n", " 1", " 1"),  # no space before the cursor: the model's space is the only one
])
def test_no_doubled_space_after_a_cursor_that_follows_whitespace(marked, raw, expected):
    assert run("python", marked, raw) == expected


def test_trailing_whitespace_is_stripped_except_before_text_on_the_cursor_line():
    assert run("python", "def f():\n    ‸\n", "x = 1   \n    y = 2   \n\n") == "x = 1\n    y = 2"
    assert run("python", "call(first, ‸third)\n", "second, ") == "second, "


@pytest.mark.parametrize("raw", ["", "   ", "\n\n", "\t \n  "])
def test_empty_or_whitespace_only_middles_are_dropped(raw):
    assert run("python", "def f():\n    ‸\n", raw) is None


def test_nothing_is_returned_in_mode_none():
    assert run("python", "valu‸e = 1\n", "x", CompletionMode.NONE) is None


def test_output_uses_the_documents_line_endings():
    marked = "def f(x):\r\n    ‸\r\n"
    assert run("python", marked, "y = x\n    return y") == "y = x\r\n    return y"
    assert run("python", marked, "y = x\r\n    return y") == "y = x\r\n    return y"


BLOCKS = [
    ("python", "def area(w, h):‸\n\ndef other():\n    pass\n", "\n    return w * h\n\ndef spare():\n    pass\n",
     "\n    return w * h"),
    ("javascript", "function area(w, h) {‸\n}\n", "\n  return w * h;\n}\n\nfunction spare() {\n  return 0;\n}\n",
     "\n  return w * h;"),
    ("typescript", "class A {\n  area(): number {‸\n  }\n}\n", "\n    return 1;\n  }\n\n  spare(): void {}\n",
     "\n    return 1;"),
    ("typescriptreact", "function View() {‸\n}\n", "\n  return <div />;\n}\n\nfunction Spare() {}\n",
     "\n  return <div />;"),
    ("go", "package a\n\nfunc area(w, h int) int {‸\n}\n", "\n\treturn w * h\n}\n\nfunc spare() {}\n",
     "\n\treturn w * h"),
    ("rust", "fn area(w: u32, h: u32) -> u32 {‸\n}\n", "\n    w * h\n}\n\nfn spare() {}\n", "\n    w * h"),
    ("java", "class A {\n  int area(int w, int h) {‸\n  }\n}\n", "\n    return w * h;\n  }\n\n  void spare() {}\n",
     "\n    return w * h;"),
    ("c", "int area(int w, int h) {‸\n}\n", "\n  return w * h;\n}\n\nint spare(void) { return 0; }\n",
     "\n  return w * h;"),
    ("cpp", "namespace g {\nint area(int w, int h) {‸\n}\n}\n", "\n  return w * h;\n}\n\nint spare() { return 0; }\n",
     "\n  return w * h;"),
]


@pytest.mark.parametrize(("language_id", "marked", "raw", "expected"), BLOCKS, ids=[case[0] for case in BLOCKS])
def test_each_language_stops_at_the_end_of_the_block_being_written(language_id, marked, raw, expected):
    assert run(language_id, marked, raw, CompletionMode.BLOCK) == expected


def test_unclosed_reports_missing_and_stray_closers_outside_strings():
    assert unclosed("f(a, [b, {c") == (["}", "]", ")"], [])
    assert unclosed("x) + ')' + y]") == ([], [")", "]"])
    assert unclosed('print("(unbalanced') == (['"', ")"], [])
    assert unclosed(r"'it\'s' + (") == ([")"], [])


def test_a_non_string_middle_is_rejected_clearly():
    document = Document("file:///case.py", "x = 1\n", "python")
    with pytest.raises(TypeError, match="raw middle must be a string"):
        postprocess(None, document, (0, 5), CompletionMode.SINGLE_LINE)


# At the start of a line of code (HumanEval-Infilling's holes, or the cursor put before a statement): whole lines
# that go above it, each ending with a newline, never joined to the code after the cursor.
ABOVE = "def mean(values):\n    total = sum(values)\n‸    return total / len(values)\n"


def test_lines_inserted_above_a_line_of_code_end_with_a_newline():
    assert run("python", ABOVE, "    assert values") == "    assert values\n"
    assert run("python", ABOVE, "    assert values\n    count = len(values)\n") == (
        "    assert values\n    count = len(values)\n")


def test_lines_above_that_repeat_the_cursor_line_are_removed():
    assert run("python", ABOVE, "    assert values\n    return total / len(values)\n") == "    assert values\n"
    assert run("python", ABOVE, "    return total / len(values)\n") is None
