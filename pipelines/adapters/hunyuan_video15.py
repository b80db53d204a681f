"""HunyuanVideo 1.5 (``HunyuanVideo15Transformer3DModel``).

Joint attention in ``transformer_blocks.N.attn`` (``HunyuanVideo15AttnProcessor2_0``, calling
``dispatch_attention_fn``): video tokens first, then the conditioning tokens. The model
concatenates three streams per sample, the projected image embedding (``image_embeds``; all
zero means text-to-video and its tokens are masked), the ByT5 glyph text
(``encoder_hidden_states_2``) and the MLLM text (``encoder_hidden_states``), reordered as
``[valid image, valid ByT5, valid MLLM, padding...]``; so the joint text length is the sum of
the three lengths and only the padding mask differs per sample. The processor turns that
mask into a ``[B, 1, S, S]`` ``keep[q] & keep[k]`` mask, which the runtime reduces to a key
mask. The text refiner's attention (text only) stays dense. Input ``[B, C, F, H, W]`` with
``patch_size`` and ``patch_size_t``.
"""

import re

from . import Adapter, register, require

_SELF = re.compile(r"^transformer_blocks\.\d+\.attn$")


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    p, pt = model.config.patch_size, model.config.patch_size_t
    _, _, f, h, w = x.shape
    return (f // pt, h // p, w // p)


def _text_len(model, bound):
    return sum(int(require(bound, name, model).shape[1])
               for name in ("encoder_hidden_states", "encoder_hidden_states_2", "image_embeds"))


HUNYUAN_VIDEO15 = register(Adapter(
    family="hunyuan_video15",
    model_class="HunyuanVideo15Transformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_hunyuan_video15",
    text_position="last",
    grid=_grid,
    text_len=_text_len,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
