"""The prompt compared with the one the checkpoint was trained on, as transformers builds it: CsmProcessor with the
checkpoint's chat template (ids), CsmForConditionalGeneration's merge of audio rows (embeddings) and its generate
(greedy codes), for text alone and for two context segments of two speakers with audio.

The checkpoint's Llama-3 tokenizer cannot be downloaded here; the tiny byte-level tokenizer has the same four special
tokens, and the processor sees exactly what the checkpoint's does (tokenizer + chat template). Context audio is
encoded by transformers' own MimiModel holding the same weights as our moshi Mimi (tests/fakes/hf_mimi.py), so
per-frame codes are compared too, not only their count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import CsmProcessor, EncodecFeatureExtractor
from transformers.models.csm.processing_csm import CsmProcessorKwargs

from csm_runtime.engine.codec import FRAME_SAMPLES, tiny_mimi_config, trim_to_frames
from csm_runtime.engine.types import Segment
from tests.fakes.hf_mimi import hf_mimi_from_moshi, spread_codebooks
from tests.fakes.runtime_fixtures import tiny_generator

# What sesame/csm-1b's chat template writes for each message (its first half only validates the conversation: every
# message but the last must carry one text and one audio item, the last one text).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- bos_token }}{{- '[' + message['role'] + ']' }}{{- message['content'][0]['text'] }}{{- eos_token }}"
    "{%- if message['content']|length > 1 %}{{- '<|AUDIO|><|audio_eos|>' }}{%- endif %}"
    "{%- endfor %}"
)
ENCODED_LENGTH = CsmProcessorKwargs._defaults["audio_kwargs"]["encoded_length_kwargs"]  # the real Mimi's convs
FRAMES = 4


@pytest.fixture(scope="module")
def ref():
    """Our generator, and transformers' processor and model around the same weights (codec included)."""
    gen = tiny_generator(max_streams=1)
    spread_codebooks(gen.codec.mimi)
    gen.loaded.model.codec_model = hf_mimi_from_moshi(gen.codec.mimi, tiny_mimi_config())
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000)
    processor = CsmProcessor(feature_extractor=extractor, tokenizer=gen.loaded.tokenizer, chat_template=CHAT_TEMPLATE)
    return gen, processor, gen.loaded.model


def _audio(samples: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(samples) * 0.1).astype(np.float32)


def _messages(context: list[Segment], text: str, speaker: int) -> list[dict]:
    msgs = [
        {"role": str(s.speaker), "content": [{"type": "text", "text": s.text}, {"type": "audio", "audio": s.audio}]}
        for s in context
    ]
    return [*msgs, {"role": str(speaker), "content": [{"type": "text", "text": text}]}]


def _reference(ref, context, text, speaker, generate=True):
    """transformers' ids, merged embeddings [T, H] and greedy codes (None unless `generate`) for the conversation."""
    _, processor, model = ref
    msgs = _messages([Segment(s.text, s.speaker, s.audio.numpy()) for s in context], text, speaker)
    inputs = processor.apply_chat_template(msgs, tokenize=True, return_dict=True)
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        merged = model._merge_input_ids_with_input_values(
            inputs["input_ids"], inputs.get("input_values"), inputs.get("input_values_cutoffs")
        )
        codes = None
        if generate:  # attention_mask matters: without it every `<|AUDIO|>` row (= pad_token_id) is masked out
            codes = model.generate(**inputs, max_new_tokens=FRAMES, do_sample=False, depth_decoder_do_sample=False)
            codes = codes[0].numpy()
    return inputs["input_ids"][0].tolist(), merged["inputs_embeds"][0], codes


def test_the_chat_template_renders_the_checkpoints_layout(ref):
    """The rendering transformers' own CSM processor test expects from the checkpoint's template."""
    msgs = [
        {"role": "0", "content": [{"type": "text", "text": "This is a test sentence 0."}, {"type": "audio"}]},
        {"role": "1", "content": [{"type": "text", "text": "This is a test sentence 1."}, {"type": "audio"}]},
        {"role": "0", "content": [{"type": "text", "text": "This is a prompt."}]},
    ]
    assert ref[1].apply_chat_template(msgs, tokenize=False) == (
        "<|begin_of_text|>[0]This is a test sentence 0.<|end_of_text|><|AUDIO|><|audio_eos|>"
        "<|begin_of_text|>[1]This is a test sentence 1.<|end_of_text|><|AUDIO|><|audio_eos|>"
        "<|begin_of_text|>[0]This is a prompt.<|end_of_text|>"
    )


