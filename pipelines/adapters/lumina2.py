"""Lumina-Image 2.0 (``Lumina2Transformer2DModel``).

The main ``layers.N.attn`` attend jointly over the valid caption tokens first, then the
image, and are sparsified; the two short refiners before them (``noise_refiner``, image
only, and ``context_refiner``, text only) stay dense. ``Lumina2AttnProcessor2_0`` calls
``F.scaled_dot_product_attention``, ``F`` a global of ``transformer_lumina2``. The model
drops padded caption tokens and packs each sample as ``[valid text, image, padding]``; when
the samples of a batch have different numbers of valid caption tokens the image starts at
a different offset in each, which is not one token layout, so such a forward is refused
(run such prompts in separate forwards). Input ``[B, C, H, W]``, ``T = 1``.
"""

from . import Adapter, hidden_states_grid, layer_names, register, require


def _text_len(model, bound):
    mask = require(bound, "encoder_attention_mask", model)
    lengths = sorted({int(n) for n in mask.bool().sum(dim=1).tolist()})
    if len(lengths) != 1:
        raise ValueError(f"Lumina2Transformer2DModel: encoder_attention_mask has {lengths} valid caption tokens "
                         "across the batch; the model packs each sample's image at a different offset then, which "
                         "dit_sparse cannot express as one layout; run samples with different prompt lengths in "
                         "separate forwards")
    return lengths[0]


LUMINA2 = register(Adapter(
    family="lumina2",
    model_class="Lumina2Transformer2DModel",
    core="sdpa",
    core_module="diffusers.models.transformers.transformer_lumina2",
    text_position="first",
    grid=hidden_states_grid("BCHW"),
    text_len=_text_len,
    is_self_attention=layer_names(r"layers\.\d+\.attn"),
))
