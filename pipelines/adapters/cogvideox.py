"""CogVideoX 1.0 / 1.5 (``CogVideoXTransformer3DModel``).

Joint attention in ``transformer_blocks.N.attn1``: text first, then video.
``CogVideoXAttnProcessor2_0`` calls ``F.scaled_dot_product_attention`` directly, so the
intercepted name is ``F`` in ``diffusers.models.attention_processor``. Input
``[B, F, C, H, W]``; CogVideoX 1.5 patches time too (``patch_size_t``, frames rounded up).
"""

from . import Adapter, encoder_len, hidden_states_grid, layer_names, register

COGVIDEOX = register(Adapter(
    family="cogvideox",
    model_class="CogVideoXTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.attention_processor",
    text_position="first",
    grid=hidden_states_grid("BFCHW", ceil_frames=True),
    text_len=encoder_len,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn1"),
))
