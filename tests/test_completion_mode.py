"""Mode decisions on a table of cursor cases per language ("‸" marks the cursor)."""

from __future__ import annotations

import dataclasses

import pytest

from lsp_server.completion_mode import CompletionMode, ModeRules, decide_mode
from lsp_server.documents import Document

NONE, SINGLE, MULTI, BLOCK = (
    CompletionMode.NONE,
    CompletionMode.SINGLE_LINE,
    CompletionMode.MULTI_LINE,
    CompletionMode.BLOCK,
)
CURSOR = "‸"


def document_and_cursor(language_id: str, marked: str) -> tuple[Document, tuple[int, int]]:
    index = marked.index(CURSOR)
    text = marked.replace(CURSOR, "")
    document = Document(f"file:///case.{language_id}", text, language_id)
    return document, document.position_at(len(text[:index].encode()))


CASES = {
    "python": [
        ("def area(width, height):‸\n", BLOCK),
        ("def area(width, height):‸\n    return width * height\n", MULTI),
        ("def area(width, height):\n    ‸\n", BLOCK),
        ("def area(width, height):\n    product = width * height\n    ‸\n", MULTI),
        ("class Shape:\n    def area(self):\n        return 0\n    ‸\n", MULTI),
        ("if ready:‸\n", BLOCK),
        ("result = compute(‸)\n", SINGLE),
        ("total = ‸\n", SINGLE),
        ("items = [\n    ‸\n]\n", SINGLE),
        ("value = compute_va‸lue(3)\n", NONE),
        ("# if this were code:‸\n", SINGLE),
        ("doc = '''\nclass NotCode:‸\n'''\n", SINGLE),
        ("‸", MULTI),
    ],
    "javascript": [
        ("function area(w, h) {‸}\n", BLOCK),
        ("function area(w, h) {‸\n}\n", BLOCK),
        ("function area(w, h) {\n  ‸\n}\n", BLOCK),
        ("function area(w, h) {\n  const a = w * h;\n  ‸\n}\n", MULTI),
        ("const total = sum(‸);\n", SINGLE),
        ("const point = {\n  ‸\n};\n", SINGLE),
        ("const empty = {‸};\n", SINGLE),
        ("// remember to close {‸\n", SINGLE),
        ("cons‸t x = 1;\n", NONE),
        ("for (const item of items) {‸\n", BLOCK),
    ],
    "typescript": [
        ("class Store {\n  size(): number {‸\n  }\n}\n", BLOCK),
        ("class Store {\n  private items: string[] = [];\n  ‸\n}\n", MULTI),
        ("interface Task {\n  ‸\n}\n", BLOCK),
        ("const label: string = format(task, ‸);\n", SINGLE),
        ("let coun‸ter = 0;\n", NONE),
    ],
    "typescriptreact": [
        ("export function View() {\n  return (\n    <div>\n      ‸\n    </div>\n  );\n}\n", SINGLE),
        ("export function View() {‸\n}\n", BLOCK),
        ("const title = <h1>{name‸}</h1>;\n", SINGLE),
    ],
    "go": [
        ("package main\n\nfunc main() {\n\t‸\n}\n", BLOCK),
        ("package main\n\nfunc main() {\n\tx := 1\n\t‸\n}\n", MULTI),
        ("package main\n\nvar xs = []int{\n\t‸\n}\n", SINGLE),
        ("package main\n\nfunc main() {\n\tfmt.Println(‸)\n}\n", SINGLE),
        ("package main\n\nfunc main() {\n\tif x > 0 {‸\n\t}\n}\n", BLOCK),
        ("package main\n\nfunc main() {\n\tswitch x {‸\n\t}\n}\n", BLOCK),
        ("package ma‸in\n", NONE),
    ],
    "rust": [
        ("fn area(w: u32, h: u32) -> u32 {‸\n}\n", BLOCK),
        ("fn main() {\n    let v = vec![\n        ‸\n    ];\n}\n", SINGLE),
        ("impl Shape {\n    fn a(&self) {}\n    ‸\n}\n", MULTI),
        ("fn main() {\n    match x {‸\n    }\n}\n", BLOCK),
        ("struct Point {‸\n}\n", BLOCK),
        ("fn main() {\n    let p = Point { x: 1, ‸ };\n}\n", SINGLE),
    ],
    "java": [
        ("class Shape {\n  int area() {‸\n  }\n}\n", BLOCK),
        ("class Shape {\n  int area() {\n    int a = 1;\n    ‸\n  }\n}\n", MULTI),
        ("class Shape {\n  void f() {\n    list.add(‸);\n  }\n}\n", SINGLE),
        ("class Shape {\n  int[] sizes = {\n    ‸\n  };\n}\n", SINGLE),
        ("class Sha‸pe {}\n", NONE),
    ],
    "c": [
        ("int main(void) {‸\n}\n", BLOCK),
        ("int main(void) {\n  int x = 1;\n  ‸\n}\n", MULTI),
        ('int main(void) {\n  printf("%d\\n", ‸);\n}\n', SINGLE),
        ("struct point pts[] = {\n  ‸\n};\n", SINGLE),
        ("struct point {‸\n};\n", BLOCK),
    ],
    "cpp": [
        ("namespace geometry {\n‸\n}\n", BLOCK),
        ("class Shape {\n public:\n  int area() {‸}\n};\n", BLOCK),
        ("std::vector<int> sizes{‸};\n", SINGLE),
        ("auto f = [](int x) {‸\n};\n", BLOCK),
        ("int main() {\n  std::sort(v.begin(), ‸);\n}\n", SINGLE),
    ],
    "plaintext": [
        ("Dear team,\n‸\n", MULTI),
        ("Meeting at ‸ tomorrow\n", SINGLE),
        ("remem‸ber\n", NONE),
        ("Notes:‸\n", SINGLE),
    ],
}


