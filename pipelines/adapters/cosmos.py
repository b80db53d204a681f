"""Cosmos Predict (``CosmosTransformer3DModel``, Cosmos 1.0 and 2.x).

Self-attention ``transformer_blocks.N.attn1`` holds video tokens only, unmasked (text and
Cosmos 2.5's image context enter through the cross-attention ``attn2``).
``CosmosAttnProcessor2_0`` calls ``dispatch_attention_fn``. Input ``[B, C, F, H, W]``
with a 3D ``patch_size``; the condition and padding masks are extra input channels and do
not change the grid.
"""

from . import Adapter, hidden_states_grid, layer_names, register

COSMOS = register(Adapter(
    family="cosmos",
    model_class="CosmosTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_cosmos",
    text_position=None,
    grid=hidden_states_grid("BCFHW"),
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn1"),
))
