"""Candidate ranking: syntax errors introduced first, model score second ("‸" is the cursor)."""

from __future__ import annotations

import pytest
import tree_sitter

from lsp_server.documents import Document
from lsp_server.languages import language_for
from lsp_server.ranking import count_syntax_errors, rank_candidates

CURSOR = "‸"


def document_and_cursor(language_id: str, marked: str) -> tuple[Document, tuple[int, int]]:
    index = marked.index(CURSOR)
    text = marked.replace(CURSOR, "")
    document = Document(f"file:///case.{language_id}", text, language_id)
    return document, document.position_at(len(text[:index].encode()))


# (language, document, valid candidate, invalid candidate): the invalid one always gets the higher score.
CASES = [
    ("python", "def area(w, h):\n    return ‸\n", "w * h", "w * (h"),
    ("javascript", "function area(w, h) {\n  return ‸;\n}\n", "w * h", "w * h)"),
    ("typescript", "function area(w: number): number {\n  return ‸;\n}\n", "w * 2", "w *"),
    ("typescriptreact", "const view = <div>‸</div>;\n", "<span>{name}</span>", "<span>{name</span>"),
    ("go", "package a\n\nfunc area(w, h int) int {\n\treturn ‸\n}\n", "w * h", "w * h}"),
    ("rust", "fn area(w: u32, h: u32) -> u32 {\n    ‸\n}\n", "w * h", "w * h }"),
    ("java", "class A {\n  int area(int w, int h) {\n    return ‸;\n  }\n}\n", "w * h", "w * h)"),
    ("c", "int area(int w, int h) {\n  return ‸;\n}\n", "w * h", "w * (h"),
    ("cpp", "int area(int w, int h) {\n  return ‸;\n}\n", "std::max(w, h)", "std::max(w, h"),
]


@pytest.mark.parametrize(("language_id", "marked", "valid", "invalid"), CASES, ids=[case[0] for case in CASES])
def test_the_valid_candidate_wins_over_a_higher_scored_invalid_one(language_id, marked, valid, invalid):
    document, position = document_and_cursor(language_id, marked)
    ranked = rank_candidates(document, position, [(invalid, 0.9), (valid, 0.4)])
    assert [candidate.text for candidate in ranked] == [valid, invalid]
    assert ranked[0].syntax_errors_added == 0
    assert ranked[1].syntax_errors_added > 0


def test_equally_valid_candidates_are_ordered_by_score():
    document, position = document_and_cursor("python", "def area(w, h):\n    return ‸\n")
    ranked = rank_candidates(document, position, [("w * h", 0.2), ("h * w", 0.7), ("w + h", 0.5)])
    assert [candidate.text for candidate in ranked] == ["h * w", "w + h", "w * h"]


def test_duplicates_are_merged_keeping_the_best_score():
    document, position = document_and_cursor("python", "x = ‸\n")
    ranked = rank_candidates(document, position, [("1", 0.1), ("2", 0.5), ("1", 0.8)])
    assert [(candidate.text, candidate.score) for candidate in ranked] == [("1", 0.8), ("2", 0.5)]


def test_a_candidate_that_completes_half_typed_code_removes_errors():
    document, position = document_and_cursor("javascript", "function area(w, h) {\n  return w * (h‸\n")
    ranked = rank_candidates(document, position, [(" + 1", 0.9), (");\n}", 0.1)])
    assert ranked[0].text == ");\n}"
    assert ranked[0].syntax_errors_added < 0 <= ranked[1].syntax_errors_added


def test_plain_text_ranks_by_score_alone():
    document, position = document_and_cursor("plaintext", "notes: ‸\n")
    ranked = rank_candidates(document, position, [("(unbalanced", 0.3), ("fine", 0.2), ("best", 0.9)])
    assert [candidate.text for candidate in ranked] == ["best", "(unbalanced", "fine"]
    assert {candidate.syntax_errors_added for candidate in ranked} == {0}


def test_ranking_leaves_the_document_and_its_tree_untouched():
    document, position = document_and_cursor("python", "def area(w, h):\n    return ‸\n")
    tree_before = str(document.root_at(0))
    rank_candidates(document, position, [("w * (h", 0.5), ("w", 0.1)])
    assert document.text == "def area(w, h):\n    return \n"
    assert str(document.root_at(0)) == tree_before


def test_count_syntax_errors_counts_error_and_missing_nodes():
    parser = tree_sitter.Parser(language_for("javascript").ts_language)
    assert count_syntax_errors(parser.parse(b"const a = 1;\n").root_node) == 0
    broken = parser.parse(b"const a = (1;\nfoo(;\n").root_node
    assert broken.has_error and count_syntax_errors(broken) >= 2


@pytest.mark.parametrize("bad", [["just text"], [("text",)], [(1, 0.5)], [("text", "high")]])
def test_malformed_candidates_are_rejected_clearly(bad):
    document, position = document_and_cursor("python", "x = ‸\n")
    with pytest.raises(TypeError, match="candidate must be a"):
        rank_candidates(document, position, bad)
