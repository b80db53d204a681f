"""LTX-2 (``LTX2VideoTransformer3DModel``, audio + video).

Each block runs the video and the audio stream side by side: ``transformer_blocks.N.attn1``
is self-attention over the video tokens only (no text in its sequence) and is the only
attention sparsified; ``audio_attn1`` (audio self-attention), ``attn2``/``audio_attn2``
(text cross-attention) and ``audio_to_video_attn``/``video_to_audio_attn`` (cross-modal)
stay dense. ``LTX2AudioVideoAttnProcessor`` and ``LTX2PerturbedAttnProcessor`` call
``dispatch_attention_fn``. The video input is already packed ``[B, S, C]``; the grid comes
from the ``num_frames``, ``height`` and ``width`` forward arguments (latent sizes) over
``patch_size_t`` / ``patch_size``, and must account for every video token. Forwards that
append reference tokens to the video (IC-LoRA, with ``video_self_attention_mask``) or that
pass tiles through ``video_coords`` alone are refused: neither is one grid the arguments name.
"""

from . import Adapter, ceil_div, config_patch, layer_names, register, require


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    if bound.get("video_self_attention_mask") is not None:
        raise ValueError("LTX2VideoTransformer3DModel: video_self_attention_mask is set (reference tokens appended to "
                         "the video, IC-LoRA); dit_sparse supports video self-attention over one token grid only; "
                         "call without video_self_attention_mask")
    f, h, w = (int(require(bound, name, model)) for name in ("num_frames", "height", "width"))
    pt, ph, pw = config_patch(model)
    grid = (ceil_div(f, pt), ceil_div(h, ph), ceil_div(w, pw))
    if grid[0] * grid[1] * grid[2] != x.shape[1]:
        raise ValueError(f"LTX2VideoTransformer3DModel: num_frames={f}, height={h}, width={w} make a {grid} grid of "
                         f"{grid[0] * grid[1] * grid[2]} tokens but hidden_states has {x.shape[1]} video tokens "
                         "(conditioning tokens appended to the video are not supported)")
    return grid


LTX2 = register(Adapter(
    family="ltx2",
    model_class="LTX2VideoTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_ltx2",
    text_position=None,
    grid=_grid,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn1"),
))