def test_text_alone_equals_the_processor_token_for_token(ref):
    gen = ref[0]
    ids, embeds, codes = _reference(ref, [], "Hello there, how are you?", 1)
    rows = gen.prompt.rows("Hello there, how are you?", 1, ())
    assert rows.tokens == ids
    assert gen.loaded.tokenizer.decode(ids) == "<|begin_of_text|>[1]Hello there, how are you?<|end_of_text|>"
    assert not rows.is_audio.any()
    torch.testing.assert_close(gen.build_prompt("Hello there, how are you?", 1, ()), embeds, rtol=0, atol=0)
    np.testing.assert_array_equal(gen.frame_codes("Hello there, how are you?", 1, frames=FRAMES), codes)


def test_two_speakers_with_audio_equal_the_processor_row_for_row(ref):
    gen, _, model = ref
    ids = gen.prompt.ids
    context = [
        Segment("First of all.", 0, torch.from_numpy(_audio(5 * FRAME_SAMPLES, 0))),
        Segment("Then me, speaker one.", 1, torch.from_numpy(_audio(3 * FRAME_SAMPLES, 1))),
    ]
    ref_ids, ref_embeds, ref_codes = _reference(ref, context, "And back to zero.", 0)
    rows = gen.prompt.rows("And back to zero.", 0, context)
    assert rows.tokens == ref_ids

    # The layout, spelled out: text rows, one <|AUDIO|> row per Mimi frame, the <|audio_eos|> row, next segment.
    pos = 0
    for seg in context:
        text = gen.prompt.text_rows(seg.text, seg.speaker)
        assert gen.loaded.tokenizer.decode(text) == f"<|begin_of_text|>[{seg.speaker}]{seg.text}<|end_of_text|>"
        assert rows.tokens[pos : pos + len(text)] == text and not rows.is_audio[pos : pos + len(text)].any()
        pos += len(text)
        frames = gen.codec.encode(seg.audio)
        n = frames.shape[1]
        assert n == CsmProcessor._get_encoded_length(len(seg.audio), **ENCODED_LENGTH)
        assert rows.tokens[pos : pos + n + 1] == [ids["audio"]] * n + [ids["audio_eos"]]
        assert rows.is_audio[pos : pos + n + 1].all()
        torch.testing.assert_close(rows.codes[pos : pos + n], frames.T.cpu(), rtol=0, atol=0)
        # The audio-eos frame: every codebook codebook_eos_token_id, 0 for CSM-1B (Sesame's all-zero EOS frame).
        assert rows.codes[pos + n].tolist() == [model.config.codebook_eos_token_id] * 32 == [0] * 32
        pos += n + 1
    assert rows.tokens[pos:] == gen.prompt.text_rows("And back to zero.", 0)

    torch.testing.assert_close(gen.build_prompt("And back to zero.", 0, context), ref_embeds, rtol=0, atol=0)
    np.testing.assert_array_equal(gen.frame_codes("And back to zero.", 0, context, frames=FRAMES), ref_codes)


def test_the_context_changes_the_reference_too(ref):
    """Guards the comparison above: audio rows are really merged in, so a different context gives other codes."""
    ctx = [Segment("Words.", 1, torch.from_numpy(_audio(4 * FRAME_SAMPLES, 2)))]
    other = [Segment("Words.", 1, torch.from_numpy(_audio(4 * FRAME_SAMPLES, 3)))]
    _, embeds_a, _ = _reference(ref, ctx, "Same text.", 0, generate=False)
    _, embeds_b, _ = _reference(ref, other, "Same text.", 0, generate=False)
    assert embeds_a.shape == embeds_b.shape and not torch.equal(embeds_a, embeds_b)


@pytest.mark.parametrize("samples", [1, 1919, 1920, 1921, 4096, 24_000, 24_001, 5 * FRAME_SAMPLES + 700])
def test_frame_count_equals_the_processors_audio_tokens(ref, samples):
    frames = ref[0].codec.encode(_audio(samples, 4)).shape[1]
    assert frames == CsmProcessor._get_encoded_length(samples, **ENCODED_LENGTH) == math.ceil(samples / FRAME_SAMPLES)


