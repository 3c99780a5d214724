"""Fill-in-the-middle training examples: hole selection and fixed-shape batches.

Prompt:  engine.prompt.format_fim_prompt (the layout inference uses)
Canvas:  middle <eos> <pad> ... <pad>            (exactly canvas_length tokens)
"""

from __future__ import annotations

import functools
import importlib
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import tree_sitter
from tokenizers import Tokenizer

from engine.prompt import (
    EOS_ID,
    PAD_ID,
    PROMPT_OVERHEAD_TOKENS,
    encode_ids,
    format_fim_prompt,
)

HOLE_KINDS = ("line", "line_end", "block", "expression", "span")
# Mostly in-line edits; blocks are the only kind that regularly spans several lines.
DEFAULT_HOLE_WEIGHTS: Mapping[str, float] = {
    "line": 0.30, "line_end": 0.20, "block": 0.15, "expression": 0.20, "span": 0.15,
}
# What editors ask for most: the rest of the line at the cursor, a whole next line, a short expression.
EDITOR_HOLE_WEIGHTS: Mapping[str, float] = {
    "line": 0.35, "line_end": 0.35, "block": 0.05, "expression": 0.20, "span": 0.05,
}
HOLE_MIXES: Mapping[str, Mapping[str, float]] = {"default": DEFAULT_HOLE_WEIGHTS, "editor": EDITOR_HOLE_WEIGHTS}


# ------------------------------------------------------------------------------------ examples


def make_example(tokenizer: Tokenizer, prefix: str, middle: str, suffix: str, canvas_length: int,
                 max_prompt_tokens: int) -> tuple[list[int], list[int]] | None:
    """(prompt_ids, canvas_ids) for one hole, or None when the middle does not fit the canvas.

    canvas_ids = tokens(middle) + <eos> + <pad>*, exactly canvas_length long. A middle of
    canvas_length tokens or more is skipped rather than truncated: a cut middle would either lack its
    <eos> (teaching the model that a hole can stop anywhere) or end in <eos> before the suffix actually
    continues (teaching it to stop early); the caller draws another hole instead.
    """
    if canvas_length < 2:
        raise ValueError(f"canvas_length must be at least 2 (one middle token and <eos>), got {canvas_length}")
    if not middle:
        raise ValueError("middle must not be empty")
    middle_ids = encode_ids(tokenizer, middle)
    if len(middle_ids) >= canvas_length:
        return None
    canvas_ids = [*middle_ids, EOS_ID] + [PAD_ID] * (canvas_length - len(middle_ids) - 1)
    return format_fim_prompt(tokenizer, prefix, suffix, max_prompt_tokens), canvas_ids


# ------------------------------------------------------------------------------------ hole selection


@dataclass(frozen=True)
class Hole:
    kind: str  # one of HOLE_KINDS
    prefix: str
    middle: str
    suffix: str


class _Line(NamedTuple):
    start: int  # character offsets into the text
    content_start: int  # after the indentation
    content_end: int  # before "\n" / "\r\n"
    end: int  # after the line terminator


_LINE_PATTERN = re.compile(r"([ \t]*)([^\n]*?)(\r?\n|\Z)")


def _split_lines(text: str) -> list[_Line]:
    lines = []
    for match in _LINE_PATTERN.finditer(text):
        if match.start() == len(text):
            break
        lines.append(_Line(match.start(), match.end(1), match.end(2), match.end()))
    return lines


class _Grammar(NamedTuple):
    parser: tree_sitter.Parser
    block_query: tree_sitter.Query
    expression_query: tree_sitter.Query


