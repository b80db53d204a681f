"""Mochi 1 (``MochiTransformer3DModel``).

Joint attention in ``transformer_blocks.N.attn1`` (``MochiAttention``): video first, then
the text. ``MochiAttnProcessor2_0`` drops the padded text tokens itself and calls
``F.scaled_dot_product_attention`` once per batch element, so the text length is read from
each call (``variable_text``). Input ``[B, C, F, H, W]``, spatial ``patch_size`` only.
"""

from . import Adapter, encoder_len, hidden_states_grid, layer_names, register

MOCHI = register(Adapter(
    family="mochi",
    model_class="MochiTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.attention_processor",
    text_position="last",
    grid=hidden_states_grid("BCFHW"),
    text_len=encoder_len,
    variable_text=True,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn1"),
))