def test_codes_equal_transformers_mimi_on_whole_frames(ref):
    gen, _, model = ref
    for frames in (1, 4, 13):
        audio = _audio(frames * FRAME_SAMPLES, frames)
        ours = gen.codec.encode(audio).cpu()
        theirs = model.codec_model.encode(torch.from_numpy(audio).view(1, 1, -1)).audio_codes[0]
        assert ours.shape == theirs.shape == (32, frames)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert len({tuple(c) for c in ours.T.tolist()}) > 1  # frames got different codes: the comparison can fail


def test_codes_before_a_partial_last_frame_equal_transformers_mimi(ref):
    gen, _, model = ref
    audio = _audio(5 * FRAME_SAMPLES + 700, 5)
    ours = gen.codec.encode(audio).cpu()
    theirs = model.codec_model.encode(torch.from_numpy(audio).view(1, 1, -1)).audio_codes[0]
    assert ours.shape == theirs.shape == (32, 6)
    torch.testing.assert_close(ours[:, :5], theirs[:, :5], rtol=0, atol=0)


def test_a_clip_trimmed_to_whole_frames_gives_transformers_mimis_codes(ref):
    """Uploads are trimmed to whole frames (trim_to_frames) before they are encoded once and stored. Untrimmed, the
    partial last frame differs: moshi >= 0.2.10 (ours) zero-pads the waveform to whole frames before its convs, while
    transformers' MimiModel and moshi 0.2.2 (Sesame's generator) pad each conv's input instead."""
    gen, _, model = ref
    audio = _audio(5 * FRAME_SAMPLES + 700, 5)
    trimmed = trim_to_frames(audio)
    assert trimmed.shape == (5 * FRAME_SAMPLES,) and np.array_equal(trimmed, audio[: 5 * FRAME_SAMPLES])
    ours = gen.codec.encode(trimmed).cpu()
    theirs = model.codec_model.encode(torch.from_numpy(trimmed).view(1, 1, -1)).audio_codes[0]
    assert ours.shape == theirs.shape == (32, 5)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    untrimmed = model.codec_model.encode(torch.from_numpy(audio).view(1, 1, -1)).audio_codes[0]
    assert not torch.equal(gen.codec.encode(audio).cpu()[:, 5], untrimmed[:, 5])  # why the trim is needed


def test_trim_to_frames_keeps_whole_frames_and_refuses_less_than_one():
    assert trim_to_frames(np.zeros(3 * FRAME_SAMPLES)).shape == (3 * FRAME_SAMPLES,)
    assert trim_to_frames(torch.zeros(1, FRAME_SAMPLES + 1)).shape == (1, FRAME_SAMPLES)
    with pytest.raises(ValueError, match="shorter than one frame"):
        trim_to_frames(np.zeros(FRAME_SAMPLES - 1))


def _stored(gen, context: list[Segment]) -> list[Segment]:
    """The same context as stored voices and conversation turns carry it: codes encoded once, no waveform."""
    return [Segment(s.text, s.speaker, codes=gen.codec.encode(s.audio).cpu().numpy()) for s in context]


def test_stored_codes_with_the_prefix_reused_equal_transformers_generate(ref):
    """Greedy codes with context given as Segment.codes (a voice, then a conversation turn), cold and then with the
    context's backbone KV reused, equal transformers' generate fed the audio through the chat template."""
    gen = ref[0]
    context = [
        Segment("My reference voice.", 1, torch.from_numpy(trim_to_frames(_audio(6 * FRAME_SAMPLES + 50, 6)))),
        Segment("A turn of the other side.", 0, torch.from_numpy(_audio(3 * FRAME_SAMPLES, 7))),
    ]
    _, _, ref_codes = _reference(ref, context, "Now say this.", 1)
    stored = _stored(gen, context)
    before = gen.prefix_stats()
    cold = gen.frame_codes("Now say this.", 1, stored, frames=FRAMES)
    warm = gen.frame_codes("Now say this.", 1, stored, frames=FRAMES)
    after = gen.prefix_stats()
    assert after["misses"] == before["misses"] + 1 and after["hits"] == before["hits"] + 1
    np.testing.assert_array_equal(cold, ref_codes)
    np.testing.assert_array_equal(warm, ref_codes)
    # A request sharing only the voice reuses its part; its codes still equal transformers'.
    _, _, ref_voice = _reference(ref, context[:1], "Only the voice.", 1)
    np.testing.assert_array_equal(gen.frame_codes("Only the voice.", 1, stored[:1], frames=FRAMES), ref_voice)
    assert gen.prefix_stats()["hits"] == after["hits"] + 1