_GRAMMAR_MODULES = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}
_BLOCK_KINDS = frozenset({"block", "statement_block", "compound_statement"})
# Named node kinds that are expressions in some grammar, besides every kind named "*_expression".
_EXPRESSION_KINDS = frozenset({
    "argument_list", "arguments", "attribute", "await", "binary_operator", "boolean_operator", "call",
    "comparison_operator", "dictionary", "dictionary_comprehension", "lambda", "list", "list_comprehension",
    "not_operator", "set", "set_comprehension", "string", "subscript", "tuple", "unary_operator",
    "keyword_argument", "array", "object", "template_string", "string_literal", "interpreted_string_literal",
    "raw_string_literal", "macro_invocation", "arrow_function", "closure_expression", "func_literal",
})
_QUERY_WINDOW_BYTES = 4096  # nodes are sampled around a random point: uniform enough, and fast


@functools.cache
def _grammar(language: str) -> _Grammar | None:
    """Parser and queries for `language`, or None when no tree-sitter grammar is installed for it."""
    if language not in _GRAMMAR_MODULES:
        return None
    module_name, function_name = _GRAMMAR_MODULES[language]
    try:
        grammar_module = importlib.import_module(module_name)
    except ImportError:
        return None
    ts_language = tree_sitter.Language(getattr(grammar_module, function_name)())
    supertypes = {ts_language.node_kind_for_id(i) for i in ts_language.supertypes}
    named_kinds = {
        ts_language.node_kind_for_id(i) for i in range(ts_language.node_kind_count)
        if ts_language.node_kind_is_named(i) and ts_language.node_kind_is_visible(i)
    } - supertypes
    block_kinds = sorted(named_kinds & _BLOCK_KINDS)
    expression_kinds = sorted(k for k in named_kinds if k in _EXPRESSION_KINDS or k.endswith("_expression"))

    def query(kinds: list[str]) -> tree_sitter.Query:
        return tree_sitter.Query(ts_language, "[" + " ".join(f"({kind})" for kind in kinds) + "] @node")

    return _Grammar(tree_sitter.Parser(ts_language), query(block_kinds), query(expression_kinds))


