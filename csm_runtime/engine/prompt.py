"""The prompt CSM was trained on, as backbone input rows: context segments (text, then their audio frames and the
audio-eos frame), then the request's text, laid out as transformers' CSM chat template (processing_csm.py) does.

A text segment is `<|begin_of_text|>[speaker]text<|end_of_text|>`; a segment with audio adds one `<|AUDIO|>` row per
Mimi frame, whose embedding is the frame's codes, and one `<|audio_eos|>` row, whose embedding is the all-eos frame
(every codebook `codebook_eos_token_id`, 0 for CSM-1B). Context that does not fit `max_context_frames` is dropped
oldest first. `rows` gives the ids and codes token for token as transformers' CsmProcessor and
`_merge_input_ids_with_input_values` make them (tests/unit/test_prompt_reference.py compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from csm_runtime.engine.codec import MimiCodec
from csm_runtime.engine.frame import FrameModel
from csm_runtime.engine.model import LoadedModel, special_ids
from csm_runtime.engine.types import Segment


@dataclass
class PromptRows:
    """One prompt, one entry per backbone row."""

    tokens: list[int]  # text token id; `<|AUDIO|>` on an audio frame's row, `<|audio_eos|>` on the eos frame's
    codes: torch.Tensor  # [T, num_codebooks] the row's audio codes; zeros on text rows (not read there)
    is_audio: torch.Tensor  # [T] bool: the row is embedded from its codes, not from its token
    boundaries: list[int]  # the row after each kept context segment (its end): where a reusable prefix may stop


class PromptBuilder:
    """Text and context segments -> prompt rows, and their embeddings [T, H] on the model's device."""

    def __init__(self, loaded: LoadedModel, codec: MimiCodec, frame: FrameModel, max_context_frames: int) -> None:
        self.tokenizer = loaded.tokenizer
        self.ids = special_ids(loaded)
        self.ncb = loaded.config.num_codebooks
        self.eos_code = loaded.config.codebook_eos_token_id
        self.codec = codec
        self.frame = frame
        self.max_context_frames = max_context_frames

    def text_rows(self, text: str, speaker: int) -> list[int]:
        """Token ids of one text segment: `<|begin_of_text|>[speaker]text<|end_of_text|>`."""
        ids = self.tokenizer.encode(f"[{speaker}]{text}", add_special_tokens=False)
        return [self.ids["bos"], *ids, self.ids["eos"]]

    def _frames(self, seg: Segment) -> torch.Tensor | None:
        """The segment's codes [32, T] on the host: its stored codes, else its audio encoded now, else None."""
        if seg.codes is not None:
            codes = torch.as_tensor(seg.codes, dtype=torch.long).cpu()
            if codes.dim() != 2 or codes.shape[0] != self.ncb or codes.shape[1] < 1:
                raise ValueError(f"context segment codes must be [{self.ncb}, frames], got {tuple(codes.shape)}")
            return codes
        return self.codec.encode(seg.audio).cpu() if seg.audio is not None else None

    def rows(self, text: str, speaker: int, context: Sequence[Segment]) -> PromptRows:
        """The kept context segments then the request text, as rows. Raises ValueError on bad context."""
        tokens, codes, is_audio, boundaries = [], [], [], []

        def add_text(ids):
            tokens.extend(ids)
            codes.extend([torch.zeros(self.ncb, dtype=torch.long)] * len(ids))
            is_audio.extend([False] * len(ids))

        encoded = []
        for seg in context:
            if not isinstance(seg, Segment):
                raise ValueError("context must be a sequence of Segment")
            if not seg.text.strip():
                raise ValueError("context segment text is empty")
            frames = self._frames(seg)
            encoded.append((seg, frames))
        # Keep the newest segments that fit in max_context_frames (oldest dropped first).
        budget, kept = self.max_context_frames, []
        for seg, frames in reversed(encoded):
            n = 0 if frames is None else frames.shape[1] + 1
            if n > budget:
                break
            budget -= n
            kept.append((seg, frames))
        for seg, frames in reversed(kept):
            add_text(self.text_rows(seg.text, seg.speaker))
            if frames is not None:
                tokens.extend([self.ids["audio"]] * frames.shape[1] + [self.ids["audio_eos"]])
                codes.extend(list(frames.T))
                codes.append(torch.full((self.ncb,), self.eos_code, dtype=torch.long))
                is_audio.extend([True] * (frames.shape[1] + 1))
            boundaries.append(len(tokens))
        add_text(self.text_rows(text, speaker))
        return PromptRows(tokens, torch.stack(codes), torch.tensor(is_audio), boundaries)

    def embed(self, r: PromptRows, device: torch.device, start: int = 0) -> torch.Tensor:
        """Embeddings [T - start, H] of rows start: of `r`."""
        tokens = torch.tensor(r.tokens[start:], device=device)
        return self.frame.embed_prompt(tokens, r.codes[start:].to(device), r.is_audio[start:].to(device))

    def build(self, text: str, speaker: int, context: Sequence[Segment], device: torch.device) -> torch.Tensor:
        """Embeddings [T, H] of the kept context segments then the request text. Raises ValueError on bad context."""
        return self.embed(self.rows(text, speaker, context), device)
