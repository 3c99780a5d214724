"""Text-level infill: the prompt for the checkpoint, one batch of candidates, each decoded up to its EOS.

Prompt formats:

* ``fim``: the checkpoint's tokenizer has the project's special tokens (``<pad>`` .. ``<file_sep>`` at ids 0..6,
  see engine.training.tokenizer): ``<bos><fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>``, built by
  engine.training.fim.format_fim_prompt, the layout the model was trained on.
* ``chat``: a Gemma 4 instruct tokenizer (google/diffusiongemma-26B-A4B-it) has no FIM tokens, so the prefix and
  suffix go into one user turn around a hole marker, with an instruction to answer with the missing code only:
  ``<bos><|turn>user\\n{instruction}<turn|>\\n<|turn>model\\n<|channel>thought\\n<channel|>`` (thinking off).

Control tokens are placed by id and source text is encoded with special-token matching off, so an ``<eos>``
written inside a string literal of the user's code stays text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from engine.generate import StepEvent
from engine.prompt import BOS_ID, FIM_MIDDLE_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID, SPECIAL_TOKENS, format_fim_prompt

if TYPE_CHECKING:
    from engine.engine import Engine, GenerationResult

FIM_FORMAT = "fim"
CHAT_FORMAT = "chat"

TURN_OPEN, TURN_CLOSE, CHANNEL_OPEN, CHANNEL_CLOSE = "<|turn>", "<turn|>", "<|channel>", "<channel|>"
HOLE_MARKER = "<FILL_HERE>"
CHAT_INSTRUCTION = (
    f"Write the code that belongs at {HOLE_MARKER} in the file below. Reply with only that code: no explanation, "
    f"no Markdown fences, and nothing that already comes before or after {HOLE_MARKER}.\n\n"
)
# An instruct model may still wrap its answer in a Markdown fence despite the instruction.
_CODE_FENCE = re.compile(r"\A\s*```[\w+-]*\n(.*?)\n?```\s*\Z", re.DOTALL)


class InfillError(ValueError):
    """The checkpoint cannot infill text (no tokenizer, or one with neither FIM tokens nor chat markers)."""


@dataclass(frozen=True)
class CanvasText:
    """The first candidate's canvas after one denoising step, as text (committed blocks + current argmax)."""

    block: int
    step: int  # 1-based within the block
    max_steps: int
    text: str  # decoded up to the first stop token
    accepted_fraction: float


@dataclass(frozen=True)
class InfillCandidate:
    text: str  # the middle, decoded up to the first stop token
    score: float  # tokens per forward of its row: a confident canvas settles in fewer steps
    finished: bool  # reached a stop token (False: ran out of max_new_tokens)
    token_ids: tuple[int, ...] = ()  # the middle's tokens, up to (without) the stop token


@dataclass(frozen=True)
class InfillResult:
    candidates: list[InfillCandidate]  # in batch row order
    prompt_format: str  # FIM_FORMAT or CHAT_FORMAT
    generation: GenerationResult

    @property
    def middle(self) -> str:
        """The first candidate's middle."""
        return self.candidates[0].text


def decode_middle(tokenizer: Tokenizer, ids: list[int], chosen: str) -> str:
    """A candidate's tokens (up to its stop token) as the middle's text in prompt format ``chosen``."""
    text = decode_text(tokenizer, ids)
    return strip_code_fence(text) if chosen == CHAT_FORMAT else text


def strip_code_fence(text: str) -> str:
    """An instruct model's answer without the Markdown fence it may wrap the code in despite the instruction."""
    fenced = _CODE_FENCE.match(text)
    return fenced.group(1) if fenced else text


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte in a byte-level BPE token."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[chr(byte)] = byte
        else:
            characters[chr(256 + extra)] = byte
            extra += 1
    return characters


