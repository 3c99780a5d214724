"""The fill-in-the-middle prompt: the one layout the engine's infill and the trainer's examples share.

Prompt (PSM order):  <bos> <fim_prefix> prefix <fim_suffix> suffix <fim_middle>

`format_fim_prompt` is its single definition, including how a prompt is trimmed to a token budget. The special
tokens have fixed ids (0..6) in the project's tokenizers (engine.training.tokenizer trains them).
"""

from __future__ import annotations

from tokenizers import Tokenizer

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>")
PAD_ID, EOS_ID, BOS_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID, FIM_MIDDLE_ID, FILE_SEP_ID = range(len(SPECIAL_TOKENS))
PROMPT_OVERHEAD_TOKENS = 4  # <bos> <fim_prefix> <fim_suffix> <fim_middle>
# When a prompt must be trimmed, the suffix keeps at least this share of the budget (if it has that
# much); the prefix, usually the more informative side, gets the rest.
MIN_SUFFIX_SHARE = 0.25
# A huge file is not tokenized whole: text is cut to this many characters per wanted token (code
# averages 3-4), and the cut doubles until it holds enough tokens.
_CHARS_PER_TOKEN_GUESS = 5


def encode_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def _encode_bounded(tokenizer: Tokenizer, text: str, max_tokens: int, keep_end: bool) -> list[int]:
    """The last (keep_end) or first max_tokens tokens of `text`, tokenizing only about that much text."""
    if max_tokens == 0:
        return []
    window = max_tokens * _CHARS_PER_TOKEN_GUESS
    while window < len(text):
        ids = encode_ids(tokenizer, text[-window:] if keep_end else text[:window])
        if len(ids) >= max_tokens:
            break
        window *= 2
    else:
        ids = encode_ids(tokenizer, text)
    return ids[-max_tokens:] if keep_end else ids[:max_tokens]


def format_fim_prompt(tokenizer: Tokenizer, prefix: str, suffix: str, max_prompt_tokens: int | None = None) -> list[int]:
    """<bos><fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle> as token ids.

    With `max_prompt_tokens`, the prompt is trimmed to at most that many tokens by dropping prefix
    tokens from the left and suffix tokens from the right (the text nearest the hole survives); the
    suffix keeps at least MIN_SUFFIX_SHARE of the budget when it has that many tokens.
    The tokenizer must come from engine.training.tokenizer.load_tokenizer / train_tokenizer, so that
    "<eos>" and friends inside source code stay plain text.
    """
    if not tokenizer.encode_special_tokens:
        raise ValueError("tokenizer matches special tokens inside text; load it with "
                         "engine.training.tokenizer.load_tokenizer")
    if max_prompt_tokens is None:
        prefix_ids, suffix_ids = encode_ids(tokenizer, prefix), encode_ids(tokenizer, suffix)
    else:
        budget = max_prompt_tokens - PROMPT_OVERHEAD_TOKENS
        if budget < 0:
            raise ValueError(f"max_prompt_tokens must be at least {PROMPT_OVERHEAD_TOKENS}, got {max_prompt_tokens}")
        prefix_ids = _encode_bounded(tokenizer, prefix, budget, keep_end=True)
        suffix_ids = _encode_bounded(tokenizer, suffix, budget, keep_end=False)
        suffix_keep = min(len(suffix_ids), max(int(budget * MIN_SUFFIX_SHARE), budget - len(prefix_ids)))
        prefix_keep = min(len(prefix_ids), budget - suffix_keep)
        prefix_ids = prefix_ids[len(prefix_ids) - prefix_keep:]
        suffix_ids = suffix_ids[:suffix_keep]
    return [BOS_ID, FIM_PREFIX_ID, *prefix_ids, FIM_SUFFIX_ID, *suffix_ids, FIM_MIDDLE_ID]
