"""LTX-Video (``LTXVideoTransformer3DModel``).

Self-attention ``transformer_blocks.N.attn1`` holds video tokens only (``attn2`` is
cross-attention). The input is already packed ``[B, S, C]``; the grid comes from the
``num_frames``, ``height`` and ``width`` forward arguments (latent sizes) divided by
``patch_size_t`` / ``patch_size``. ``LTXVideoAttnProcessor`` calls ``dispatch_attention_fn``.
"""

from . import Adapter, config_patch, layer_names, patchified_grid, register, require


def _grid(model, bound):
    sizes = tuple(int(require(bound, name, model)) for name in ("num_frames", "height", "width"))
    return patchified_grid(sizes, config_patch(model))


LTX = register(Adapter(
    family="ltx",
    model_class="LTXVideoTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_ltx",
    text_position=None,
    grid=_grid,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn1"),
))
