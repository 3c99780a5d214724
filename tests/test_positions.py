"""LSP position <-> UTF-8 byte offset conversion (UTF-16/UTF-8/UTF-32, surrogates, CRLF)."""

from __future__ import annotations

import random

import pytest
from lsprotocol import types as lsp

from lsp_server.positions import (
    LineIndex,
    PositionEncoding,
    PositionError,
    as_line_character,
    byte_to_column,
    column_to_byte,
    encode_text,
)

UTF8, UTF16, UTF32 = PositionEncoding.UTF8, PositionEncoding.UTF16, PositionEncoding.UTF32

# "a😀b" : the emoji is 4 UTF-8 bytes, 2 UTF-16 units, 1 code point.
# "日本" : 3 UTF-8 bytes each, 1 UTF-16 unit each.
# "é" written as e + U+0301 (combining acute): two code points, 1 + 2 bytes.
MIXED_LINE = "a😀b日本e\u0301!"


@pytest.mark.parametrize(
    ("encoding", "column", "expected_byte"),
    [
        (UTF16, 0, 0),
        (UTF16, 1, 1),  # before the emoji
        (UTF16, 3, 5),  # after the emoji (2 units)
        (UTF16, 4, 6),  # after "b"
        (UTF16, 5, 9),  # after 日
        (UTF16, 6, 12),  # after 本
        (UTF16, 7, 13),  # after "e"
        (UTF16, 8, 15),  # after the combining mark
        (UTF16, 9, 16),  # end of line
        (UTF32, 2, 5),
        (UTF32, 3, 6),
        (UTF32, 8, 16),
        (UTF8, 5, 5),
        (UTF8, 16, 16),
    ],
)
def test_column_to_byte_counts_units_of_each_encoding(encoding, column, expected_byte):
    assert column_to_byte(MIXED_LINE, column, encoding) == expected_byte
    assert byte_to_column(encode_text(MIXED_LINE), expected_byte, encoding) == column


@pytest.mark.parametrize(
    ("encoding", "column", "reason"),
    [
        (UTF16, 2, "splits the surrogate pair"),
        (UTF8, 2, "splits a character"),
        (UTF16, -1, "negative"),
    ],
)
def test_invalid_columns_raise_position_error(encoding, column, reason):
    with pytest.raises(PositionError, match=reason):
        column_to_byte(MIXED_LINE, column, encoding)


@pytest.mark.parametrize(("encoding", "column"), [(UTF16, 10), (UTF16, 999), (UTF32, 9), (UTF8, 17), (UTF8, 99)])
def test_a_column_past_the_end_of_the_line_means_its_end(encoding, column):
    """LSP: "If the character value is greater than the line length it defaults back to the line length"."""
    assert column_to_byte(MIXED_LINE, column, encoding) == len(encode_text(MIXED_LINE))


def test_byte_column_inside_a_character_is_rejected():
    with pytest.raises(PositionError, match="splits a character"):
        byte_to_column(encode_text(MIXED_LINE), 2, UTF16)
    with pytest.raises(PositionError, match="outside"):
        byte_to_column(encode_text(MIXED_LINE), 99, UTF32)


def test_ascii_lines_take_the_fast_path_in_every_encoding():
    for encoding in PositionEncoding:
        assert column_to_byte("hello", 3, encoding) == 3
        assert byte_to_column(b"hello", 5, encoding) == 5
        assert column_to_byte("hello", 6, encoding) == 5


def test_round_trip_of_every_column_on_random_unicode_lines():
    rng = random.Random(7)
    alphabet = ["a", " ", "é", "\u0301", "日", "😀", "𝔘", "\t", "ß", "ﬁ"]
    for _ in range(200):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        data = encode_text(line)
        for encoding in PositionEncoding:
            valid_bytes = set()
            units = {UTF8: lambda ch: len(ch.encode()), UTF16: lambda ch: 2 if ord(ch) > 0xFFFF else 1, UTF32: lambda ch: 1}
            column = 0
            for char in line:
                valid_bytes.add(column_to_byte(line, column, encoding))
                column += units[encoding](char)
            assert column_to_byte(line, column, encoding) == len(data)
            assert len(valid_bytes) == len(line)
            for byte_column in valid_bytes:
                assert column_to_byte(line, byte_to_column(data, byte_column, encoding), encoding) == byte_column


def test_as_line_character_accepts_lsprotocol_and_tuples_and_rejects_the_rest():
    assert as_line_character(lsp.Position(line=3, character=7)) == (3, 7)
    assert as_line_character((2, 0)) == (2, 0)
    for bad in [(1,), (1, 2, 3), ("1", 2), (True, 1), (-1, 0), (0, -5), object(), None]:
        with pytest.raises(PositionError):
            as_line_character(bad)


def test_line_index_understands_all_three_terminators():
    source = b"one\r\ntwo\nthree\rfour\r\n"
    index = LineIndex(source)
    assert index.line_count == 5  # the final terminator starts an empty fifth line
    assert [index.line_start(line) for line in range(5)] == [0, 5, 9, 15, 21]
    assert [source[index.line_start(line) : index.line_end(line, source)] for line in range(5)] == [
        b"one",
        b"two",
        b"three",
        b"four",
        b"",
    ]
    assert [index.line_end(line, source) for line in range(5)] == [3, 8, 14, 19, 21]
    assert index.line_at(0) == 0
    assert index.line_at(4) == 0  # the "\n" of "\r\n" belongs to line 0
    assert index.line_at(5) == 1
    assert index.line_at(21) == 4
    with pytest.raises(PositionError):
        index.line_start(5)
    with pytest.raises(PositionError):
        index.line_at(22)


def test_line_index_of_empty_text_has_one_empty_line():
    index = LineIndex(b"")
    assert index.line_count == 1
    assert index.line_start(0) == 0
    assert index.line_end(0, b"") == 0


def test_line_index_replace_lines_matches_a_fresh_index():
    rng = random.Random(11)
    pieces = ["x", "yy", "\n", "\r\n", "\r", "é", ""]
    source = b"alpha\nbeta\r\ngamma\rdelta\n"
    index = LineIndex(source)
    for _ in range(300):
        first = rng.randrange(index.line_count)
        last = rng.randrange(first, index.line_count)
        region_start = index.line_start(first)
        old_end = index.line_start(last + 1) if last + 1 < index.line_count else len(source)
        replacement = encode_text("".join(rng.choice(pieces) for _ in range(rng.randint(0, 4))))
        if last + 1 < index.line_count and not replacement.endswith((b"\n", b"\r")):
            replacement += b"\n"  # a region that is not at the end of the text ends with a terminator
        if (first > 0 and source[region_start - 1 : region_start] == b"\r" and replacement.startswith(b"\n")) or (
            replacement.endswith(b"\r") and source[old_end : old_end + 1] == b"\n"
        ):
            continue  # "\r" + "\n" across the region edge would merge two lines: Document widens the region
        source = source[:region_start] + replacement + source[old_end:]
        index.replace_lines(first, last, source, region_start, region_start + len(replacement))
        fresh = LineIndex(source)
        assert index.line_count == fresh.line_count
        assert [index.line_start(line) for line in range(index.line_count)] == [
            fresh.line_start(line) for line in range(fresh.line_count)
        ]
