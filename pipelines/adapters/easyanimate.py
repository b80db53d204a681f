"""EasyAnimate V5.1 (``EasyAnimateTransformer3DModel``).

Joint attention in ``transformer_blocks.N.attn1``: the text (the first encoder's tokens,
then the optional T5 tokens) first, then the video. ``EasyAnimateAttnProcessor2_0`` calls
``F.scaled_dot_product_attention``, ``F`` being a global of ``transformer_easyanimate``.
Input ``[B, C, F, H, W]``, patchified frame by frame with a spatial ``patch_size``.
"""

from . import Adapter, encoder_len, hidden_states_grid, layer_names, register


def _text_len(model, bound):
    t5 = bound.get("encoder_hidden_states_t5")
    return encoder_len(model, bound) + (0 if t5 is None else int(t5.shape[1]))


EASYANIMATE = register(Adapter(
    family="easyanimate",
    model_class="EasyAnimateTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.transformers.transformer_easyanimate",
    text_position="first",
    grid=hidden_states_grid("BCFHW"),
    text_len=_text_len,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn1"),
))