def decode_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Text of `ids` without special tokens, and never a U+FFFD that the tokens do not spell out.

    A byte-level token can end inside a multi-byte character (a canvas cut before its last byte, or a model that
    wrote a stray continuation byte); `Tokenizer.decode` would put U+FFFD there, which an accepted suggestion writes
    into the user's file. Byte-level tokens are joined as bytes and invalid UTF-8 is dropped; other decoders
    (byte fallback) drop the replacement characters their decode made.
    """
    if tokenizer.decoder is None or tokenizer.decoder.__class__.__name__ != "ByteLevel":
        return tokenizer.decode(ids, skip_special_tokens=True).replace("\ufffd", "")
    table = byte_level_alphabet()
    added = tokenizer.get_added_tokens_decoder()
    data = bytearray()
    for token_id in ids:
        if token_id in added:
            if not added[token_id].special:
                data += added[token_id].content.encode("utf-8")
            continue
        piece = tokenizer.id_to_token(token_id)
        if piece is not None:
            data += bytes(table[char] for char in piece if char in table)
    return data.decode("utf-8", errors="ignore")


def text_tokenizer(engine: Engine) -> Tokenizer:
    """The engine's tokenizer, set to encode special-token strings found in source code as plain text."""
    if engine.tokenizer is None:
        raise InfillError(f"{engine.path}: the checkpoint has no tokenizer.json, so it cannot infill text")
    engine.tokenizer.encode_special_tokens = True
    return engine.tokenizer


def prompt_format(tokenizer: Tokenizer) -> str:
    """FIM_FORMAT when the tokenizer has the project's special tokens at their fixed ids, else CHAT_FORMAT."""
    if all(tokenizer.token_to_id(token) == index for index, token in enumerate(SPECIAL_TOKENS)):
        return FIM_FORMAT
    missing = [marker for marker in (TURN_OPEN, TURN_CLOSE, CHANNEL_OPEN, CHANNEL_CLOSE)
               if tokenizer.token_to_id(marker) is None]
    if missing:
        raise InfillError(
            "the tokenizer has neither the FIM special tokens "
            f"({', '.join(SPECIAL_TOKENS)} at ids 0..{len(SPECIAL_TOKENS) - 1}) nor the Gemma 4 chat markers "
            f"(missing {', '.join(missing)})"
        )
    return CHAT_FORMAT


def infill_prompt(engine: Engine, prefix: str, suffix: str) -> tuple[str, list[int]]:
    """(format, prompt token ids) asking the checkpoint for the text between ``prefix`` and ``suffix``."""
    tokenizer = text_tokenizer(engine)
    chosen = prompt_format(tokenizer)
    return chosen, prompt_ids(tokenizer, chosen, engine.config.bos_token_id, prefix, suffix)


def prompt_ids(tokenizer: Tokenizer, chosen: str, bos_id: int | None, prefix: str, suffix: str) -> list[int]:
    """The infill prompt in format ``chosen`` as ids; ``tokenizer`` must encode special-token strings as text."""
    if chosen == FIM_FORMAT:
        return format_fim_prompt(tokenizer, prefix, suffix)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    def control(token: str) -> int:
        return tokenizer.token_to_id(token)

    bos = [bos_id] if bos_id is not None else []
    return [
        *bos, control(TURN_OPEN), *encode("user\n" + CHAT_INSTRUCTION + prefix + HOLE_MARKER + suffix),
        control(TURN_CLOSE), *encode("\n"), control(TURN_OPEN), *encode("model\n"),
        control(CHANNEL_OPEN), *encode("thought\n"), control(CHANNEL_CLOSE),
    ]


def prompt_text(chosen: str, prefix: str, suffix: str) -> str:
    """The infill prompt as text with the control tokens spelled out, for a server that tokenizes it itself.

    It is the same prompt as ``prompt_ids`` when the server's tokenizer parses special-token strings (vLLM's and
    diffgemma-serve's do), except that special-token strings inside the code are parsed too.
    """
    if chosen == FIM_FORMAT:
        bos, fim_prefix, fim_suffix, fim_middle = (SPECIAL_TOKENS[i] for i in (BOS_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID,
                                                                               FIM_MIDDLE_ID))
        return f"{bos}{fim_prefix}{prefix}{fim_suffix}{suffix}{fim_middle}"
    return (f"<bos>{TURN_OPEN}user\n{CHAT_INSTRUCTION}{prefix}{HOLE_MARKER}{suffix}{TURN_CLOSE}\n"
            f"{TURN_OPEN}model\n{CHANNEL_OPEN}thought\n{CHANNEL_CLOSE}")


