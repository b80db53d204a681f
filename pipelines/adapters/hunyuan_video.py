"""HunyuanVideo (``HunyuanVideoTransformer3DModel``).

Joint attention in ``transformer_blocks.N.attn`` (dual stream) and
``single_transformer_blocks.N.attn``: video tokens first, then the text tokens, padded to a
fixed length; the model passes a ``[B, 1, 1, S]`` boolean key mask that drops the padding,
which becomes ``key_mask``. The text refiner's attention (text only) stays dense.
Input ``[B, C, F, H, W]`` with ``patch_size`` and ``patch_size_t``.
"""

from . import Adapter, encoder_len, hidden_states_grid, layer_names, register

HUNYUAN_VIDEO = register(Adapter(
    family="hunyuan_video",
    model_class="HunyuanVideoTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_hunyuan_video",
    text_position="last",
    grid=hidden_states_grid("BCFHW"),
    text_len=encoder_len,
    is_self_attention=layer_names(r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"),
))
