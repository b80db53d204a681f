"""Qwen-Image (``QwenImageTransformer2DModel``).

Joint attention in ``transformer_blocks.N.attn`` (``QwenDoubleStreamAttnProcessor2_0``):
text first, then the image; the text padding mask (``encoder_hidden_states_mask``) becomes
a ``[B, 1, 1, S]`` key mask. The processor calls ``dispatch_attention_fn``. The image
arrives packed ``[B, S, C]``; its grid ``(1, H, W)`` is the forward's ``img_shapes``.
Qwen-Image-Edit appends reference-image tokens after the target image (several
``img_shapes`` per sample); that sequence is not one grid and is refused.
"""

from . import Adapter, encoder_len, layer_names, register, require


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    shapes = require(bound, "img_shapes", model)
    per_sample = [list(s) if isinstance(s, list) else [s] for s in shapes]
    if any(len(s) != 1 for s in per_sample):
        raise ValueError(f"QwenImageTransformer2DModel: img_shapes={shapes!r} holds several images per sample "
                         "(edit reference images appended to the sequence); dit_sparse supports one image grid")
    grids = {tuple(int(n) for n in s[0]) for s in per_sample}
    if len(grids) != 1:
        raise ValueError(f"QwenImageTransformer2DModel: img_shapes={shapes!r} differ across the batch")
    grid = grids.pop()
    if grid[0] * grid[1] * grid[2] != x.shape[1]:
        raise ValueError(f"QwenImageTransformer2DModel: img_shapes={shapes!r} describe {grid} but hidden_states has "
                         f"{x.shape[1]} image tokens")
    return grid


QWENIMAGE = register(Adapter(
    family="qwenimage",
    model_class="QwenImageTransformer2DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_qwenimage",
    text_position="first",
    grid=_grid,
    text_len=encoder_len,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn"),
))
