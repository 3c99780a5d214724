"""Language registry: languageId / extension mapping, grammar loading, node-type tables."""

from __future__ import annotations

import pytest
import tree_sitter
from fixtures.support import LANGUAGE_IDS, sample

from lsp_server.languages import LANGUAGES, PLAIN_TEXT, language_for, path_from_uri


@pytest.mark.parametrize(
    ("language_id", "uri", "expected"),
    [
        ("python", None, "python"),
        ("PYTHON", None, "python"),
        ("javascriptreact", None, "javascript"),
        ("typescriptreact", None, "tsx"),
        ("typescript", None, "typescript"),
        ("c", None, "c"),
        ("cpp", None, "cpp"),
        (None, "file:///src/app/main.go", "go"),
        (None, "file:///src/lib.rs", "rust"),
        (None, "file:///src/Widget.tsx", "tsx"),
        (None, "file:///src/a%20b/Main.java", "java"),
        (None, "file:///src/util.hpp", "cpp"),
        (None, "file:///src/util.h", "c"),
        ("unknown-language", "file:///notes/todo.py", "python"),
        ("markdown", "file:///README.md", "plaintext"),
        (None, None, "plaintext"),
        ("", "untitled:Untitled-1", "plaintext"),
    ],
)
def test_language_for_maps_ids_then_extensions_and_falls_back_to_plain_text(language_id, uri, expected):
    assert language_for(language_id, uri).name == expected


def test_path_from_uri_decodes_file_uris_only():
    assert path_from_uri("file:///home/me/a%20b.py") == "/home/me/a b.py"
    assert path_from_uri("untitled:Untitled-1") == "untitled:Untitled-1"


@pytest.mark.parametrize("spec", [spec for spec in LANGUAGES if spec.has_grammar], ids=lambda spec: spec.name)
def test_every_node_type_in_the_tables_exists_in_the_grammar(spec):
    language = spec.ts_language
    for node_type in spec.definition_types | spec.body_types | spec.import_types:
        assert language.id_for_node_kind(node_type, True) is not None, f"{spec.name}: no node type {node_type!r}"


@pytest.mark.parametrize("extension", sorted(LANGUAGE_IDS))
def test_each_grammar_parses_its_sample_without_errors(extension):
    spec = language_for(LANGUAGE_IDS[extension])
    tree = tree_sitter.Parser(spec.ts_language).parse(sample(extension).encode())
    assert not tree.root_node.has_error
    assert tree.root_node.type in spec.body_types


def test_keywords_come_from_the_grammar():
    python = language_for("python")
    assert {"def", "class", "return", "lambda", "import"} <= python.keywords
    assert not {"module_repeat1", "end", "identifier"} & python.keywords
    assert {"func", "package", "defer"} <= language_for("go").keywords
    assert PLAIN_TEXT.keywords == frozenset()


def test_plain_text_has_no_grammar_and_says_so():
    assert not PLAIN_TEXT.has_grammar
    with pytest.raises(ValueError, match="no tree-sitter grammar"):
        PLAIN_TEXT.ts_language
