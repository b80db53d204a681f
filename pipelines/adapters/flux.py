"""FLUX.1 (``FluxTransformer2DModel``).

Joint attention in ``transformer_blocks.N.attn`` and ``single_transformer_blocks.N.attn``:
text first, then the image. The image arrives packed ``[B, S, C]``; its ``(H, W)`` token
grid is read from ``img_ids`` (rows ``(0, y, x)``), ``T = 1``. ``FluxAttnProcessor`` calls
``dispatch_attention_fn``.
"""

from . import Adapter, encoder_len, layer_names, register, require


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    ids = require(bound, "img_ids", model)
    if ids.dim() == 3:  # deprecated batched form [B, S, 3]
        ids = ids[0]
    h = int(ids[:, 1].max().item()) + 1
    w = int(ids[:, 2].max().item()) + 1
    if h * w != x.shape[1]:
        raise ValueError(f"FluxTransformer2DModel: img_ids describe a {h}x{w} grid but hidden_states has "
                         f"{x.shape[1]} image tokens (extra reference images are not supported)")
    return (1, h, w)


FLUX = register(Adapter(
    family="flux",
    model_class="FluxTransformer2DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_flux",
    text_position="first",
    grid=_grid,
    text_len=encoder_len,
    is_self_attention=layer_names(r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"),
))
