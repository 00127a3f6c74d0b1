"""A moshi Mimi's weights copied into transformers' MimiModel, so the two implementations can be compared on the
same weights (the prompt reference test encodes context audio with both).

The layouts differ only in names, in moshi's packed q/k/v projection, and in how rotary embeddings pair the channels
of a head: moshi rotates adjacent pairs (2i, 2i+1), transformers rotates the two halves (i, i + d/2), so q and k rows
are reordered per head.
"""

from __future__ import annotations

import torch
from transformers import MimiConfig, MimiModel

# moshi name piece -> transformers name piece, applied in order to every state-dict key.
_RENAMES = (
    ("conv.conv.conv.", "conv."),
    ("convtr.convtr.convtr.", "conv."),
    ("conv.conv.", "conv."),
    ("convtr.convtr.", "conv."),
    ("quantizer.rvq_first.vq.", "quantizer.semantic_residual_vector_quantizer."),
    ("quantizer.rvq_first.", "quantizer.semantic_residual_vector_quantizer."),
    ("quantizer.rvq_rest.vq.", "quantizer.acoustic_residual_vector_quantizer."),
    ("quantizer.rvq_rest.", "quantizer.acoustic_residual_vector_quantizer."),
    ("._codebook.", ".codebook."),
    ("._initialized", ".initialized"),
    (".embedding_sum", ".embed_sum"),
    ("encoder.model.", "encoder.layers."),
    ("decoder.model.", "decoder.layers."),
    ("encoder_transformer.transformer.", "encoder_transformer."),
    ("decoder_transformer.transformer.", "decoder_transformer."),
    (".linear1.", ".mlp.fc1."),
    (".linear2.", ".mlp.fc2."),
    (".self_attn.out_projs.0.", ".self_attn.o_proj."),
    (".norm1.", ".input_layernorm."),
    (".norm2.", ".post_attention_layernorm."),
    (".layer_scale_1.", ".self_attn_layer_scale."),
    (".layer_scale_2.", ".mlp_layer_scale."),
)


def mimi_config_from_moshi(cfg: dict) -> MimiConfig:
    """transformers' MimiConfig for a moshi Mimi config dict (moshi's `loaders._mimi_config` layout)."""
    seanet, quant, tr = cfg["seanet"], cfg["quantizer"], cfg["transformer"]
    return MimiConfig(
        sampling_rate=cfg["sample_rate"],
        hidden_size=seanet["dimension"],
        num_filters=seanet["n_filters"],
        num_residual_layers=seanet["n_residual_layers"],
        upsampling_ratios=list(seanet["ratios"]),
        kernel_size=seanet["kernel_size"],
        last_kernel_size=seanet["last_kernel_size"],
        residual_kernel_size=seanet["residual_kernel_size"],
        dilation_growth_rate=seanet["dilation_base"],
        compress=seanet["compress"],
        codebook_size=quant["bins"],
        codebook_dim=quant["dimension"],
        vector_quantization_hidden_dimension=quant["dimension"],
        num_quantizers=quant["n_q"],
        upsample_groups=seanet["dimension"],
        num_hidden_layers=tr["num_layers"],
        intermediate_size=tr["dim_feedforward"],
        num_attention_heads=tr["num_heads"],
        num_key_value_heads=tr["num_heads"],
        sliding_window=tr["context"],
        rope_theta=tr["max_period"],
        layer_scale_initial_scale=tr["layer_scale"],
    )


def hf_mimi_from_moshi(mimi, cfg: dict) -> MimiModel:
    """A transformers MimiModel holding `mimi`'s weights (a moshi MimiModel built from `cfg`), eval mode."""
    config = mimi_config_from_moshi(cfg)
    heads, width = config.num_attention_heads, config.hidden_size

    def halves_order(w: torch.Tensor) -> torch.Tensor:  # rows of one projection, per head: pairs -> halves
        return w.view(heads, width // heads // 2, 2, width).transpose(1, 2).reshape(width, width)

    state = {}
    for key, value in mimi.state_dict().items():
        for old, new in _RENAMES:
            key = key.replace(old, new)
        if key.endswith(".self_attn.in_projs.0.weight"):
            q, k, v = value.chunk(3)
            base = key.removesuffix("in_projs.0.weight")
            state[base + "q_proj.weight"] = halves_order(q)
            state[base + "k_proj.weight"] = halves_order(k)
            state[base + "v_proj.weight"] = v
        else:
            state[key] = value
    model = MimiModel(config)
    model.load_state_dict(state, strict=True)  # every weight placed, none left over
    return model.to(next(mimi.parameters()).device).eval()


def spread_codebooks(mimi, scale: float = 0.02) -> None:
    """Shrink a random Mimi's codebooks to the scale of its latents. codec.py fills them with N(0, 1) while the
    random encoder's latents are ~0.02, so every frame would pick the same codes and no comparison could fail."""
    with torch.no_grad():
        for mod in mimi.modules():
            if hasattr(mod, "embedding_sum") and hasattr(mod, "cluster_usage"):
                mod.embedding_sum.mul_(scale)
                mod._embedding = None
