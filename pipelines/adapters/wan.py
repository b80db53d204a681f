"""Wan 2.1 / 2.2 (``WanTransformer3DModel``; Wan 2.2's second expert is ``pipe.transformer_2``).

Self-attention ``blocks.N.attn1`` holds video tokens only (text enters through the
cross-attention ``attn2``, never sparsified). ``WanAttnProcessor`` calls
``dispatch_attention_fn``. Input ``[B, C, F, H, W]``, ``patch_size = (pt, ph, pw)``.
"""

from . import Adapter, hidden_states_grid, layer_names, register

WAN = register(Adapter(
    family="wan",
    model_class="WanTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_wan",
    text_position=None,
    grid=hidden_states_grid("BCFHW"),
    is_self_attention=layer_names(r"blocks\.\d+\.attn1"),
))
