"""The sentence splitter and the speakable-text rule the server and its OpenAPI schema share."""

from __future__ import annotations

import re

import pytest

from csm_runtime.engine.sentences import (
    MAX_PIECE_CHARS,
    SPEAKABLE_PATTERN,
    clean,
    is_speakable,
    speech_pieces,
    split_sentences,
)

CASES = [
    ("Hello there. How are you?", ["Hello there.", "How are you?"]),
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    ("It costs 3.14 dollars. That is cheap.", ["It costs 3.14 dollars.", "That is cheap."]),
    ("J. R. R. Tolkien wrote it. The U.S. Army read it.", ["J. R. R. Tolkien wrote it.", "The U.S. Army read it."]),
    ("See No. 5 below. I said no. Then I left.", ["See No. 5 below.", "I said no.", "Then I left."]),
    ("Fruit, e.g. apples, i.e. food. Done.", ["Fruit, e.g. apples, i.e. food.", "Done."]),
    ('He said "Stop!" Then he left.', ['He said "Stop!"', "Then he left."]),
    ('"Stop!" he said. Fine.', ['"Stop!" he said.', "Fine."]),
    ("(It rained.) We stayed.", ["(It rained.)", "We stayed."]),
    ("Wait... What?! Really.", ["Wait...", "What?!", "Really."]),
    ("你好。今天很好！是吗？", ["你好。", "今天很好！", "是吗？"]),
    ("no punctuation at all", ["no punctuation at all"]),
    ("First paragraph without a stop\n\nSecond one", ["First paragraph without a stop", "Second one"]),
    ("A line\nwraps here. Next.", ["A line wraps here.", "Next."]),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0][:30] for c in CASES])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_long_runs_break_at_clauses_then_spaces_then_hard():
    clauses = ", ".join(["this part goes on for a while"] * 30) + "."
    pieces = speech_pieces(clauses)
    assert all(len(p) <= MAX_PIECE_CHARS for p in pieces) and all(p.endswith((",", ".")) for p in pieces)
    assert " ".join(pieces) == clauses
    words = " ".join(["word"] * 400)
    pieces = speech_pieces(words)
    assert all(len(p) <= MAX_PIECE_CHARS and not p.startswith(" ") for p in pieces)
    assert " ".join(pieces) == words
    assert [len(p) for p in speech_pieces("a" * 700)] == [300, 300, 100]


def test_letterless_bits_join_the_next_piece():
    assert speech_pieces("1. Buy milk. 2. Buy eggs.") == ["1. Buy milk.", "2. Buy eggs."]
    assert speech_pieces("Done. 42.") == ["Done. 42."]
    assert speech_pieces("... Hello.") == ["... Hello."]


def test_pieces_of_a_4096_character_text_keep_every_word():
    text = ("The quick brown fox, who was rather tired, jumped over Mr. Lazy Dog at 3.30 p.m. on Jan. 5! " * 60)[:4096]
    pieces = speech_pieces(text)
    assert len(pieces) > 10 and all(0 < len(p) <= MAX_PIECE_CHARS for p in pieces)
    assert " ".join(pieces).split() == text.split()


INVISIBLE_ONLY = ["", "   ", "\x00\x00", "\u200b\u200c\u200d", "\ufeff\n\t", "\u2060 \u00ad", "\x7f\x85"]


@pytest.mark.parametrize("text", INVISIBLE_ONLY, ids=[repr(t) for t in INVISIBLE_ONLY])
def test_only_invisible_characters_is_empty_for_the_server_and_the_schema_pattern(text):
    assert not is_speakable(text) and speech_pieces(text) == []
    assert re.search(SPEAKABLE_PATTERN, text) is None


def test_invisible_characters_are_removed_and_the_rest_is_kept():
    assert clean("Hel\u200blo\x00 wor\ufeffld\r\n") == "Hello world\n"
    assert is_speakable("\u200bx") and is_speakable("你") and is_speakable("5")
    assert speech_pieces("Zero\u200bwidth. Gone\x00.") == ["Zerowidth.", "Gone."]
