"""Allegro (``AllegroTransformer3DModel``).

Self-attention ``transformer_blocks.N.attn1`` holds video tokens only (text enters through
the cross-attention ``attn2``). ``AllegroAttnProcessor2_0`` calls
``F.scaled_dot_product_attention`` in ``diffusers.models.attention_processor``. Input
``[B, C, F, H, W]``, patchified frame by frame into ``(F, H / p, W / p)`` tokens. A
self-attention ``attention_mask`` (a per-video-token mask, which Allegro's pipeline never
passes) is refused: the processor repeats it per head, which is not a key padding mask.
"""

from . import Adapter, hidden_states_grid, layer_names, register, require

_patchified = hidden_states_grid("BCFHW")


def _grid(model, bound):
    require(bound, "hidden_states", model)
    if bound.get("attention_mask") is not None:
        raise ValueError("AllegroTransformer3DModel: attention_mask (a self-attention mask over video tokens) is "
                         "not supported by dit_sparse; call without it, as AllegroPipeline does")
    return _patchified(model, bound)


ALLEGRO = register(Adapter(
    family="allegro",
    model_class="AllegroTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.attention_processor",
    text_position=None,
    grid=_grid,
    is_self_attention=layer_names(r"transformer_blocks\.\d+\.attn1"),
))
