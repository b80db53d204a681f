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

from . import Adapter, hidden_states_grid, layer_names, register, require


def _text_len(model, bound):
    return sum(int(require(bound, name, model).shape[1])
               for name in ("encoder_hidden_states", "encoder_hidden_states_2", "image_embeds"))


HUNYUAN_VIDEO15 = register(Adapter(
    family="hunyuan_video15",
    model_class="HunyuanVideo15Transformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_hunyuan_video15",
    text_position="last",
    grid=hidden_states_grid("BCFHW"),
    text_len=_text_len,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn"),
))
