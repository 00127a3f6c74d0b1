"""The long-text plan: frame budgets, context choice and what stays in memory, without a model."""

from __future__ import annotations

import numpy as np
import pytest

from csm_runtime.engine.longtext import (
    CONTEXT_PIECES,
    FRAME_SAMPLES,
    Limits,
    PieceTooLongError,
    Utterance,
    piece_cap_frames,
)
from csm_runtime.engine.types import GenerationParams, Segment


def rows(text: str, speaker: int) -> int:
    return len(text) + 2  # a stand-in tokenizer: one row per character, plus bos and eos


def speak(utt: Utterance, frames: int) -> None:
    utt.add_audio(np.zeros(frames * FRAME_SAMPLES, np.float32))
    utt.piece_done()


def test_a_single_piece_gets_the_whole_budget_and_ends_on_max_audio():
    utt = Utterance("Hello.", 0, [], GenerationParams(max_audio_ms=800, seed=7))
    piece = utt.next()
    assert (piece.text, piece.context, piece.params.max_audio_ms, piece.params.seed) == ("Hello.", [], 800, 7)
    speak(utt, 10)
    assert utt.next() is None and utt.reason == "max_audio"


def test_pieces_are_capped_get_earlier_pieces_as_context_and_share_the_total():
    texts = ["One.", "Two.", "Three."]
    utt = Utterance(texts, 3, [], GenerationParams(max_audio_ms=80 * 100, seed=1))
    first = utt.next()
    assert first.params.max_audio_ms == piece_cap_frames("One.") * 80 and first.context == []
    speak(utt, 20)
    second = utt.next()
    assert [s.text for s in second.context] == ["One."] and second.context[0].speaker == 3
    assert len(second.context[0].audio) == 20 * FRAME_SAMPLES and second.params.seed == 2
    speak(utt, 70)
    third = utt.next()
    assert third.params.max_audio_ms == 10 * 80  # 100 - 20 - 70 frames left
    speak(utt, 10)
    assert utt.next() is None and utt.reason == "max_audio"


def test_context_is_the_newest_pieces_within_max_context_frames_after_the_voice():
    voice = [Segment("reference", 0, np.zeros(9 * FRAME_SAMPLES, np.float32))]
    texts = [f"Piece {i}." for i in range(6)]
    utt = Utterance(texts, 0, voice, GenerationParams(max_audio_ms=10**7), Limits(max_context_frames=40))
    for _ in range(5):
        utt.next()
        speak(utt, 10)
    piece = utt.next()
    # voice: 9 + 1 frames; then 40 - 10 = 30 for pieces of 10 + 1 frames each: the two newest (also CONTEXT_PIECES)
    assert [s.text for s in piece.context] == ["reference", "Piece 3.", "Piece 4."]
    assert len(utt._spoken) <= CONTEXT_PIECES  # older pieces are forgotten, not kept for the whole text


def test_the_piece_frames_and_context_fit_the_cache():
    limits = Limits(max_seq_len=250, max_context_frames=1000, text_rows=rows)
    utt = Utterance(["A" * 50, "B" * 50, "C" * 50], 0, [], GenerationParams(max_audio_ms=10**7), limits)
    assert utt.next().params.max_audio_ms // 80 == piece_cap_frames("A" * 50) == 88
    speak(utt, 60)
    second = utt.next()  # 52 rows + 88 frames leave 110 rows: A's 52 + 61 do not fit
    assert second.params.max_audio_ms // 80 == 88 and second.context == []
    speak(utt, 20)
    third = utt.next()  # B's 52 + 21 rows fit, then A's no longer
    assert [s.text for s in third.context] == ["B" * 50]

    small = Utterance("x" * 100, 0, [], GenerationParams(max_audio_ms=10**7), Limits(max_seq_len=150, text_rows=rows))
    assert small.next().params.max_audio_ms // 80 == 150 - 102  # a single piece: the cache limits it
    with pytest.raises(PieceTooLongError):
        Utterance("x" * 300, 0, [], GenerationParams(), limits).next()


def test_at_most_context_pieces_are_context():
    utt = Utterance([f"Short {i}." for i in range(8)], 0, [], GenerationParams(max_audio_ms=10**7))
    for _ in range(7):
        utt.next()
        speak(utt, 1)
    assert [s.text for s in utt.next().context] == [f"Short {i}." for i in range(7 - CONTEXT_PIECES, 7)]
