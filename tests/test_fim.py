import pickle
import random
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import pytest
import torch
import tree_sitter
import tree_sitter_python
from tokenizers import Tokenizer

from engine.training.corpus import CorpusDocument
from engine.training.fim import (
    DEFAULT_HOLE_WEIGHTS,
    HOLE_KINDS,
    FimBatchStream,
    choose_hole,
    collate_examples,
    make_example,
)
from engine.prompt import MIN_SUFFIX_SHARE, format_fim_prompt
from engine.training.tokenizer import (
    BOS_ID,
    EOS_ID,
    FIM_MIDDLE_ID,
    FIM_PREFIX_ID,
    FIM_SUFFIX_ID,
    PAD_ID,
    decode,
    encode,
    train_tokenizer,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])

SAMPLE = '''"""A small module with the usual shapes of Python code."""
import math


def mean(values: list[float]) -> float:
    """Arithmetic mean; raises on an empty list."""
    if not values:
        raise ValueError("mean of an empty list")
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()


def hypotenuse(a, b):
    return math.sqrt(a * a + b * b) if a >= 0 and b >= 0 else None
'''


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = [(STDLIB / name).read_text(encoding="utf-8") for name in ("textwrap.py", "bisect.py", "heapq.py")]
    return train_tokenizer(texts + [SAMPLE], vocab_size=800)


def split_prompt(prompt: list[int]) -> tuple[list[int], list[int]]:
    assert prompt[:2] == [BOS_ID, FIM_PREFIX_ID] and prompt[-1] == FIM_MIDDLE_ID
    assert prompt.count(FIM_SUFFIX_ID) == 1
    separator = prompt.index(FIM_SUFFIX_ID)
    return prompt[2:separator], prompt[separator + 1:-1]


# ---------------------------------------------------------------------------------------- prompt


def test_prompt_layout_is_psm_with_sentinels(tokenizer):
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    prompt = format_fim_prompt(tokenizer, prefix, suffix)
    assert prompt == [BOS_ID, FIM_PREFIX_ID, *encode(tokenizer, prefix), FIM_SUFFIX_ID,
                      *encode(tokenizer, suffix), FIM_MIDDLE_ID]
    prefix_ids, suffix_ids = split_prompt(prompt)
    assert decode(tokenizer, prefix_ids) == prefix and decode(tokenizer, suffix_ids) == suffix


def test_prompt_with_empty_prefix_and_suffix(tokenizer):
    assert format_fim_prompt(tokenizer, "", "") == [BOS_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID, FIM_MIDDLE_ID]
    assert format_fim_prompt(tokenizer, "", "", max_prompt_tokens=4) == [BOS_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID,
                                                                         FIM_MIDDLE_ID]


def test_special_token_text_in_code_cannot_forge_sentinels(tokenizer):
    prompt = format_fim_prompt(tokenizer, "s = '<fim_middle><eos>'\n", "t = '<fim_suffix>'\n")
    assert prompt.count(FIM_MIDDLE_ID) == 1 and prompt.count(FIM_SUFFIX_ID) == 1 and EOS_ID not in prompt


def test_prompt_untouched_when_it_fits_the_budget(tokenizer):
    prefix, suffix = SAMPLE[:300], SAMPLE[300:400]
    full = format_fim_prompt(tokenizer, prefix, suffix)
    assert format_fim_prompt(tokenizer, prefix, suffix, max_prompt_tokens=len(full)) == full


def test_trimming_keeps_text_nearest_the_hole(tokenizer):
    prefix = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    suffix = (STDLIB / "heapq.py").read_text(encoding="utf-8")
    budget = 200
    prompt = format_fim_prompt(tokenizer, prefix, suffix, max_prompt_tokens=budget)
    assert len(prompt) == budget
    prefix_ids, suffix_ids = split_prompt(prompt)
    assert prefix.endswith(decode(tokenizer, prefix_ids))
    assert suffix.startswith(decode(tokenizer, suffix_ids))
    assert len(suffix_ids) == int((budget - 4) * MIN_SUFFIX_SHARE)
    # Away from the cut, the kept tokens are those of the whole text.
    assert prefix_ids[-50:] == encode(tokenizer, prefix)[-50:]
    assert suffix_ids[:30] == encode(tokenizer, suffix)[:30]


