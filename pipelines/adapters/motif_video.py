"""Motif-Video (``MotifVideoTransformer3DModel``).

A HunyuanVideo-style stack: joint attention in the dual-stream ``transformer_blocks.N.attn``
and the single-stream ``single_transformer_blocks.N.attn`` (``MotifVideoAttnProcessor2_0``,
calling ``dispatch_attention_fn``), video tokens first, then the conditioning tokens: the
projected first-frame image embeddings (``image_embeds``, image to video) followed by the
text. Padded text comes as a ``[B, 1, 1, S]`` key mask, which the runtime reads as a key mask.
The optional text cross-attention ``cross_attn`` stays dense. Input ``[B, C, F, H, W]`` with
``patch_size`` and ``patch_size_t``. Configs with ``num_decoder_layers > 0`` are refused: their
decoder layers attend over the video tokens plus the encoder's output tokens (a second copy of
the grid), which no token layout expresses.
"""

from . import Adapter, hidden_states_grid, layer_names, register, require

_grid = hidden_states_grid("BCFHW")


def _motif_grid(model, bound):
    decoder = int(getattr(model.config, "num_decoder_layers", 0) or 0)
    if decoder > 0:
        raise ValueError(f"MotifVideoTransformer3DModel with num_decoder_layers={decoder}: its decoder layers attend "
                         "over the video tokens plus the encoder's output tokens (two copies of the grid); dit_sparse "
                         "supports only num_decoder_layers=0")
    return _grid(model, bound)


def _text_len(model, bound):
    image = bound.get("image_embeds")
    text = int(require(bound, "encoder_hidden_states", model).shape[1])
    return text + (int(image.shape[1]) if image is not None else 0)


MOTIF_VIDEO = register(Adapter(
    family="motif_video",
    model_class="MotifVideoTransformer3DModel",
    core="dispatch",
    core_module="diffusers.models.transformers.transformer_motif_video",
    text_position="last",
    grid=_motif_grid,
    text_len=_text_len,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn", r"single_transformer_blocks\.\d+\.attn"),
))
