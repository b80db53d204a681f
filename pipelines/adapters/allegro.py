"""Allegro (``AllegroTransformer3DModel``).

Self-attention ``transformer_blocks.N.attn1`` holds video tokens only (text enters through
the cross-attention ``attn2``). ``AllegroAttnProcessor2_0`` calls
``F.scaled_dot_product_attention`` in ``diffusers.models.attention_processor``. Input
``[B, C, F, H, W]``, patchified frame by frame into ``(F, H / p, W / p)`` tokens. A
self-attention ``attention_mask`` (a per-video-token mask, which Allegro's pipeline never
passes) is refused: the processor repeats it per head, which is not a key padding mask.
"""

import re

from . import Adapter, register, require

_SELF = re.compile(r"^transformer_blocks\.\d+\.attn1$")


def _grid(model, bound):
    x = require(bound, "hidden_states", model)
    if bound.get("attention_mask") is not None:
        raise ValueError("AllegroTransformer3DModel: attention_mask (a self-attention mask over video tokens) is "
                         "not supported by dit_sparse; call without it, as AllegroPipeline does")
    p, pt = model.config.patch_size, model.config.patch_size_t
    _, _, f, h, w = x.shape
    return (f // pt, h // p, w // p)


ALLEGRO = register(Adapter(
    family="allegro",
    model_class="AllegroTransformer3DModel",
    core="sdpa",
    core_module="diffusers.models.attention_processor",
    text_position=None,
    grid=_grid,
    is_self_attention=lambda name, module: bool(_SELF.match(name)),
))
