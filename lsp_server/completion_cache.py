"""Answers that need no model run: an LRU of engine results, and typed-ahead continuation of a shown suggestion.

* :class:`ResultCache` maps the model input (prompt prefix, suffix) to the engine's raw result. A hit is
  post-processed again against the current document, so the same result serves the text wherever it reappears
  (undo, re-typing the same characters, moving the cursor back).
* :class:`TypedAhead` remembers, per document, the suggestion last shown and the document it was shown in. When
  the user has since typed the start of that suggestion, and nothing else changed, the rest of the suggestion
  is the answer (Tabby's "forwarding contexts", llama.vim's typed-ahead reuse).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

from lsp_server.positions import decode_bytes, encode_text

Value = TypeVar("Value")


class ResultCache(Generic[Value]):
    """A least-recently-used mapping with a fixed capacity."""

    def __init__(self, capacity: int) -> None:
        self._entries: OrderedDict[Hashable, Value] = OrderedDict()
        self.capacity = capacity

    def get(self, key: Hashable) -> Value | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Value) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        self._evict()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._evict()

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class _Shown:
    source: bytes  # the document (UTF-8) when the suggestion was shown
    cursor: int  # byte offset of the cursor then
    text: bytes  # the suggestion, inserted at the cursor


class TypedAhead:
    """The suggestion last shown in each document, to continue it while the user types it."""

    def __init__(self) -> None:
        self._shown: dict[str, _Shown] = {}

    def remember(self, uri: str, source: bytes, cursor: int, suggestion: str) -> None:
        self._shown[uri] = _Shown(source, cursor, encode_text(suggestion))

    def forget(self, uri: str) -> None:
        self._shown.pop(uri, None)

    def continuation(self, uri: str, source: bytes, cursor: int) -> str | None:
        """The rest of the shown suggestion if the only edit since is typing its start at the cursor."""
        shown = self._shown.get(uri)
        if shown is None:
            return None
        typed = cursor - shown.cursor
        if not 0 <= typed < len(shown.text) or len(source) != len(shown.source) + typed:
            return None
        if (
            source[cursor:] != shown.source[shown.cursor :]
            or source[shown.cursor : cursor] != shown.text[:typed]
            or source[: shown.cursor] != shown.source[: shown.cursor]
        ):
            return None
        rest = decode_bytes(shown.text[typed:])
        return rest if rest.strip() else None
