"""Tiny diffusers transformers of every supported family, built from small configs (no downloads).

``build(family)`` returns ``(model, inputs, grid)``: an fp32 model in eval mode, the forward
keyword arguments for a CFG-sized batch of 2, and the post-patchify grid the inputs make.
Grids are odd on purpose (3 x 5 x 7 and the like) so that no tile divides them.
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = ("wan", "hunyuan_video", "cogvideox", "ltx", "mochi", "flux", "sd3", "wan_vace", "wan_animate",
            "skyreels_v2", "chronoedit", "consisid", "allegro", "cosmos", "easyanimate",
            "qwenimage", "lumina2", "flux2", "hunyuan_video15", "ltx2", "anyflow", "joyimage_edit",
            "motif_video", "kandinsky6")

HEADS, HEAD_DIM = 4, 8


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=_gen(seed))


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return _BUILDERS[family]()


def _wan(class_name="WanTransformer3DModel", **config):
    """Wan and the classes built on its blocks (same config, same inputs); ``config`` adds to the config."""
    import diffusers

    m = getattr(diffusers, class_name)(patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
                                       in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                                       num_layers=2, rope_max_seq_len=32, **config)
    inputs = dict(hidden_states=_randn(2, 4, 3, 10, 14, seed=1), timestep=torch.tensor([700, 700]),
                  encoder_hidden_states=_randn(2, 6, 16, seed=2))
    return m.eval(), inputs, (3, 5, 7)


def _hunyuan_video():
    from diffusers import HunyuanVideoTransformer3DModel

    m = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=HEADS,
                                       attention_head_dim=HEAD_DIM, num_layers=1, num_single_layers=1,
                                       num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=False,
                                       text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 4:] = 0  # padded text in the first element
    inputs = dict(hidden_states=_randn(2, 4, 3, 10, 14, seed=1), timestep=torch.tensor([700, 700]),
                  encoder_hidden_states=_randn(2, 7, 16, seed=2), encoder_attention_mask=mask,
                  pooled_projections=_randn(2, 8, seed=3))
    return m.eval(), inputs, (3, 5, 7)


def _cogvideox(class_name="CogVideoXTransformer3DModel"):
    """CogVideoX and ConsisID, built on its blocks (same config, same inputs)."""
    import diffusers

    m = getattr(diffusers, class_name)(num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=4,
                                       out_channels=4, time_embed_dim=16, text_embed_dim=16, num_layers=2,
                                       sample_width=14, sample_height=10, sample_frames=9, patch_size=2,
                                       max_text_seq_length=6, use_rotary_positional_embeddings=True)
    inputs = dict(hidden_states=_randn(2, 3, 4, 10, 14, seed=1), timestep=torch.tensor([700, 700]),
                  encoder_hidden_states=_randn(2, 6, 16, seed=2))
    return m.eval(), inputs, (3, 5, 7)


def _ltx():
    from diffusers import LTXVideoTransformer3DModel

    m = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=HEADS,
                                   attention_head_dim=HEAD_DIM, cross_attention_dim=HEADS * HEAD_DIM, num_layers=2,
                                   caption_channels=16)
    grid = (3, 5, 7)
    inputs = dict(hidden_states=_randn(2, 3 * 5 * 7, 4, seed=1), encoder_hidden_states=_randn(2, 6, 16, seed=2),
                  timestep=torch.tensor([700, 700]), encoder_attention_mask=torch.ones(2, 6, dtype=torch.long),
                  num_frames=3, height=5, width=7)
    return m.eval(), inputs, grid


def _mochi():
    from diffusers import MochiTransformer3DModel

    m = MochiTransformer3DModel(patch_size=2, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=2,
                                pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=16,
                                max_sequence_length=8)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 5:] = 0  # the processor drops these tokens of the first element
    inputs = dict(hidden_states=_randn(2, 4, 3, 10, 14, seed=1), encoder_hidden_states=_randn(2, 8, 16, seed=2),
                  timestep=torch.tensor([700, 700]), encoder_attention_mask=mask)
    return m.eval(), inputs, (3, 5, 7)


def _image_ids(h, w, axes):
    """FLUX position ids of an ``h x w`` image, ``[h * w, axes]``: rows ``(0, y, x, 0...)``."""
    ids = torch.zeros(h, w, axes)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(-1, axes)


def _flux():
    from diffusers import FluxTransformer2DModel

    m = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                               attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=16,
                               pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
    h, w = 5, 7
    inputs = dict(hidden_states=_randn(2, h * w, 4, seed=1), encoder_hidden_states=_randn(2, 6, 16, seed=2),
                  pooled_projections=_randn(2, 8, seed=3), timestep=torch.tensor([0.7, 0.7]),
                  img_ids=_image_ids(h, w, 3), txt_ids=torch.zeros(6, 3))
    return m.eval(), inputs, (1, h, w)


def _sd3():
    from diffusers import SD3Transformer2DModel

    m = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=HEAD_DIM,
                              num_attention_heads=HEADS, joint_attention_dim=16, caption_projection_dim=HEADS * HEAD_DIM,
                              pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16, dual_attention_layers=(0,))
    inputs = dict(hidden_states=_randn(2, 4, 10, 14, seed=1), encoder_hidden_states=_randn(2, 6, 16, seed=2),
                  pooled_projections=_randn(2, 8, seed=3), timestep=torch.tensor([700, 700]))
    return m.eval(), inputs, (1, 5, 7)


def _wan_vace():
    m, inputs, grid = _wan("WanVACETransformer3DModel", vace_layers=[0], vace_in_channels=6)
    inputs["control_hidden_states"] = _randn(2, 6, 3, 10, 14, seed=3)
    return m, inputs, grid


def _wan_animate():
    from diffusers import WanAnimateTransformer3DModel

    m = WanAnimateTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
                                     in_channels=12, latent_channels=4, out_channels=4, text_dim=16, freq_dim=16,
                                     ffn_dim=32, num_layers=2, image_dim=None, rope_max_seq_len=32,
                                     motion_encoder_channel_sizes={"4": 8}, motion_encoder_size=4, motion_style_dim=8,
                                     motion_dim=4, motion_encoder_dim=8, face_encoder_hidden_dim=8,
                                     face_encoder_num_heads=2, inject_face_latents_blocks=2, motion_encoder_batch_size=8)
    inputs = dict(hidden_states=_randn(2, 12, 3, 10, 14, seed=1), timestep=torch.tensor([700, 700]),
                  encoder_hidden_states=_randn(2, 6, 16, seed=2), pose_hidden_states=_randn(2, 4, 2, 10, 14, seed=3),
                  face_pixel_values=_randn(2, 3, 5, 4, 4, seed=4))
    return m.eval(), inputs, (3, 5, 7)


def _allegro():
    from diffusers import AllegroTransformer3DModel

    m = AllegroTransformer3DModel(patch_size=2, patch_size_t=1, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
                                  in_channels=4, out_channels=4, num_layers=2, cross_attention_dim=HEADS * HEAD_DIM,
                                  sample_height=10, sample_width=14, sample_frames=3, caption_channels=16)
    inputs = dict(hidden_states=_randn(2, 4, 3, 10, 14, seed=1), timestep=torch.tensor([700, 700]),
                  encoder_hidden_states=_randn(2, 6, 16, seed=2))
    return m.eval(), inputs, (3, 5, 7)


def _cosmos():
    from diffusers import CosmosTransformer3DModel

    m = CosmosTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=HEADS, attention_head_dim=16,
                                 num_layers=2, text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 16, 16),
                                 patch_size=(1, 2, 2), concat_padding_mask=False)
    inputs = dict(hidden_states=_randn(2, 4, 3, 10, 14, seed=1), timestep=torch.tensor([0.7, 0.7]),
                  encoder_hidden_states=_randn(2, 6, 16, seed=2))
    return m.eval(), inputs, (3, 5, 7)


def _easyanimate():
    from diffusers import EasyAnimateTransformer3DModel

    m = EasyAnimateTransformer3DModel(num_attention_heads=HEADS, attention_head_dim=16, in_channels=4,
                                      out_channels=4, patch_size=2, sample_width=14, sample_height=10, num_layers=2,
                                      mmdit_layers=1, time_embed_dim=16, text_embed_dim=16, text_embed_dim_t5=12)
    inputs = dict(hidden_states=_randn(2, 4, 3, 10, 14, seed=1), timestep=torch.tensor([700, 700]),
                  encoder_hidden_states=_randn(2, 6, 16, seed=2), encoder_hidden_states_t5=_randn(2, 4, 12, seed=3))
    return m.eval(), inputs, (3, 5, 7)


def _qwenimage():
    from diffusers import QwenImageTransformer2DModel

    m = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                    attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=16,
                                    axes_dims_rope=(2, 2, 4))
    h, w = 5, 7
    inputs = dict(hidden_states=_randn(2, h * w, 16, seed=1), encoder_hidden_states=_randn(2, 6, 16, seed=2),
                  encoder_hidden_states_mask=torch.ones(2, 6, dtype=torch.long), timestep=torch.tensor([0.7, 0.7]),
                  img_shapes=[[(1, h, w)]] * 2)
    return m.eval(), inputs, (1, h, w)


def _lumina2():
    from diffusers import Lumina2Transformer2DModel

    m = Lumina2Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4,
                                  hidden_size=HEADS * HEAD_DIM, num_layers=2, num_refiner_layers=1,
                                  num_attention_heads=HEADS, num_kv_heads=HEADS, multiple_of=16, cap_feat_dim=16,
                                  axes_dim_rope=(2, 2, 4), axes_lens=(32, 16, 16))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[:, 6:] = 0  # the same number of valid text tokens in both elements
    inputs = dict(hidden_states=_randn(2, 4, 10, 14, seed=1), encoder_hidden_states=_randn(2, 8, 16, seed=2),
                  encoder_attention_mask=mask, timestep=torch.tensor([0.7, 0.7]))
    return m.eval(), inputs, (1, 5, 7)


def _flux2():
    from diffusers import Flux2Transformer2DModel

    m = Flux2Transformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=16,
                                timestep_guidance_channels=16, axes_dims_rope=(2, 2, 2, 2), guidance_embeds=False)
    h, w = 5, 7
    inputs = dict(hidden_states=_randn(2, h * w, 4, seed=1), encoder_hidden_states=_randn(2, 6, 16, seed=2),
                  timestep=torch.tensor([0.7, 0.7]), img_ids=_image_ids(h, w, 4), txt_ids=torch.zeros(6, 4))
    return m.eval(), inputs, (1, h, w)


def _hunyuan_video15():
    from diffusers import HunyuanVideo15Transformer3DModel

    m = HunyuanVideo15Transformer3DModel(in_channels=4, out_channels=4, num_attention_heads=HEADS,
                                         attention_head_dim=HEAD_DIM, num_layers=2, num_refiner_layers=1,
                                         patch_size=2, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=12,
                                         image_embed_dim=8, rope_axes_dim=(2, 2, 4))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 4:] = 0  # padded MLLM text in the first element
    mask_2 = torch.ones(2, 5, dtype=torch.long)
    mask_2[1, 3:] = 0  # padded ByT5 text in the second element
    # all-zero image embeddings: text-to-video, the model masks the 3 image tokens
    inputs = dict(hidden_states=_randn(2, 4, 3, 10, 14, seed=1), timestep=torch.tensor([700.0, 700.0]),
                  encoder_hidden_states=_randn(2, 7, 16, seed=2), encoder_attention_mask=mask,
                  encoder_hidden_states_2=_randn(2, 5, 12, seed=3), encoder_attention_mask_2=mask_2,
                  image_embeds=torch.zeros(2, 3, 8))
    return m.eval(), inputs, (3, 5, 7)


def _ltx2():
    from diffusers import LTX2VideoTransformer3DModel

    m = LTX2VideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=HEADS,
                                    attention_head_dim=HEAD_DIM, cross_attention_dim=HEADS * HEAD_DIM,
                                    audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
                                    audio_attention_head_dim=HEAD_DIM, audio_cross_attention_dim=16, num_layers=2,
                                    caption_channels=16)
    inputs = dict(hidden_states=_randn(2, 3 * 5 * 7, 4, seed=1), audio_hidden_states=_randn(2, 9, 4, seed=2),
                  encoder_hidden_states=_randn(2, 6, 16, seed=3), audio_encoder_hidden_states=_randn(2, 6, 16, seed=4),
                  timestep=torch.tensor([0.7, 0.7]), encoder_attention_mask=torch.ones(2, 6, dtype=torch.long),
                  audio_encoder_attention_mask=torch.ones(2, 6, dtype=torch.long), num_frames=3, height=5, width=7,
                  audio_num_frames=9)
    return m.eval(), inputs, (3, 5, 7)


def _anyflow():
    from diffusers import AnyFlowTransformer3DModel

    m = AnyFlowTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
                                  in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                  rope_max_seq_len=32)
    # [B, F, C, H, W]; flow-map timesteps t and r are given per frame
    inputs = dict(hidden_states=_randn(2, 3, 4, 10, 14, seed=1), timestep=torch.full((2, 3), 700.0),
                  r_timestep=torch.full((2, 3), 500.0), encoder_hidden_states=_randn(2, 6, 16, seed=2))
    return m.eval(), inputs, (3, 5, 7)


def _joyimage_edit():
    from diffusers import JoyImageEditTransformer3DModel

    m = JoyImageEditTransformer3DModel(patch_size=[1, 2, 2], in_channels=4, out_channels=4, hidden_size=HEADS * HEAD_DIM,
                                       num_attention_heads=HEADS, text_dim=16, mlp_width_ratio=2.0, num_layers=2,
                                       rope_dim_list=[2, 2, 4])
    # editing input [B, N, C, F, H, W]: 3 single-frame items stacked into a 3-frame grid
    inputs = dict(hidden_states=_randn(2, 3, 4, 1, 10, 14, seed=1), timestep=torch.tensor([700.0, 700.0]),
                  encoder_hidden_states=_randn(2, 6, 16, seed=2))
    return m.eval(), inputs, (3, 5, 7)


def _motif_video():
    from diffusers import MotifVideoTransformer3DModel

    m = MotifVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=HEADS,
                                     attention_head_dim=HEAD_DIM, num_layers=1, num_single_layers=1, mlp_ratio=2.0,
                                     patch_size=2, patch_size_t=1, text_embed_dim=16, image_embed_dim=12,
                                     rope_axes_dim=(2, 2, 4), enable_text_cross_attention_single=True)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 4:] = 0  # padded text in the first element
    # first-frame image embeddings (3 tokens) go before the text
    inputs = dict(hidden_states=_randn(2, 4, 3, 10, 14, seed=1), timestep=torch.tensor([700, 700]),
                  encoder_hidden_states=_randn(2, 7, 16, seed=2), encoder_attention_mask=mask,
                  image_embeds=_randn(2, 3, 12, seed=3))
    return m.eval(), inputs, (3, 5, 7)


def _kandinsky6():
    from diffusers import Kandinsky6Transformer3DModel

    m = Kandinsky6Transformer3DModel(in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16,
                                     patch_size=(1, 2, 2), model_dim=HEADS * HEAD_DIM, ff_dim=32, num_text_blocks=1,
                                     num_visual_blocks=2, axes_dims=(2, 2, 4), visual_cond=False, in_audio_dim=4,
                                     out_audio_dim=4)
    # channels-last video [B, T, H, W, C] plus audio (its self-attention stays dense)
    inputs = dict(hidden_states=_randn(2, 3, 10, 14, 4, seed=1), encoder_hidden_states=_randn(2, 6, 16, seed=2),
                  pooled_projections=_randn(2, 8, seed=3), timestep=torch.tensor([700.0, 700.0]),
                  audio_hidden_states=_randn(2, 9, 4, seed=4))
    return m.eval(), inputs, (3, 5, 7)


_BUILDERS = {"wan": _wan, "hunyuan_video": _hunyuan_video, "cogvideox": _cogvideox, "ltx": _ltx, "mochi": _mochi,
             "flux": _flux, "sd3": _sd3, "wan_vace": _wan_vace, "wan_animate": _wan_animate,
             "skyreels_v2": lambda: _wan("SkyReelsV2Transformer3DModel"),
             "chronoedit": lambda: _wan("ChronoEditTransformer3DModel"),
             "consisid": lambda: _cogvideox("ConsisIDTransformer3DModel"), "allegro": _allegro,
             "cosmos": _cosmos, "easyanimate": _easyanimate, "qwenimage": _qwenimage, "lumina2": _lumina2,
             "flux2": _flux2, "hunyuan_video15": _hunyuan_video15, "ltx2": _ltx2, "anyflow": _anyflow,
             "joyimage_edit": _joyimage_edit, "motif_video": _motif_video, "kandinsky6": _kandinsky6}


def run(model, inputs):
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
    return out.clone()


def tiny_wan_pipeline(heads: int = 4, layers: int = 2, seed: int = 0, model_max_length: int | None = None):
    """A random ``WanPipeline`` from small configs (VAE: x2 in time and space; patch 1x2x2;
    a word-level tokenizer over the procedural captions' words)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    words = ["<pad>", "</s>", "<unk>", "a", "red", "green", "yellow", "circle", "square", "triangle", "moving",
             "left", "right", "up", "down", "on", "blue", "black", "white", "background"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                        **extra)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                               num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1)).eval()
    z = 4
    vae = AutoencoderKLWan(base_dim=8, z_dim=z, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=[0.0] * z, latents_std=[1.0] * z, scale_factor_spatial=2,
                           scale_factor_temporal=2).eval()
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=8,
                                        in_channels=z, out_channels=z, text_dim=16, freq_dim=16, ffn_dim=32,
                                        num_layers=layers, rope_max_seq_len=32).eval()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
