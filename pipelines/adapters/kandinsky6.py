"""Kandinsky 6 (``Kandinsky6Transformer3DModel``, text/image to video and audio).

Each fused block ``visual_transformer_blocks.N`` runs a video and an audio decoder block side
by side; ``visual_transformer_blocks.N.video_dec_block.self_attention`` is unmasked
self-attention over the video tokens only and is the only attention sparsified. The video
text cross-attention, the audio self- and cross-attention, the cross-modal
``va_cross_attention``/``av_cross_attention`` and the text encoder blocks stay dense.
``Kandinsky6AttnProcessor`` calls ``dispatch_attention_fn``. The input is channels-last
``[B, T, H, W, C]`` with a 3D ``patch_size``; an appended reference frame (image to video) is
one more frame of the grid. The super-resolution model ``Kandinsky6SRTransformer3DModel`` is
refused (it brings its own sparse attention).
"""

from . import Adapter, config_patch, layer_names, patchified_grid, register, require


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    if x.dim() != 5:
        raise ValueError(f"Kandinsky6Transformer3DModel: hidden_states has shape {tuple(x.shape)}; dit_sparse expects "
                         "5 dimensions (B, T, H, W, C)")
    return patchified_grid(tuple(x.shape[1:4]), config_patch(model))


KANDINSKY6 = register(Adapter(
    family="kandinsky6",
    model_class="Kandinsky6Transformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_kandinsky6",
    text_position=None,
    grid=_grid,
    is_self_attention=layer_names(r"visual_transformer_blocks\.\d+\.video_dec_block\.self_attention"),
))