def infill(
    engine: Engine,
    prefix: str,
    suffix: str,
    *,
    max_new_tokens: int | None = None,
    num_candidates: int = 1,
    seed: int | None = None,
    on_canvas: Callable[[CanvasText], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    **generation_overrides: Any,
) -> InfillResult:
    """Generate ``num_candidates`` middles between ``prefix`` and ``suffix`` in one batch (see Engine.infill)."""
    chosen, prompt_ids = infill_prompt(engine, prefix, suffix)
    return complete_prompt(
        engine, prompt_ids, chosen, max_new_tokens=max_new_tokens, num_candidates=num_candidates, seed=seed,
        on_canvas=on_canvas, cancelled=cancelled, **generation_overrides,
    )


def score_middles(engine: Engine, prefix: str, suffix: str, middles: list[str]) -> list[float]:
    """log P(middle, then its stop token | the infill prompt) per middle, under the causal encoder (see
    Engine.continuation_log_likelihoods): how likely the model finds each candidate, whoever proposed it."""
    tokenizer = text_tokenizer(engine)
    chosen, prompt = infill_prompt(engine, prefix, suffix)
    if chosen == CHAT_FORMAT:
        stop = tokenizer.token_to_id(TURN_CLOSE)
    else:
        stop = (engine.generation_config.eos_token_id or engine.config.eos_token_id)[0]
    rows = [tokenizer.encode(middle, add_special_tokens=False).ids + [stop] for middle in middles]
    return engine.continuation_log_likelihoods(prompt, rows)


def complete_prompt(
    engine: Engine,
    prompt_ids: list[int],
    chosen: str,
    *,
    max_new_tokens: int | None = None,
    num_candidates: int = 1,
    seed: int | None = None,
    on_canvas: Callable[[CanvasText], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    extra_stop_ids: tuple[int, ...] = (),
    **generation_overrides: Any,
) -> InfillResult:
    """Generate after a prompt already in ``chosen`` format, each candidate decoded up to its first stop token.

    ``infill`` builds the prompt from text; an HTTP server receives it as token ids. ``extra_stop_ids`` end a
    candidate besides the checkpoint's EOS (a client's ``stop_token_ids``).
    """
    tokenizer = text_tokenizer(engine)
    # A checkpoint built from a config may lack EOS/pad in its generation config; the model config has them.
    eos_ids = set(engine.generation_config.eos_token_id or engine.config.eos_token_id) | set(extra_stop_ids)
    if chosen == CHAT_FORMAT:
        eos_ids.add(tokenizer.token_to_id(TURN_CLOSE))  # the answer ends with the model's turn
    generation_overrides.setdefault("eos_token_id", tuple(sorted(eos_ids)))
    if engine.generation_config.pad_token_id is None:
        generation_overrides.setdefault("pad_token_id", engine.config.pad_token_id)
    # Resolved as generate() will resolve them (an id, a list or None), so decoding stops where generation does.
    stop_ids = frozenset(engine.generation_settings(max_new_tokens, **generation_overrides).eos_token_id or ())

    def middle_ids(ids: list[int]) -> tuple[list[int], bool]:
        end = next((i for i, token in enumerate(ids) if token in stop_ids), None)
        return (ids if end is None else ids[:end]), end is not None

    def decode(ids: list[int]) -> str:
        return decode_middle(tokenizer, ids, chosen)

    on_step = None
    if on_canvas is not None:
        committed: list[int] = []  # the first row's tokens of the canvases already finished
        block, argmax = 0, []

        def on_step(event: StepEvent) -> None:
            nonlocal block, argmax
            if event.block != block:  # the previous canvas was committed as its final argmax
                committed.extend(argmax)
                block = event.block
            argmax = event.argmax[0].tolist()
            text = decode(middle_ids(committed + argmax)[0])
            on_canvas(CanvasText(event.block, event.step, event.max_steps, text, event.accepted_fraction))

    result = engine.generate(
        prompt_ids, max_new_tokens=max_new_tokens, seed=seed, num_candidates=num_candidates,
        on_step=on_step, cancelled=cancelled, **generation_overrides,
    )
    candidates = []
    for row, score in zip(result.candidates, result.candidates_tokens_per_forward):
        ids, finished = middle_ids(row)
        candidates.append(InfillCandidate(decode(ids), score, finished, tuple(ids)))
    return InfillResult(candidates, chosen, result)
