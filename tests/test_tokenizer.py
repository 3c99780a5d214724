import json
import sysconfig
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from engine.training.tokenizer import (
    BOS_ID,
    EOS_ID,
    FILE_SEP_ID,
    FIM_MIDDLE_ID,
    FIM_PREFIX_ID,
    FIM_SUFFIX_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    bytes_per_token,
    decode,
    encode,
    load_tokenizer,
    main,
    train_tokenizer,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAINING_FILES = ("textwrap.py", "json/decoder.py", "json/encoder.py", "bisect.py", "colorsys.py")

TRICKY_TEXTS = [
    "def f(x):\n\treturn x\t# tab-indented\n",
    "line one\r\nline two\r\n\r\nlast line without newline",
    "old mac\rline endings\r",
    "trailing spaces   \nand tabs\t\t\n   \n",
    "emoji 😀 👩‍💻 🇫🇷 family 👨‍👩‍👧‍👦",
    "中文字符 日本語のテキスト 한국어",
    "combining: e\u0301 a\u0300\u0323 n\u0303 — Zalgo: Z\u0351\u0352\u0353",
    "rtl: مرحبا بالعالم שלום",
    "nul\x00 form\x0cfeed vertical\x0btab escape\x1b[0m del\x7f",
    "\ufeffbom at start",
    "x = '<eos>' + \"<fim_middle>\" + '<pad><bos><fim_prefix><fim_suffix><file_sep>'\n",
    " leading space",
    "        " * 40 + "deep()\n",
    "",
    "\n\n\n",
    "s = 'caf\u00e9 na\u00efve \u00df \u2603 \U0001f600 \U00010348'",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = [(STDLIB / name).read_text(encoding="utf-8") for name in TRAINING_FILES]
    return train_tokenizer(texts, vocab_size=600)


def test_special_tokens_have_fixed_ids_in_order(tokenizer):
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == list(range(7))
    assert (PAD_ID, EOS_ID, BOS_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID, FIM_MIDDLE_ID, FILE_SEP_ID) == tuple(range(7))
    assert SPECIAL_TOKENS == ("<pad>", "<eos>", "<bos>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>")


def test_vocabulary_has_every_byte_and_learned_merges(tokenizer):
    vocabulary = tokenizer.get_vocab()
    assert 7 + 256 < len(vocabulary) <= 600
    assert all(token_id >= 7 for token, token_id in vocabulary.items() if token not in SPECIAL_TOKENS)
    # A merge learned from the training code: four spaces of indentation is one token.
    assert len(encode(tokenizer, "    ")) == 1


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_round_trip_is_byte_exact(tokenizer, text):
    ids = encode(tokenizer, text)
    assert decode(tokenizer, ids).encode("utf-8") == text.encode("utf-8")


def test_round_trip_of_unseen_source_files(tokenizer):
    for name in ("heapq.py", "shlex.py", "string.py"):
        text = (STDLIB / name).read_text(encoding="utf-8")
        assert decode(tokenizer, encode(tokenizer, text)) == text


def test_special_token_strings_in_code_stay_plain_text(tokenizer):
    text = "if token == '<eos>' or token == '<fim_middle>': pass"
    ids = encode(tokenizer, text)
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))
    assert decode(tokenizer, ids) == text


def test_pieces_do_not_add_a_prefix_space(tokenizer):
    # Concatenated pieces must decode to the concatenated text: FIM splits text at arbitrary points.
    first, second = "return va", "lue + 1\n"
    assert decode(tokenizer, encode(tokenizer, first) + encode(tokenizer, second)) == first + second


def test_save_and_load_keeps_ids_and_plain_text_specials(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    loaded = load_tokenizer(path)
    text = "x = '<bos>'\r\n\ty = 'é😀'\n"
    assert encode(loaded, text) == encode(tokenizer, text)
    assert loaded.encode_special_tokens
    # The flag is not stored in tokenizer.json, which is why load_tokenizer exists.
    assert not Tokenizer.from_file(str(path)).encode_special_tokens


def test_load_rejects_wrong_special_token_order(tokenizer, tmp_path):
    data = json.loads(tokenizer.to_str())
    data["added_tokens"][0]["content"], data["added_tokens"][1]["content"] = "<eos>", "<pad>"
    vocabulary = data["model"]["vocab"]
    vocabulary["<eos>"], vocabulary["<pad>"] = 0, 1
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="<pad>"):
        load_tokenizer(path)


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")


def test_vocab_size_below_bytes_plus_specials_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["x = 1"], vocab_size=200)


def test_bytes_per_token_on_code(tokenizer):
    text = (STDLIB / "heapq.py").read_text(encoding="utf-8")
    assert 1.5 < bytes_per_token(tokenizer, [text]) < 8
    with pytest.raises(ValueError):
        bytes_per_token(tokenizer, [""])


def test_train_command_writes_a_loadable_tokenizer(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, names in (("train", TRAINING_FILES), ("heldout", ("heapq.py",))):
        with (corpus / f"{split}.jsonl").open("w", encoding="utf-8") as lines:
            for name in names:
                record = {"path": name, "package": "cpython-stdlib", "language": "python",
                          "text": (STDLIB / name).read_text(encoding="utf-8")}
                lines.write(json.dumps(record) + "\n")
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["train", "--corpus", str(corpus), "--vocab-size", "500", "--out", str(out)]) == 0
    assert load_tokenizer(out).get_vocab_size() <= 500
    printed = capsys.readouterr().out
    assert "held-out python" in printed and "bytes/token" in printed
