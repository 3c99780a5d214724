"""Language registry: LSP ``languageId`` / file extension -> tree-sitter grammar and node-type tables.

Grammars come from the separate ``tree-sitter-<lang>`` wheels, which work offline. Every language the
registry does not know resolves to :data:`PLAIN_TEXT`, which has no grammar: callers then fall back to
line-based behaviour instead of failing.

The node-type tables drive the syntax-aware features:

* ``definition_types``: nodes whose headers (signature lines) are kept in the context when the cursor is
  inside them (root-path context).
* ``body_types``: nodes whose children are statements or members (module, blocks, class bodies). A blank
  line inside one of these is a place for multi-line code; the closing of one ends a generated block.
* ``import_types``: top-level nodes that make up the file's imports (and package clause).
* ``block_opener``: pattern matching a line, up to the cursor, that ends with a block opener.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import tree_sitter
import tree_sitter_c
import tree_sitter_cpp
import tree_sitter_go
import tree_sitter_java
import tree_sitter_javascript
import tree_sitter_python
import tree_sitter_rust
import tree_sitter_typescript

# A line whose code ends with "{" (optionally followed by a line comment) opens a block in C-like languages.
_BRACE_OPENER = re.compile(r"\{\s*(?://.*)?$")


@dataclass(frozen=True)
class LanguageSpec:
    """Everything the context, mode and post-processing code needs to know about one language."""

    name: str
    language_ids: tuple[str, ...]
    extensions: tuple[str, ...]
    grammar: Callable[[], object] | None
    line_comment: str | None
    definition_types: frozenset[str] = frozenset()
    body_types: frozenset[str] = frozenset()
    import_types: frozenset[str] = frozenset()
    block_opener: re.Pattern[str] | None = None
    # True where blocks are delimited by indentation alone (Python), False where brackets close them.
    indentation_scoped: bool = False

    @property
    def has_grammar(self) -> bool:
        """Whether documents in this language get a syntax tree."""
        return self.grammar is not None

    @property
    def ts_language(self) -> tree_sitter.Language:
        """The tree-sitter language object (loaded once per spec)."""
        if self.grammar is None:
            raise ValueError(f"language {self.name!r} has no tree-sitter grammar")
        return _load_language(self)

    @property
    def keywords(self) -> frozenset[str]:
        """Keyword tokens of the grammar (anonymous, visible, identifier-like node kinds)."""
        if self.grammar is None:
            return frozenset()
        return _grammar_keywords(self)


@functools.cache
def _load_language(spec: LanguageSpec) -> tree_sitter.Language:
    assert spec.grammar is not None
    return tree_sitter.Language(spec.grammar())


@functools.cache
def _grammar_keywords(spec: LanguageSpec) -> frozenset[str]:
    language = spec.ts_language
    # Kind 0 is the end-of-input symbol, not a keyword.
    return frozenset(
        language.node_kind_for_id(kind)
        for kind in range(1, language.node_kind_count)
        if not language.node_kind_is_named(kind)
        and language.node_kind_is_visible(kind)
        and language.node_kind_for_id(kind).isidentifier()
    )


PYTHON = LanguageSpec(
    name="python",
    language_ids=("python",),
    extensions=(".py", ".pyi", ".pyw"),
    grammar=tree_sitter_python.language,
    line_comment="#",
    definition_types=frozenset({"function_definition", "class_definition"}),
    body_types=frozenset({"module", "block"}),
    import_types=frozenset({"import_statement", "import_from_statement", "future_import_statement"}),
    block_opener=re.compile(
        r"^\s*(?:async\s+)?(?:def|class|if|elif|else|for|while|with|try|except|finally|match|case)\b"
        r".*:\s*(?:#.*)?$"
    ),
    indentation_scoped=True,
)

_JS_DEFINITIONS = frozenset(
    {
        "function_declaration",
        "generator_function_declaration",
        "function_expression",
        "arrow_function",
        "method_definition",
        "class_declaration",
        "class",
    }
)
_JS_BODIES = frozenset({"program", "statement_block", "class_body", "switch_body"})

JAVASCRIPT = LanguageSpec(
    name="javascript",
    language_ids=("javascript", "javascriptreact", "js", "jsx"),
    extensions=(".js", ".mjs", ".cjs", ".jsx"),
    grammar=tree_sitter_javascript.language,
    line_comment="//",
    definition_types=_JS_DEFINITIONS,
    body_types=_JS_BODIES,
    import_types=frozenset({"import_statement"}),
    block_opener=_BRACE_OPENER,
)

_TS_DEFINITIONS = _JS_DEFINITIONS | {
    "abstract_class_declaration",
    "interface_declaration",
    "enum_declaration",
    "internal_module",
    "module",
}
_TS_BODIES = _JS_BODIES | {"interface_body", "enum_body"}

TYPESCRIPT = LanguageSpec(
    name="typescript",
    language_ids=("typescript", "ts"),
    extensions=(".ts", ".mts", ".cts"),
    grammar=tree_sitter_typescript.language_typescript,
    line_comment="//",
    definition_types=_TS_DEFINITIONS,
    body_types=_TS_BODIES,
    import_types=frozenset({"import_statement"}),
    block_opener=_BRACE_OPENER,
)

TSX = LanguageSpec(
    name="tsx",
    language_ids=("typescriptreact", "tsx"),
    extensions=(".tsx",),
    grammar=tree_sitter_typescript.language_tsx,
    line_comment="//",
    definition_types=_TS_DEFINITIONS,
    body_types=_TS_BODIES,
    import_types=frozenset({"import_statement"}),
    block_opener=_BRACE_OPENER,
)

GO = LanguageSpec(
    name="go",
    language_ids=("go",),
    extensions=(".go",),
    grammar=tree_sitter_go.language,
    line_comment="//",
    definition_types=frozenset({"function_declaration", "method_declaration", "func_literal", "type_declaration"}),
    body_types=frozenset(
        {
            "source_file",
            "block",
            "statement_list",
            "field_declaration_list",
            "interface_type",
            "expression_switch_statement",
            "type_switch_statement",
            "select_statement",
        }
    ),
    import_types=frozenset({"package_clause", "import_declaration"}),
    block_opener=_BRACE_OPENER,
)

RUST = LanguageSpec(
    name="rust",
    language_ids=("rust",),
    extensions=(".rs",),
    grammar=tree_sitter_rust.language,
    line_comment="//",
    definition_types=frozenset(
        {
            "function_item",
            "impl_item",
            "trait_item",
            "mod_item",
            "struct_item",
            "enum_item",
            "union_item",
            "closure_expression",
        }
    ),
    body_types=frozenset(
        {"source_file", "block", "declaration_list", "field_declaration_list", "enum_variant_list", "match_block"}
    ),
    import_types=frozenset({"use_declaration", "extern_crate_declaration"}),
    block_opener=_BRACE_OPENER,
)

JAVA = LanguageSpec(
    name="java",
    language_ids=("java",),
    extensions=(".java",),
    grammar=tree_sitter_java.language,
    line_comment="//",
    definition_types=frozenset(
        {
            "class_declaration",
            "interface_declaration",
            "enum_declaration",
            "record_declaration",
            "annotation_type_declaration",
            "method_declaration",
            "constructor_declaration",
            "lambda_expression",
        }
    ),
    body_types=frozenset(
        {
            "program",
            "block",
            "class_body",
            "interface_body",
            "enum_body",
            "constructor_body",
            "annotation_type_body",
            "switch_block",
        }
    ),
    import_types=frozenset({"package_declaration", "import_declaration"}),
    block_opener=_BRACE_OPENER,
)

_C_DEFINITIONS = frozenset({"function_definition", "struct_specifier", "union_specifier", "enum_specifier"})
_C_BODIES = frozenset({"translation_unit", "compound_statement", "field_declaration_list", "enumerator_list"})

C = LanguageSpec(
    name="c",
    language_ids=("c",),
    extensions=(".c", ".h"),
    grammar=tree_sitter_c.language,
    line_comment="//",
    definition_types=_C_DEFINITIONS,
    body_types=_C_BODIES,
    import_types=frozenset({"preproc_include"}),
    block_opener=_BRACE_OPENER,
)

CPP = LanguageSpec(
    name="cpp",
    language_ids=("cpp", "c++", "cuda-cpp"),
    extensions=(".cc", ".cpp", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++", ".ipp", ".cu"),
    grammar=tree_sitter_cpp.language,
    line_comment="//",
    definition_types=_C_DEFINITIONS | {"class_specifier", "namespace_definition", "lambda_expression"},
    body_types=_C_BODIES | {"declaration_list"},
    import_types=frozenset({"preproc_include", "using_declaration"}),
    block_opener=_BRACE_OPENER,
)

PLAIN_TEXT = LanguageSpec(
    name="plaintext",
    language_ids=("plaintext",),
    extensions=(".txt",),
    grammar=None,
    line_comment=None,
)

LANGUAGES: tuple[LanguageSpec, ...] = (PYTHON, JAVASCRIPT, TYPESCRIPT, TSX, GO, RUST, JAVA, C, CPP, PLAIN_TEXT)

_BY_LANGUAGE_ID = {language_id: spec for spec in LANGUAGES for language_id in spec.language_ids}
_BY_EXTENSION = {extension: spec for spec in LANGUAGES for extension in spec.extensions}


def path_from_uri(uri: str) -> str:
    """Filesystem path of a ``file://`` URI; any other string is returned unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return uri


def language_for(language_id: str | None = None, uri: str | None = None) -> LanguageSpec:
    """The language of a document, by LSP ``languageId`` first, then by the URI's file extension.

    Unknown languages resolve to :data:`PLAIN_TEXT`; this never raises.
    """
    if language_id:
        spec = _BY_LANGUAGE_ID.get(language_id.lower())
        if spec is not None:
            return spec
    if uri:
        extension = posixpath.splitext(path_from_uri(uri))[1].lower()
        spec = _BY_EXTENSION.get(extension)
        if spec is not None:
            return spec
    return PLAIN_TEXT
