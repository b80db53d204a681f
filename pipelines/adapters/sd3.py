"""Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``).

Joint attention in ``transformer_blocks.N.attn`` (``JointAttnProcessor2_0``): image first,
then the text. SD3.5's dual-attention blocks add ``attn2``, image-only self-attention, also
sparsified. The processor calls ``F.scaled_dot_product_attention`` directly. Input
``[B, C, H, W]``, ``T = 1``.
"""

from . import Adapter, encoder_len, hidden_states_grid, layer_names, register

SD3 = register(Adapter(
    family="sd3",
    model_class="SD3Transformer2DModel",
    core="sdpa",
    core_module="diffusers.models.attention_processor",
    text_position="last",
    grid=hidden_states_grid("BCHW"),
    text_len=encoder_len,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn2?"),
))
