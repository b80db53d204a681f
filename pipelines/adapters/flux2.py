"""FLUX.2 (``Flux2Transformer2DModel``).

Joint attention in ``transformer_blocks.N.attn`` and ``single_transformer_blocks.N.attn``
(``Flux2AttnProcessor``, ``Flux2ParallelSelfAttnProcessor``, both calling
``dispatch_attention_fn``): text first, then the image. The image arrives packed
``[B, S, C]``; its grid is read from ``img_ids`` (rows ``(t, y, x, l)``), ``T = 1``.
Reference images for editing are appended after the target image with their own ``t``
coordinate, and the reference KV cache (``kv_cache_mode``) attends them causally; neither
is one token grid, so such forwards are refused.
"""

from . import Adapter, encoder_len, layer_names, register, require


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    if bound.get("kv_cache_mode") is not None or int(bound.get("num_ref_tokens") or 0):
        raise ValueError(f"Flux2Transformer2DModel: kv_cache_mode={bound.get('kv_cache_mode')!r} (reference-image KV "
                         "cache) is not supported by dit_sparse; call without reference images")
    ids = require(bound, "img_ids", model)
    if ids.dim() == 3:
        ids = ids[0]
    frames = ids[:, 0].unique().numel()
    h = int(ids[:, 1].max().item()) + 1
    w = int(ids[:, 2].max().item()) + 1
    if frames != 1 or h * w != x.shape[1]:
        raise ValueError(f"Flux2Transformer2DModel: img_ids describe {frames} image(s) on a {h}x{w} grid but "
                         f"hidden_states has {x.shape[1]} image tokens (reference images appended to the sequence "
                         "are not supported)")
    return (1, h, w)


FLUX2 = register(Adapter(
    family="flux2",
    model_class="Flux2Transformer2DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_flux2",
    text_position="first",
    grid=_grid,
    text_len=encoder_len,
    is_self_attention=layer_names(r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn"),
))
