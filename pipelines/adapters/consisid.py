"""ConsisID (``ConsisIDTransformer3DModel``), a CogVideoX 1.0 derivative for identity-preserving video.

Joint attention in ``transformer_blocks.N.attn1``: text first, then video, through
``CogVideoXAttnProcessor2_0``, which calls ``F.scaled_dot_product_attention`` in
``diffusers.models.attention_processor``. The face perceiver cross-attention
(``perceiver_cross_attention``) stays dense. Input ``[B, F, C, H, W]``, spatial
``patch_size`` only.
"""

from . import Adapter, encoder_len, hidden_states_grid, layer_names, register

CONSISID = register(Adapter(
    family="consisid",
    model_class="ConsisIDTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.attention_processor",
    text_position="first",
    grid=hidden_states_grid("BFCHW"),
    text_len=encoder_len,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn1"),
))