def test_trimming_text_with_very_long_tokens(tokenizer):
    # Deep indentation packs many characters into few tokens, beyond the first tokenization window.
    prefix = ("\n" + " " * 64 + "x") * 300
    budget_tokens = 60
    prompt = format_fim_prompt(tokenizer, prefix, "", max_prompt_tokens=budget_tokens + 4)
    prefix_ids, suffix_ids = split_prompt(prompt)
    assert len(prefix_ids) == budget_tokens and suffix_ids == []
    assert prefix.endswith(decode(tokenizer, prefix_ids))
    assert prefix_ids[-20:] == encode(tokenizer, prefix)[-20:]


def test_prompt_module_stays_free_of_training_only_imports():
    code = ("import sys, engine.training.fim; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'transformers', 'pygls', 'lsprotocol', "
            "'lsp_server'} or m == 'engine.training.corpus'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "[]"


def test_trimming_gives_unused_prefix_budget_to_the_suffix(tokenizer):
    suffix = (STDLIB / "heapq.py").read_text(encoding="utf-8")
    prompt = format_fim_prompt(tokenizer, "x = ", suffix, max_prompt_tokens=100)
    prefix_ids, suffix_ids = split_prompt(prompt)
    assert decode(tokenizer, prefix_ids) == "x = "
    assert len(prompt) == 100 and len(suffix_ids) == 96 - len(prefix_ids)
    prompt = format_fim_prompt(tokenizer, suffix, "pass\n", max_prompt_tokens=100)
    prefix_ids, suffix_ids = split_prompt(prompt)
    assert decode(tokenizer, suffix_ids) == "pass\n" and len(prompt) == 100


def test_prompt_rejects_bad_budget_and_unsafe_tokenizer(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        format_fim_prompt(tokenizer, "a", "b", max_prompt_tokens=3)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    with pytest.raises(ValueError, match="load_tokenizer"):
        format_fim_prompt(Tokenizer.from_file(str(path)), "a", "b")


# --------------------------------------------------------------------------------------- examples


def test_make_example_canvas_is_middle_eos_then_padding(tokenizer):
    prefix, middle, suffix = "def f(x):\n    return ", "x * 2", "\n"
    prompt, canvas = make_example(tokenizer, prefix, middle, suffix, canvas_length=16, max_prompt_tokens=64)
    middle_ids = encode(tokenizer, middle)
    assert prompt == format_fim_prompt(tokenizer, prefix, suffix, 64)
    assert len(canvas) == 16
    assert canvas == [*middle_ids, EOS_ID] + [PAD_ID] * (15 - len(middle_ids))


def test_make_example_trims_prompt_to_budget(tokenizer):
    text = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    prompt, canvas = make_example(tokenizer, text[:5000], "pass", text[5000:], canvas_length=8, max_prompt_tokens=128)
    assert len(prompt) == 128 and len(canvas) == 8


def test_make_example_skips_middles_that_do_not_fit(tokenizer):
    middle = "total = sum(values) / len(values)\n"
    length = len(encode(tokenizer, middle))
    assert make_example(tokenizer, "", middle, "", canvas_length=length + 1, max_prompt_tokens=16) is not None
    assert make_example(tokenizer, "", middle, "", canvas_length=length, max_prompt_tokens=16) is None
    with pytest.raises(ValueError, match="canvas_length"):
        make_example(tokenizer, "", "x", "", canvas_length=1, max_prompt_tokens=16)
    with pytest.raises(ValueError, match="middle"):
        make_example(tokenizer, "a", "", "b", canvas_length=8, max_prompt_tokens=16)


# ------------------------------------------------------------------------------------------ holes


def sample_holes(text: str, count: int, language: str = "python", **kwargs):
    rng = random.Random(1234)
    return [choose_hole(text, rng, language, **kwargs) for _ in range(count)]


def test_every_hole_kind_occurs_and_reassembles_exactly():
    holes = sample_holes(SAMPLE, 400, max_middle_chars=120)
    assert set(Counter(h.kind for h in holes)) == set(HOLE_KINDS)
    for hole in holes:
        assert hole.prefix + hole.middle + hole.suffix == SAMPLE
        assert 0 < len(hole.middle) <= 120


def test_holes_are_mostly_short():
    text = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    lengths = sorted(len(h.middle) for h in sample_holes(text, 300, max_middle_chars=512))
    assert lengths[len(lengths) // 2] <= 64  # median well inside a line
    assert lengths[-1] > 100  # yet multi-line holes happen


def test_line_holes_are_whole_lines():
    for hole in sample_holes(SAMPLE, 60, kind_weights={"line": 1.0}):
        assert hole.kind == "line"
        assert hole.prefix == "" or hole.prefix.endswith("\n") or hole.prefix.endswith((" ", "\t"))
        assert hole.prefix.rstrip(" \t") == "" or hole.prefix.rstrip(" \t").endswith("\n")
        assert hole.middle.strip()
        assert hole.middle.endswith("\n") or hole.suffix.startswith("\n") or hole.suffix == ""


def test_line_end_holes_run_to_the_end_of_a_line():
    for hole in sample_holes(SAMPLE, 60, kind_weights={"line_end": 1.0}):
        assert hole.kind == "line_end" and "\n" not in hole.middle
        assert hole.suffix.startswith("\n") or hole.suffix == ""
        assert not hole.middle[0].isspace() or not hole.prefix.endswith("\n")


def test_python_block_holes_are_indented_bodies():
    holes = sample_holes(SAMPLE, 60, kind_weights={"block": 1.0}, max_middle_chars=200)
    assert all(h.kind == "block" for h in holes)
    for hole in holes:
        header = hole.prefix.rstrip("\n").splitlines()[-1]
        assert header.rstrip().endswith(":")
        indent = len(header) - len(header.lstrip())
        body_lines = [line for line in hole.middle.splitlines() if line.strip()]
        assert all(len(line) - len(line.lstrip()) > indent for line in body_lines)
        assert hole.middle.endswith("\n")
    assert "        self.items.append(item)\n" in {h.middle for h in holes}


def test_brace_block_holes_are_the_lines_inside_the_braces():
    source = "function f(x) {\n  const y = x + 1;\n  return y;\n}\n\nif (ok) {\n  go();\n}\n"
    for hole in sample_holes(source, 30, language="javascript", kind_weights={"block": 1.0}):
        assert hole.kind == "block"
        assert hole.middle in {"  const y = x + 1;\n  return y;\n", "  go();\n"}


def test_block_without_grammar_uses_indentation():
    holes = sample_holes(SAMPLE, 40, language="no-grammar-language", kind_weights={"block": 1.0},
                         max_middle_chars=200)
    assert all(h.kind == "block" for h in holes)
    assert "        self.items.append(item)\n" in {h.middle for h in holes}
    # Without a grammar there are no expression holes: another kind is used instead.
    fallbacks = sample_holes(SAMPLE, 10, language="no-grammar-language", kind_weights={"expression": 1.0})
    assert all(h.kind == "span" for h in fallbacks)


def python_expression_texts(text: str) -> set[str]:
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))
    data = text.encode("utf-8")
    texts, stack = set(), [parser.parse(data).root_node]
    while stack:
        node = stack.pop()
        texts.add(data[node.start_byte:node.end_byte].decode("utf-8"))
        stack.extend(node.children)
    return texts


def test_expression_holes_are_syntax_nodes_even_after_non_ascii_text():
    source = 'greeting = "héllo wörld 😀"  # ünïcode\nresult = compute(a, b) + len(greeting) * 2\n' + SAMPLE
    node_texts = python_expression_texts(source)
    for hole in sample_holes(source, 80, kind_weights={"expression": 1.0}, max_middle_chars=100):
        assert hole.kind == "expression"
        assert hole.prefix + hole.middle + hole.suffix == source
        assert hole.middle in node_texts


def test_crlf_text_keeps_its_line_endings():
    source = SAMPLE.replace("\n", "\r\n")
    holes = sample_holes(source, 200)
    for hole in holes:
        assert hole.prefix + hole.middle + hole.suffix == source
        if hole.kind == "line_end":
            assert "\r" not in hole.middle and hole.suffix.startswith("\r\n")
        if hole.kind in {"line", "block"} and hole.middle.endswith("\n"):
            assert hole.middle.endswith("\r\n")


def test_tiny_and_blank_texts_still_get_a_hole():
    for text in ("x", "\n\n", "   "):
        for hole in sample_holes(text, 10):
            assert hole.prefix + hole.middle + hole.suffix == text and hole.middle


def test_choose_hole_is_deterministic_and_validates_arguments():
    assert sample_holes(SAMPLE, 20) == sample_holes(SAMPLE, 20)
    rng = random.Random(0)
    with pytest.raises(ValueError, match="empty"):
        choose_hole("", rng)
    with pytest.raises(ValueError, match="kind_weights"):
        choose_hole(SAMPLE, rng, kind_weights={"paragraph": 1.0})
    with pytest.raises(ValueError, match="kind_weights"):
        choose_hole(SAMPLE, rng, kind_weights={"line": 0.0})
    with pytest.raises(ValueError, match="max_middle_chars"):
        choose_hole(SAMPLE, rng, max_middle_chars=0)
    assert set(DEFAULT_HOLE_WEIGHTS) == set(HOLE_KINDS)


# ---------------------------------------------------------------------------------------- batches


def test_collate_left_pads_prompts_and_masks_padding():
    batch = collate_examples([([2, 3, 10, 4, 11, 5], [20, 1, 0, 0]), ([2, 3, 4, 5], [1, 0, 0, 0])],
                             max_prompt_tokens=8)
    assert batch.prompt_ids.tolist() == [[0, 0, 2, 3, 10, 4, 11, 5], [0, 0, 0, 0, 2, 3, 4, 5]]
    assert batch.prompt_mask.tolist() == [[False] * 2 + [True] * 6, [False] * 4 + [True] * 4]
    assert batch.canvas_ids.tolist() == [[20, 1, 0, 0], [1, 0, 0, 0]]
    assert batch.middle_lengths.tolist() == [1, 0]
    assert batch.position_ids.tolist() == [[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                                           [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]]
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        collate_examples([([2, 3, 4, 5], [1, 0])], max_prompt_tokens=3)
    with pytest.raises(ValueError, match="canvas lengths"):
        collate_examples([([2, 3, 4, 5], [1, 0]), ([2, 3, 4, 5], [1])], max_prompt_tokens=4)


def test_batch_stream_yields_fixed_shape_consistent_batches(tokenizer):
    documents = [CorpusDocument(f"stdlib/{name}", "cpython-stdlib", "python",
                                (STDLIB / name).read_text(encoding="utf-8"))
                 for name in ("textwrap.py", "bisect.py", "heapq.py", "colorsys.py")]
    stream = FimBatchStream(documents, tokenizer, batch_size=6, max_prompt_tokens=96, canvas_length=24, seed=7)
    batches = [batch for batch, _ in zip(stream, range(3))]
    for batch in batches:
        assert batch.prompt_ids.shape == (6, 96) and batch.prompt_ids.dtype == torch.long
        assert batch.prompt_mask.shape == (6, 96) and batch.prompt_mask.dtype == torch.bool
        assert batch.canvas_ids.shape == (6, 24) and batch.position_ids.shape == (6, 120)
        assert torch.equal(batch.prompt_ids[:, -1], torch.full((6,), FIM_MIDDLE_ID))
        for row in range(6):
            real = batch.prompt_ids[row][batch.prompt_mask[row]].tolist()
            assert real[:2] == [BOS_ID, FIM_PREFIX_ID] and FIM_SUFFIX_ID in real
            assert (batch.prompt_ids[row][~batch.prompt_mask[row]] == PAD_ID).all()
            assert batch.prompt_mask[row].int().diff().ge(0).all()  # padding only on the left
            length = int(batch.middle_lengths[row])
            canvas = batch.canvas_ids[row].tolist()
            assert canvas[length] == EOS_ID and set(canvas[length + 1:]) <= {PAD_ID}
            assert not {EOS_ID, PAD_ID} & set(canvas[:length]) and length >= 1
            assert decode(tokenizer, canvas[:length])
            assert batch.position_ids[row, -1] == batch.prompt_mask[row].sum() + 24 - 1
    again = [batch for batch, _ in zip(FimBatchStream(documents, tokenizer, 6, 96, 24, seed=7), range(3))]
    assert all(torch.equal(a.canvas_ids, b.canvas_ids) and torch.equal(a.prompt_ids, b.prompt_ids)
               for a, b in zip(batches, again))
    # Spawned DataLoader workers get a pickled copy; it must produce the same batches.
    copy = pickle.loads(pickle.dumps(FimBatchStream(documents, tokenizer, 6, 96, 24, seed=7)))
    assert torch.equal(next(iter(copy)).prompt_ids, batches[0].prompt_ids)
    with pytest.raises(ValueError, match="no non-empty documents"):
        FimBatchStream([CorpusDocument("empty.py", "x", "python", "")], tokenizer, 6, 96, 24)
