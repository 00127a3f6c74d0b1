"""How far int8 weights move the model: the same prompt, greedy, through the unquantized and the int8 weights of one
dtype. Two numbers go into the profile: the share of equal codes over `divergence_frames` frames (greedy decoding
compounds a single flipped code, so this is strict) and the cosine of the codebook-0 logits after the prompt (how
close the distributions are before anything compounds). The rule (choice.py) refuses int8 past the plan's bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from csm_runtime.engine.generator import StreamingGenerator
from csm_runtime.tuning.plan import Plan
from csm_runtime.tuning.profile import Divergence


@dataclass
class Reference:
    setting: str  # e.g. `bfloat16/off/no-graphs`
    codes: np.ndarray  # [frames, 32] greedy codes
    logits: torch.Tensor  # [vocab] float32 codebook-0 logits after the prompt


@torch.no_grad()
def reference_sample(gen: StreamingGenerator, plan: Plan, setting: str) -> Reference:
    """Greedy codes of `plan.prompt` and the codebook-0 logits after its prefill, on an idle generator."""
    codes = gen.frame_codes(plan.prompt, frames=plan.divergence_frames)
    hidden = gen.frame.prefill(0, gen.build_prompt(plan.prompt, 0, ()))
    logits = gen.loaded.model.lm_head(hidden).float().cpu()
    return Reference(setting, codes, logits)


def divergence(ref: Reference, got: Reference, plan: Plan) -> Divergence:
    n = min(len(ref.codes), len(got.codes))
    agreement = float((ref.codes[:n] == got.codes[:n]).mean()) if n else 0.0
    cosine = float(torch.nn.functional.cosine_similarity(ref.logits, got.logits, dim=0))
    return Divergence(
        reference=ref.setting,
        frames=max(n, 1),
        codes_agreement=round(agreement, 4),
        logit_cosine=round(cosine, 6),
        within_bound=agreement >= plan.min_codes_agreement and cosine >= plan.min_logit_cosine,
    )