@pytest.mark.parametrize(
    ("language_id", "marked", "expected"),
    [(language_id, marked, expected) for language_id, cases in CASES.items() for marked, expected in cases],
)
def test_mode_table(language_id, marked, expected):
    document, position = document_and_cursor(language_id, marked)
    assert decide_mode(document, position) is expected


def test_explicit_invocation_completes_inside_an_identifier():
    document, position = document_and_cursor("python", "value = compute_va‸lue(3)\n")
    assert decide_mode(document, position, invoked=True) is SINGLE


def test_rules_can_be_overridden_per_call():
    document, position = document_and_cursor("python", "def area(width, height):‸\n")
    no_blocks = dataclasses.replace(ModeRules.for_language(document.spec), block_opener=None)
    assert decide_mode(document, position, rules=no_blocks) is SINGLE
    document, position = document_and_cursor("javascript", "const point = {\n  ‸\n};\n")
    objects_are_bodies = dataclasses.replace(
        ModeRules.for_language(document.spec), body_types=document.spec.body_types | {"object"}
    )
    assert decide_mode(document, position, rules=objects_are_bodies) is BLOCK


@pytest.mark.parametrize(
    ("marked", "expected"),
    # At the very start of a line of code, whole lines go above it.
    [("‸def f():\n    pass\n", MULTI), ("def f():\n    pass\n‸", MULTI), ("x = 1‸", SINGLE)],
)
def test_cursor_at_start_and_end_of_file(marked, expected):
    document, position = document_and_cursor("python", marked)
    assert decide_mode(document, position) is expected


def test_broken_half_typed_code_still_gets_a_mode():
    document, position = document_and_cursor("python", "def f(x:\n    if x >‸\n\nclass\n")
    assert decide_mode(document, position) is SINGLE
    document, position = document_and_cursor("javascript", "function f( {\n  if (x) {‸\n")
    assert decide_mode(document, position) is BLOCK