class _Source:
    """A text with its lines and (lazily) its syntax tree, so one hole choice parses at most once."""

    def __init__(self, text: str, language: str):
        self.text = text
        self.lines = _split_lines(text)
        self.grammar = _grammar(language)
        self._encoded: bytes | None = None
        self._tree = None

    def tree(self) -> tree_sitter.Tree:
        if self._tree is None:
            self._encoded = self.text.encode("utf-8")
            self._tree = self.grammar.parser.parse(self._encoded)
        return self._tree

    def char_offset(self, byte_offset: int) -> int:
        if len(self._encoded) == len(self.text):  # ASCII: bytes and characters coincide
            return byte_offset
        return len(self._encoded[:byte_offset].decode("utf-8", errors="ignore"))

    def nodes_near(self, query: tree_sitter.Query, rng: random.Random) -> list[tree_sitter.Node]:
        """Nodes matching `query` that overlap a random window of the text."""
        tree = self.tree()
        centre = rng.randrange(len(self._encoded))
        cursor = tree_sitter.QueryCursor(query)
        cursor.set_byte_range(max(0, centre - _QUERY_WINDOW_BYTES // 2), centre + _QUERY_WINDOW_BYTES // 2)
        nodes = cursor.captures(tree.root_node).get("node", [])
        return sorted(nodes, key=lambda node: (node.start_byte, node.end_byte))  # capture order varies by run

    def hole(self, kind: str, start: int, end: int) -> Hole:
        return Hole(kind, self.text[:start], self.text[start:end], self.text[end:])


def _random_code_line(source: _Source, rng: random.Random) -> int | None:
    for _ in range(16):
        index = rng.randrange(len(source.lines))
        if source.lines[index].content_end > source.lines[index].content_start:
            return index
    return None


def _line_hole(source: _Source, rng: random.Random, max_middle_chars: int) -> Hole | None:
    """One or more whole lines; sometimes the cursor sits after the indentation, or before the newline."""
    first = _random_code_line(source, rng)
    if first is None:
        return None
    count = 1
    while count < 8 and first + count < len(source.lines) and rng.random() < 0.45:
        count += 1
    lines = source.lines
    start = lines[first].content_start if rng.random() < 0.3 else lines[first].start
    while count > 0:
        last = lines[first + count - 1]
        end = last.end if rng.random() < 0.8 else last.content_end
        if 0 < end - start <= max_middle_chars:
            return source.hole("line", start, end)
        count -= 1
    return None


def _line_end_hole(source: _Source, rng: random.Random, max_middle_chars: int) -> Hole | None:
    """The rest of a line from a point inside its code, as in completion while typing."""
    index = _random_code_line(source, rng)
    if index is None:
        return None
    line = source.lines[index]
    start = max(rng.randrange(line.content_start, line.content_end), line.content_end - max_middle_chars)
    return source.hole("line_end", start, line.content_end)


def _block_hole(source: _Source, rng: random.Random, max_middle_chars: int) -> Hole | None:
    """A statement body as whole lines: the lines between braces, or an indented body on its own
    lines; a body sharing its line with the header (`if x: return y`) is taken as the node itself."""
    if source.grammar is None:
        return _indented_block_hole(source, rng, max_middle_chars)
    lines, spans = source.lines, []
    for node in source.nodes_near(source.grammar.block_query, rng):
        if not 0 < node.end_byte - node.start_byte <= max_middle_chars:  # bytes >= characters
            continue
        # tree-sitter rows count "\n" exactly as _split_lines does.
        first_row = node.start_point.row
        last_row = min(node.end_point.row - (node.end_point.column == 0), len(lines) - 1)
        if source.text[source.char_offset(node.start_byte)] == "{" and last_row - first_row >= 2:
            start, end = lines[first_row + 1].start, lines[last_row - 1].end
        elif node.parent is not None and first_row > node.parent.start_point.row:
            start, end = lines[first_row].start, lines[last_row].end
        else:
            start, end = source.char_offset(node.start_byte), source.char_offset(node.end_byte)
        if 0 < end - start <= max_middle_chars:
            spans.append((start, end))
    if not spans:
        return None
    return source.hole("block", *rng.choice(spans))


def _indented_block_hole(source: _Source, rng: random.Random, max_middle_chars: int) -> Hole | None:
    """Grammar-less fallback: the more-indented lines under a line that ends with ':' or '{'."""
    lines, text = source.lines, source.text
    headers = [i for i, line in enumerate(lines[:-1]) if text[line.content_start:line.content_end].rstrip().endswith((":", "{"))]
    rng.shuffle(headers)
    for header in headers[:16]:
        header_indent = lines[header].content_start - lines[header].start
        last = header
        for index in range(header + 1, len(lines)):
            line = lines[index]
            if line.content_end == line.content_start:  # blank lines do not end a block
                continue
            if line.content_start - line.start <= header_indent:
                break
            last = index
        if last > header:
            start, end = lines[header + 1].start, lines[last].end
            if end - start <= max_middle_chars:
                return source.hole("block", start, end)
    return None


def _expression_hole(source: _Source, rng: random.Random, max_middle_chars: int) -> Hole | None:
    """A syntax-tree expression node (call, operator, literal, ...); small nodes dominate by number."""
    if source.grammar is None:
        return None
    nodes = [n for n in source.nodes_near(source.grammar.expression_query, rng)
             if 0 < n.end_byte - n.start_byte <= max_middle_chars]
    if not nodes:
        return None
    node = rng.choice(nodes)
    return source.hole("expression", source.char_offset(node.start_byte), source.char_offset(node.end_byte))


def _span_hole(source: _Source, rng: random.Random, max_middle_chars: int) -> Hole:
    """A random character span; log-uniform length, so short spans are the common case."""
    length = min(len(source.text), int(math.exp(rng.uniform(0.0, math.log(max_middle_chars + 1)))))
    length = max(length, 1)
    start = rng.randint(0, len(source.text) - length)
    return source.hole("span", start, start + length)


_HOLE_CHOOSERS = {
    "line": _line_hole, "line_end": _line_end_hole, "block": _block_hole,
    "expression": _expression_hole, "span": _span_hole,
}


def choose_hole(text: str, rng: random.Random, language: str = "python", max_middle_chars: int = 256,
                kind_weights: Mapping[str, float] = DEFAULT_HOLE_WEIGHTS) -> Hole:
    """Chooses a non-empty middle the way editing produces holes; prefix + middle + suffix == text.

    A kind is drawn by `kind_weights`; when the text offers no hole of that kind (no block short
    enough, no grammar for expressions), another kind is drawn, and after a few failures a span is used.
    """
    if not text:
        raise ValueError("cannot choose a hole in an empty text")
    if max_middle_chars < 1:
        raise ValueError(f"max_middle_chars must be positive, got {max_middle_chars}")
    unknown = set(kind_weights) - set(HOLE_KINDS)
    if unknown or not any(weight > 0 for weight in kind_weights.values()):
        raise ValueError(f"kind_weights needs positive weights for kinds among {HOLE_KINDS}, got {dict(kind_weights)}")
    source = _Source(text, language)
    kinds, weights = list(kind_weights), list(kind_weights.values())
    for _ in range(4):
        kind = rng.choices(kinds, weights)[0]
        hole = _HOLE_CHOOSERS[kind](source, rng, max_middle_chars)
        if hole is not None:
            return hole
    return _span_hole(source, rng, max_middle_chars)


# -------------------------------------------------------------------------------------------- batches


class Document(Protocol):
    """What the batch stream needs of a document (engine.training.corpus.CorpusDocument has it)."""

    text: str
    language: str


class FimBatch(NamedTuple):
    """One training batch; B = batch size, P = max_prompt_tokens, C = canvas_length.

    The model input is cat(prompt_ids, canvas) along dim 1 (length P + C); the prompt is LEFT-padded, so
    the canvas always occupies positions P .. P+C-1 and `<fim_middle>` is always at position P-1.
    Attention contract: key padding mask = cat(prompt_mask, ones(B, C)); every query must ignore keys
    where it is False (the left padding). All canvas positions are real: pads after <eos> are targets
    the model must learn to produce. position_ids count real tokens only (0 at the first prompt token),
    as an unpadded prompt at inference would; the value at padded positions is 0 and irrelevant.
    """

    prompt_ids: torch.Tensor  # int64 [B, P], PAD_ID on the left
    prompt_mask: torch.Tensor  # bool [B, P], True on real prompt tokens
    canvas_ids: torch.Tensor  # int64 [B, C], target canvas: middle <eos> <pad>...
    middle_lengths: torch.Tensor  # int64 [B], number of middle tokens (= index of <eos> in the canvas)
    position_ids: torch.Tensor  # int64 [B, P + C]


def collate_examples(examples: Sequence[tuple[list[int], list[int]]], max_prompt_tokens: int) -> FimBatch:
    """Left-pads prompts to max_prompt_tokens and stacks canvases (all must share one length)."""
    if not examples:
        raise ValueError("no examples to collate")
    canvas_length = len(examples[0][1])
    prompt_ids = torch.full((len(examples), max_prompt_tokens), PAD_ID, dtype=torch.long)
    prompt_mask = torch.zeros((len(examples), max_prompt_tokens), dtype=torch.bool)
    canvas_ids = torch.empty((len(examples), canvas_length), dtype=torch.long)
    middle_lengths = torch.empty(len(examples), dtype=torch.long)
    for row, (prompt, canvas) in enumerate(examples):
        if len(prompt) > max_prompt_tokens:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds max_prompt_tokens={max_prompt_tokens}")
        if len(canvas) != canvas_length:
            raise ValueError(f"canvas lengths differ: {len(canvas)} != {canvas_length}")
        prompt_ids[row, max_prompt_tokens - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[row, max_prompt_tokens - len(prompt):] = True
        canvas_ids[row] = torch.tensor(canvas, dtype=torch.long)
        middle_lengths[row] = canvas.index(EOS_ID)
    real = torch.cat([prompt_mask, torch.ones((len(examples), canvas_length), dtype=torch.bool)], dim=1)
    position_ids = (real.long().cumsum(dim=1) - 1).clamp(min=0)
    return FimBatch(prompt_ids, prompt_mask, canvas_ids, middle_lengths, position_ids)


class FimBatchStream(torch.utils.data.IterableDataset):
    """Endless FIM batches drawn from corpus documents; deterministic for a seed.

    Documents are drawn with probability proportional to their length, capped at 32k characters (so
    every position of mid-sized files is about equally likely and huge files do not dominate). With
    probability `end_of_file_rate` the suffix is dropped, as when code is written at the end of a file.
    Holes whose middle does not fit the canvas are skipped. Works in a DataLoader with
    batch_size=None; each worker derives its own seed.
    """

    def __init__(self, documents: Sequence[Document], tokenizer: Tokenizer, batch_size: int,
                 max_prompt_tokens: int, canvas_length: int, seed: int = 0,
                 kind_weights: Mapping[str, float] = DEFAULT_HOLE_WEIGHTS, end_of_file_rate: float = 0.05):
        super().__init__()
        self.documents = [d for d in documents if d.text]
        if not self.documents:
            raise ValueError("no non-empty documents")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_prompt_tokens < PROMPT_OVERHEAD_TOKENS or canvas_length < 2:
            raise ValueError(f"need max_prompt_tokens >= {PROMPT_OVERHEAD_TOKENS} and canvas_length >= 2, "
                             f"got {max_prompt_tokens} and {canvas_length}")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.canvas_length = canvas_length
        self.seed = seed
        self.kind_weights = dict(kind_weights)
        self.end_of_file_rate = end_of_file_rate
        # Code averages 3-4 characters per token, so 4 per canvas token lets nearly all chosen holes fit.
        self.max_middle_chars = 4 * (canvas_length - 1)
        cumulative, total = [], 0
        for document in self.documents:
            total += min(len(document.text), 32768)
            cumulative.append(total)
        self._cumulative_weights = cumulative

    def __setstate__(self, state: dict) -> None:
        # Spawned DataLoader workers receive a pickled copy, and pickling a Tokenizer drops
        # encode_special_tokens (it is not part of tokenizer.json): restore what __init__ was given.
        special_tokens_as_text = state.pop("_special_tokens_as_text")
        self.__dict__.update(state)
        self.tokenizer.encode_special_tokens = special_tokens_as_text

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_special_tokens_as_text": self.tokenizer.encode_special_tokens}

    def examples(self, rng: random.Random) -> Iterator[tuple[list[int], list[int]]]:
        while True:
            document = rng.choices(self.documents, cum_weights=self._cumulative_weights)[0]
            hole = choose_hole(document.text, rng, document.language, self.max_middle_chars, self.kind_weights)
            suffix = "" if rng.random() < self.end_of_file_rate else hole.suffix
            example = make_example(self.tokenizer, hole.prefix, hole.middle, suffix, self.canvas_length,
                                   self.max_prompt_tokens)
            if example is not None:
                yield example

    def batches(self, rng: random.Random) -> Iterator[FimBatch]:
        """Batches drawn with `rng`. Between two batches everything the stream will draw next is in `rng`'s state,
        so `batches(rng)` with a saved `rng.getstate()` continues the stream exactly (the trainer's resume)."""
        examples = self.examples(rng)
        while True:
            yield collate_examples([next(examples) for _ in range(self.batch_size)], self.max_prompt_tokens)

    def seeded_rng(self, worker_id: int = 0) -> random.Random:
        return random.Random(f"{self.seed}:{worker_id}")

    def __iter__(self) -> Iterator[FimBatch]:
        worker = torch.utils.data.get_worker_info()
        return self.batches(self.seeded_rng(0 if worker is None else worker.id))
