"""JoyImage Edit (``JoyImageEditTransformer3DModel``).

Double-stream joint attention in ``double_blocks.N.attn`` (``JoyImageAttnProcessor``, calling
``dispatch_attention_fn`` without a mask): image tokens first, then all text tokens. The input
is ``[B, C, F, H, W]`` or, for editing, ``[B, N, C, F, H, W]``: the ``N`` items (reference
images and the target) are stacked along the frame axis into one ``N * F`` frame grid before
the 3D ``patch_size`` patchifies it, so self-attention still runs over one grid. The
``JoyImageEditPlusTransformer3DModel`` variant packs items of different sizes and is refused.
"""

from . import Adapter, config_patch, layer_names, patchified_grid, register, require


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    if x.dim() == 6:
        f, h, w = x.shape[1] * x.shape[3], x.shape[4], x.shape[5]
    elif x.dim() == 5:
        f, h, w = x.shape[2:]
    else:
        raise ValueError(f"JoyImageEditTransformer3DModel: hidden_states has shape {tuple(x.shape)}; dit_sparse "
                         "expects 5 dimensions (B, C, F, H, W) or 6 (B, N, C, F, H, W)")
    return patchified_grid((f, h, w), config_patch(model))


def _text_len(model, bound):
    return int(require(bound, "encoder_hidden_states", model).shape[1])


JOYIMAGE_EDIT = register(Adapter(
    family="joyimage_edit",
    model_class="JoyImageEditTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_joyimage",
    text_position="last",
    grid=_grid,
    text_len=_text_len,
    is_self_attention=layer_names(r"double_blocks\.\d+\.attn"),
))
