"""Classes built on Wan's blocks: WanVACE, WanAnimate, SkyReels-V2, ChronoEdit and AnyFlow.

All five patchify the latent with a 3D ``patch_size`` exactly like Wan, and their
self-attention (``attn1`` of each block) holds video tokens only; text and image tokens
enter through the cross-attention ``attn2``. Each class's ``WanAttention`` processor calls
``dispatch_attention_fn``, looked up in the module that defines the processor:

* ``WanVACETransformer3DModel`` reuses ``transformer_wan``'s processor; its control branch
  ``vace_blocks.N.attn1`` attends over the same grid (control tokens, zero-padded to the
  video's length) and is sparsified too.
* ``WanAnimateTransformer3DModel``: the grid includes the reference frame (``T + 1``
  latent frames); the face adapter (``face_adapter.N``) is per-frame cross-attention to
  face-motion tokens and stays dense.
* ``SkyReelsV2Transformer3DModel``: with ``num_frame_per_block > 1`` (autoregressive
  diffusion forcing) the model passes a block-causal ``[S, S]`` mask to self-attention,
  which no dit-sparse pattern expresses; such forwards are refused with an error.
* ``ChronoEditTransformer3DModel``: a Wan copy whose temporal RoPE skips frames; the token
  grid is unchanged.
* ``AnyFlowTransformer3DModel``: the bidirectional AnyFlow flow-map model (a Wan 2.1 backbone
  with a dual-timestep embedding); its input is ``[B, F, C, H, W]`` (frames before channels).
  Its causal sibling ``AnyFlowFARTransformer3DModel`` is refused (see ``REFUSED``).
"""

from . import Adapter, hidden_states_grid, layer_names, register

_grid = hidden_states_grid("BCFHW")


def _skyreels_grid(model, bound):
    per_block = int(getattr(model.config, "num_frame_per_block", 1) or 1)
    if per_block > 1:
        raise ValueError(f"SkyReelsV2Transformer3DModel with num_frame_per_block={per_block} passes a block-causal "
                         "mask to self-attention (autoregressive diffusion forcing); dit_sparse supports only "
                         "num_frame_per_block=1, where self-attention is unmasked")
    return _grid(model, bound)


def _wan_like(family: str, model_class: str, module: str, *, grid=_grid, layers=(r"blocks\.\d+\.attn1",)) -> Adapter:
    """A Wan-derived class: video-only self-attention, ``dispatch_attention_fn`` looked up in
    ``diffusers.models.transformers.<module>``."""
    return register(Adapter(family=family, model_class=model_class, core="dispatch",
                            core_module=f"diffusers.models.transformers.{module}", text_position=None, grid=grid,
                            is_self_attention=layer_names(*layers)))


WAN_VACE = _wan_like("wan_vace", "WanVACETransformer3DModel", "transformer_wan",
                     layers=(r"blocks\.\d+\.attn1", r"vace_blocks\.\d+\.attn1"))
WAN_ANIMATE = _wan_like("wan_animate", "WanAnimateTransformer3DModel", "transformer_wan_animate")
SKYREELS_V2 = _wan_like("skyreels_v2", "SkyReelsV2Transformer3DModel", "transformer_skyreels_v2", grid=_skyreels_grid)
CHRONOEDIT = _wan_like("chronoedit", "ChronoEditTransformer3DModel", "transformer_chronoedit")
ANYFLOW = _wan_like("anyflow", "AnyFlowTransformer3DModel", "transformer_anyflow", grid=hidden_states_grid("BFCHW"))
