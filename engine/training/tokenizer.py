"""Byte-level BPE tokenizer for code, with fixed special-token ids.

    python -m engine.training.tokenizer train --corpus runs/corpus --vocab-size 8192 \
        --out runs/tokenizer/tokenizer.json

Ids 0..6 are the special tokens below, then the 256 byte symbols, then the learned merges. There is no
normalizer and the ByteLevel pre-tokenizer does not add a prefix space, so decode(encode(text)) == text
for every string (tabs, CRLF, trailing whitespace, any Unicode). Always load with `load_tokenizer`: it
makes special-token strings that occur in source code ("<eos>" in a string literal) encode as plain
text instead of as control tokens, a setting that tokenizer.json cannot store.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.prompt import (  # noqa: F401 - the ids are part of this module's interface for training code
    BOS_ID,
    EOS_ID,
    FILE_SEP_ID,
    FIM_MIDDLE_ID,
    FIM_PREFIX_ID,
    FIM_SUFFIX_ID,
    PAD_ID,
    SPECIAL_TOKENS,
)

DEFAULT_VOCAB_SIZE = 8192
_MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # specials plus every byte


def _empty_byte_level_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2) -> Tokenizer:
    """Trains byte-level BPE on `texts`; the result is ready to use (special tokens encode as text)."""
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {_MIN_VOCAB_SIZE} (special tokens + 256 bytes), got {vocab_size}")
    tokenizer = _empty_byte_level_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    check_special_tokens(tokenizer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def check_special_tokens(tokenizer: Tokenizer) -> None:
    """Raises ValueError unless the special tokens have ids 0..6 in the documented order."""
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        actual_id = tokenizer.token_to_id(token)
        if actual_id != expected_id:
            raise ValueError(f"special token {token!r} has id {actual_id}, expected {expected_id}")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Loads tokenizer.json, checks the special-token ids and disables special-token matching in text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    tokenizer = Tokenizer.from_file(str(path))
    check_special_tokens(tokenizer)
    tokenizer.encode_special_tokens = True
    return tokenizer


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` alone, no special tokens added."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def decode(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """Text of `ids`; special tokens are dropped."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def bytes_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    total_bytes = total_tokens = 0
    for text in texts:
        total_bytes += len(text.encode("utf-8"))
        total_tokens += len(encode(tokenizer, text))
    if total_tokens == 0:
        raise ValueError("no text to measure")
    return total_bytes / total_tokens


def _corpus_texts(corpus_dir: Path, split: str, max_bytes: int | None) -> Iterator[str]:
    path = corpus_dir / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build the corpus first (python -m engine.training.corpus build)")
    used = 0
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            text = json.loads(line)["text"]
            used += len(text.encode("utf-8"))
            if max_bytes is not None and used > max_bytes:
                return
            yield text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.training.tokenizer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train byte-level BPE on the train split of a corpus")
    train.add_argument("--corpus", type=Path, required=True)
    train.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--max-train-bytes", type=int, default=None,
                       help="train on at most this many bytes of the train split (default: all of it)")
    train.add_argument("--out", type=Path, required=True)
    evaluate = commands.add_parser("evaluate", help="bytes per token on the held-out split, per language")
    evaluate.add_argument("--corpus", type=Path, required=True)
    evaluate.add_argument("--tokenizer", type=Path, required=True)
    arguments = parser.parse_args(argv)

    if arguments.command == "train":
        started = time.perf_counter()
        tokenizer = train_tokenizer(_corpus_texts(arguments.corpus, "train", arguments.max_train_bytes),
                                    arguments.vocab_size, arguments.min_frequency)
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(arguments.out))
        print(f"trained {tokenizer.get_vocab_size()} tokens in {time.perf_counter() - started:.0f} s -> {arguments.out}")
    else:
        tokenizer = load_tokenizer(arguments.tokenizer)
    from engine.training.corpus import load_documents  # the corpus builder's imports stay out of the engine's path

    by_language: dict[str, list[str]] = {}
    for document in load_documents(arguments.corpus, "heldout"):
        by_language.setdefault(document.language, []).append(document.text)
    for language, texts in sorted(by_language.items()):
        print(f"held-out {language:<11} {len(texts):>5} files  {bytes_per_token(tokenizer, texts):.2f} bytes/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
