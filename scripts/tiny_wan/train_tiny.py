"""Train the embedded tiny Wan text-to-video model (the script that made its weights).

The model is a standard diffusers ``WanPipeline`` folder built only from library classes:

* ``vae``: ``AutoencoderKLWan`` with ``dim_mult=[1, 2]`` -> one down stage, spatial and
  temporal factor 2, ``z_dim=8``; ``latents_mean`` / ``latents_std`` are measured on the
  training clips, so the pipeline's own (de)normalisation makes latents unit-scale.
* ``text_encoder``: a 2-layer ``UMT5EncoderModel`` (d_model 64), kept at its seeded random
  initialisation (``--train-text-encoder`` trains it with the transformer).
* ``tokenizer``: a ``tokenizers`` WordLevel model over the caption vocabulary, wrapped in
  ``PreTrainedTokenizerFast``.
* ``transformer``: ``WanTransformer3DModel``, inner dim 128 (4 heads x 32), 3 layers,
  patch (1, 2, 2), Wan's own 3D RoPE.
* ``scheduler``: ``FlowMatchEulerDiscreteScheduler`` (shift 3).

Training data is procedural (``tiny_clips.py``, beside this script): 9-frame 64x64 clips of a
coloured shape moving left/right/up/down on a coloured background, captioned, deterministic
from ``--seed``. At 9 x 64 x 64 pixels the latent is 5 x 32 x 32 and the transformer sees a
5 x 16 x 16 token grid (1280 tokens); at 2x spatial size (128 x 128) it is 5 x 32 x 32
(5120 tokens), where self-attention dominates the run time.

Stages (each resumable from ``--ckpt``; each stops after ``--minutes`` of wall time and can
be started again to continue)::

    python scripts/tiny_wan/train_tiny.py --stage vae     --ckpt /work/ckpt --minutes 18
    python scripts/tiny_wan/train_tiny.py --stage latents --ckpt /work/ckpt       # encode + cache clips
    python scripts/tiny_wan/train_tiny.py --stage dit     --ckpt /work/ckpt --minutes 60
    python scripts/tiny_wan/train_tiny.py --stage export  --ckpt /work/ckpt --out pipelines/embedded/tiny-wan
    python scripts/tiny_wan/train_tiny.py --stage all     --ckpt /work/ckpt --out ... --minutes 80

``vae-decoder`` then fine-tunes only the VAE decoder on full 9-frame clips with the encoder
frozen (so the cached latents and the DiT stay valid); it can run beside ``dit``::

    python scripts/tiny_wan/train_tiny.py --stage vae-decoder --ckpt /work/ckpt --minutes 15

``--steps N`` instead of ``--minutes`` gives ``vae``, ``vae-decoder`` or ``dit`` a budget of
optimizer steps: the learning-rate schedule then follows the step count, so a recorded run
can be made again step for step on a machine of another speed (``--extend --steps N`` adds N
steps to a resumed stage).

``all`` runs them in sequence, splitting ``--minutes`` 25% vae, 65% dit, 10% vae-decoder. Checkpoints are
safetensors files (model + Adam moments) plus a small ``state.json`` per stage, in
``--ckpt`` (outside the repository). Runs single-threaded by default (``--threads``).

How the shipped weights were made (the command lines and their wall minutes) is in
``scripts/tiny_wan/README.md``; the record of every run tried since, with its scores, in
``docs/tiny_wan_history.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import dit_sparse as ds
from dit_sparse.env import cpu_half_matmul_is_native

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_clips  # noqa: E402

#: the embedded model's folder, which --stage export writes and import-vae / import-dit read
SHIPPED = Path(__file__).resolve().parents[2] / "pipelines" / "embedded" / "tiny-wan"

FRAMES, SIZE = 9, 64
Z_DIM = 8
TEXT_DIM = 64
BIG_CLIPS_OFFSET = 10_000_000  # clip indices of the larger training size start here
MAX_TEXT_LEN = 512  # WanPipeline's default max_sequence_length: train with the same padding
# local patterns drawn per layer in the --sparse-prob steps (windows in tokens: at 64 px the grid
# is 5x16x16, at 128 px 5x32x32)
SPARSE_PATTERNS = (
    "neighborhood:kernel=5x5x5", "neighborhood:kernel=5x7x7", "neighborhood:kernel=5x9x9",
    "sliding-tile:tile=1x4x4,window=5x3x3", "sliding-tile:tile=1x8x8,window=5x1x3", "full",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- models


def build_vae(latents_mean=None, latents_std=None):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=16,
        z_dim=Z_DIM,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[True],
        latents_mean=list(latents_mean) if latents_mean is not None else [0.0] * Z_DIM,
        latents_std=list(latents_std) if latents_std is not None else [1.0] * Z_DIM,
        scale_factor_temporal=2,
        scale_factor_spatial=2,
    )


def build_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in tiny_clips.vocabulary():
        vocab[w] = len(vocab)
    # "<colour> background" -> "bg<colour> background": a background colour is its own token,
    # so every token names its role and the cross-attention need not learn word order first
    # (with plain colour words it learned no conditioning in a 35-minute run)
    for c in tiny_clips.COLORS:
        vocab[f"bg{c}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Lowercase()] + [normalizers.Replace(f"{c} background", f"bg{c} background") for c in tiny_clips.COLORS]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_TEXT_LEN,
    )


def build_text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    return UMT5EncoderModel(cfg)


DIT_ARCH = {"heads": 4, "head_dim": 32}  # the shipped DiT's; see --dit-heads


def build_transformer(heads: int = DIT_ARCH["heads"], head_dim: int = DIT_ARCH["head_dim"]):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=Z_DIM,
        out_channels=Z_DIM,
        text_dim=TEXT_DIM,
        freq_dim=64,
        ffn_dim=384,
        num_layers=3,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=256,
    )


def make_text_padding_inert(transformer, k_gain: float = 2.5) -> bool:
    """Make WanPipeline's zero-padded text positions a pure attention sink.

    WanPipeline pads every prompt embedding with zeros to ``max_sequence_length`` (512), and
    the cross-attention has no mask, so ~500 identical pad keys swamp the ~11 caption tokens
    and the text gradient is drowned (a first run learned no conditioning at all).
    With the text projection's and the cross-attention k/v biases at zero (and frozen), a
    zero pad embedding gives k = RMSNorm(0) = 0 and v = 0: the pads get logit 0 and add
    nothing, and every k/v gradient comes from the caption tokens. This is exact for the
    stock pipeline. On a trained model the pads' old constant output is folded into the
    ``to_out`` bias, so the function barely changes; the cross-attention k norm gain is
    raised so caption logits can outgrow the pads'. Returns True if it changed anything
    (it is idempotent).
    """
    emb = transformer.condition_embedder.text_embedder
    changed = bool(emb.linear_1.bias.detach().abs().sum() + emb.linear_2.bias.detach().abs().sum() > 0)
    with torch.no_grad():
        pad = emb(torch.zeros(1, 1, emb.linear_1.in_features))
        for block in transformer.blocks:
            a = block.attn2
            v_pad = a.to_v(pad)  # [1, 1, dim], what the pads contribute
            if a.to_k.bias.detach().abs().sum() + a.to_v.bias.detach().abs().sum() > 0:
                a.to_out[0].bias.copy_(a.to_out[0](v_pad)[0, 0])
                a.norm_k.weight.mul_(k_gain)
                changed = True
            for bias in (a.to_k.bias, a.to_v.bias):
                bias.zero_()
                bias.requires_grad_(False)
        for bias in (emb.linear_1.bias, emb.linear_2.bias):
            bias.zero_()
            bias.requires_grad_(False)
    return changed


def reinit_text_path(transformer, text_encoder, opt) -> None:
    """Start the text path afresh (text encoder, text projection, every cross-attention),
    keeping the rest of the transformer, and forget those parameters' Adam moments.

    Used once (``--reinit-text``) on a run whose cross-attention had learned to shut itself:
    trained always padded to 512, the inert pads (logit 0, value 0) offer an "off" position,
    and with a still-useless text encoder the cheapest move was to push every caption logit
    negative (the caption kept a negligible share of the attention mass and had no effect on
    the output; docs/tiny_wan_history.md). See ``--pad-prob`` for what prevents it.
    """
    fresh = build_transformer(transformer.config.num_attention_heads, transformer.config.attention_head_dim)
    cross = [transformer.condition_embedder.text_embedder] + [b.attn2 for b in transformer.blocks]
    cross_fresh = [fresh.condition_embedder.text_embedder] + [b.attn2 for b in fresh.blocks]
    new_te = build_text_encoder(text_encoder.config.vocab_size)
    with torch.no_grad():
        for old, new in list(zip(cross, cross_fresh)) + [(text_encoder, new_te)]:
            for (_, a), (_, b) in zip(old.named_parameters(), new.named_parameters()):
                a.copy_(b)
                opt.state.pop(a, None)
    make_text_padding_inert(transformer)


def dit_arch(args) -> dict:
    """The DiT's ``{"heads", "head_dim"}``: from ``<ckpt>/dit/state.json`` once the stage has
    started (checkpoints from before the flags hold the shipped 4 x 32), else from
    ``--dit-heads`` / ``--dit-head-dim``. 2 x 64 and 4 x 32 weights have the same shapes, so the
    architecture is kept with the checkpoint rather than trusted to the flags on resume."""
    wanted = {"heads": args.dit_heads, "head_dim": args.dit_head_dim}
    path = args.ckpt / "dit" / "state.json"
    if not path.exists():
        return {k: DIT_ARCH[k] if v is None else v for k, v in wanted.items()}
    saved = json.loads(path.read_text()).get("arch", DIT_ARCH)
    for key, flag in (("heads", "--dit-heads"), ("head_dim", "--dit-head-dim")):
        if wanted[key] is not None and wanted[key] != saved[key]:
            raise SystemExit(f"{flag} {wanted[key]}: the checkpoint in {path.parent} has {saved[key]}; "
                             f"drop the flag or start a new --ckpt")
    return dict(saved)


def build_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


# ----------------------------------------------------------------------------- checkpoints


class Checkpoint:
    """``<ckpt>/<stage>/``: model.safetensors, optim.safetensors (Adam moments), state.json."""

    def __init__(self, root: Path, stage: str):
        self.dir = root / stage
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def exists(self) -> bool:
        return (self.dir / "state.json").exists()

    def save(self, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer | None, state: dict) -> None:
        weights = {f"{k}.{n}": p.detach().clone().contiguous() for k, m in modules.items() for n, p in m.state_dict().items()}
        save_file(weights, str(self.dir / "model.tmp"))
        moments, steps = {}, {}
        names = {id(p): f"{k}.{n}" for k, m in modules.items() for n, p in m.named_parameters()}
        for group in opt.param_groups if opt is not None else []:
            for p in group["params"]:
                st = opt.state.get(p)
                if not st:
                    continue
                moments[f"exp_avg.{names[id(p)]}"] = st["exp_avg"].contiguous()
                moments[f"exp_avg_sq.{names[id(p)]}"] = st["exp_avg_sq"].contiguous()
                steps[names[id(p)]] = float(st["step"])
        save_file(moments, str(self.dir / "optim.tmp"))
        state = dict(state, adam_steps=steps)
        (self.dir / "state.tmp").write_text(json.dumps(state, indent=1))
        os.replace(self.dir / "model.tmp", self.dir / "model.safetensors")
        os.replace(self.dir / "optim.tmp", self.dir / "optim.safetensors")
        os.replace(self.dir / "state.tmp", self.dir / "state.json")

    def load_weights(self, modules: dict[str, torch.nn.Module]) -> None:
        weights = load_file(str(self.dir / "model.safetensors"))
        for k, m in modules.items():
            sub = {n[len(k) + 1 :]: t for n, t in weights.items() if n.startswith(k + ".")}
            m.load_state_dict(sub)

    def load(self, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer) -> dict:
        self.load_weights(modules)
        state = json.loads((self.dir / "state.json").read_text())
        moments = load_file(str(self.dir / "optim.safetensors"))
        for k, m in modules.items():
            for n, p in m.named_parameters():
                key = f"{k}.{n}"
                if f"exp_avg.{key}" in moments:
                    opt.state[p] = {
                        "step": torch.tensor(state["adam_steps"][key]),
                        "exp_avg": moments[f"exp_avg.{key}"],
                        "exp_avg_sq": moments[f"exp_avg_sq.{key}"],
                    }
        return state


def lr_at(frac: float, base: float, warm: float = 0.03, decay: float = 0.3) -> float:
    """Warm-up, then constant, then cosine decay (to 10%) over the last ``decay`` of the budget."""
    if frac < warm:
        return base * max(frac / warm, 0.05)
    if frac < 1.0 - decay:
        return base
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min((frac - 1.0 + decay) / decay, 1.0))))


def set_budget(state: dict, args, resumed: bool) -> None:
    """The stage's budget: ``--steps`` (a step count, the same run on any machine) or else
    ``--minutes`` of wall time; with ``--extend`` either is added to what the resumed stage
    has done (the schedule then spans the whole run: see :func:`progress`). A plain resume
    keeps the budget it had."""
    if args.steps is not None:
        state["step_budget"] = args.steps + (state["step"] if resumed and args.extend else 0)
    elif not resumed:
        state["budget"] = args.minutes * 60.0
    elif args.extend:
        state.pop("step_budget", None)
        state["budget"] = state["elapsed"] + args.minutes * 60.0


def progress(state: dict, elapsed: float) -> float:
    """How much of the stage's budget is used (>= 1: done): steps over the step budget when
    it has one, else wall seconds over the time budget. Learning rates and the fg weight
    follow it."""
    if state.get("step_budget"):
        return state["step"] / state["step_budget"]
    return elapsed / state["budget"]


def budget_text(state: dict) -> str:
    return f"{state['step_budget']} steps" if state.get("step_budget") else f"{state['budget'] / 60:.1f} min"


# ----------------------------------------------------------------------------- vae stage


def static_spread(vae, x: torch.Tensor) -> torch.Tensor:
    """How differently the encoder codes one picture in the first and the later latent frames.

    ``x`` ``[B, 3, F, H, W]``; each clip's first frame is held still for all ``F`` frames and
    encoded; the result is the variance over time of the posterior means, relative to their
    variance overall (so shrinking the latents cannot lower it). The causal Wan encoder codes
    pixel frame 0 alone and the later frames in pairs; left to itself it learns two codes
    for the same picture, and a transformer with only relative (RoPE) positions then cannot
    tell which code a frame should carry. Weighting this spread in the loss
    (``--vae-static-weight``) makes the latent space the same at every latent frame."""
    still = x[:, :, :1].expand_as(x).contiguous()
    mu = vae.encode(still).latent_dist.mean  # [B, C, T, h, w]
    return (mu - mu.mean(dim=2, keepdim=True)).pow(2).mean() / mu.var().clamp_min(1e-6)


def train_vae(args, decoder_only: bool = False) -> None:
    """Train the autoencoder; ``decoder_only`` then fine-tunes just the decoder on longer
    clips with the encoder (hence the latent space the DiT learned) frozen."""
    vae = build_vae()
    vae.train()
    stage, frames = ("vae_dec", FRAMES) if decoder_only else ("vae", args.vae_frames)
    if decoder_only:
        Checkpoint(args.ckpt, "vae").load_weights({"vae": vae})
        vae.requires_grad_(False)
        for m in (vae.post_quant_conv, vae.decoder):
            m.requires_grad_(True)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    lr = args.vae_lr * (0.3 if decoder_only else 1.0)
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    ck = Checkpoint(args.ckpt, stage)
    state = {"step": 0, "elapsed": 0.0}  # budget: set_budget
    if ck.exists:
        state = ck.load({"vae": vae}, opt)
        log(f"{stage}: resumed at step {state['step']} ({state['elapsed'] / 60:.1f} min)")
    set_budget(state, args, ck.exists)
    log(f"{stage}: {sum(p.numel() for p in trainable) / 1e6:.2f} M trainable params, budget {budget_text(state)}")
    rng_seed = args.seed + 1_000_000  # the VAE sees other clips than the cached DiT set
    t0, last_save, run = time.time() - state["elapsed"], time.time(), []
    bs, crop = args.vae_batch, args.vae_crop
    while True:
        elapsed = time.time() - t0
        if progress(state, elapsed) >= 1.0:
            break
        step = state["step"]
        for g in opt.param_groups:
            g["lr"] = lr_at(progress(state, elapsed), lr)
        x, _ = tiny_clips.make_batch(rng_seed, step * bs, bs, frames=frames, height=SIZE, width=SIZE)
        r = np.random.default_rng([rng_seed, step, 7])
        if crop < SIZE:  # random crops: convolutions do not care, and smaller inputs are cheaper
            oy, ox = (int(v) // 2 * 2 for v in r.integers(0, SIZE - crop + 1, size=2))
            x = x[..., oy : oy + crop, ox : ox + crop]
        x = torch.from_numpy(np.ascontiguousarray(x))
        with torch.no_grad() if decoder_only else contextlib.nullcontext():
            post = vae.encode(x).latent_dist
            z = post.sample()
        y = vae.decode(z).sample
        rec = (y - x).abs().mean() + F.mse_loss(y, x)
        kl = post.kl().mean() / z[0].numel()
        loss = rec + args.vae_kl * kl
        hom = torch.zeros(())
        if args.vae_static_weight > 0 and not decoder_only:
            hom = static_spread(vae, x)
            loss = loss + args.vae_static_weight * hom
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        state["step"] = step + 1
        run.append((rec.item(), kl.item(), hom.item()))
        if state["step"] % 20 == 0:
            a = np.mean(run, axis=0)
            log(f"{stage} step {state['step']} rec {a[0]:.4f} kl {a[1]:.3f} static {a[2]:.4f} lr {opt.param_groups[0]['lr']:.2e} t {elapsed / 60:.1f}m")
            run = []
        if time.time() - last_save > 120:
            state["elapsed"] = time.time() - t0
            ck.save({"vae": vae}, opt, state)
            last_save = time.time()
    state["elapsed"] = time.time() - t0
    ck.save({"vae": vae}, opt, state)
    log(f"{stage}: done, step {state['step']}, {state['elapsed'] / 60:.1f} min")


def import_vae(args) -> None:
    """Seed ``<ckpt>/vae`` and ``<ckpt>/vae_dec`` from the autoencoder of an existing
    WanPipeline folder (``--from``, default the shipped one), so that the DiT can be trained
    again on a new machine without training the autoencoder again (its encoder fixes the
    latent space; the shipped decoder is the fine-tuned one)."""
    from diffusers import AutoencoderKLWan

    src = args.from_path / "vae"
    vae = AutoencoderKLWan.from_pretrained(str(src))
    for stage in ("vae", "vae_dec"):
        Checkpoint(args.ckpt, stage).save({"vae": vae}, None, {"step": 0, "elapsed": 0.0, "budget": 0.0, "imported_from": str(src)})
    log(f"import-vae: {src} -> {args.ckpt}/vae, {args.ckpt}/vae_dec")


def load_trained_vae(args):
    vae = build_vae()
    Checkpoint(args.ckpt, "vae").load_weights({"vae": vae})
    vae.eval()
    return vae


# ----------------------------------------------------------------------------- latents stage


def cache_latents(args) -> None:
    """Encode the DiT training clips once with the trained VAE (posterior mode) into
    ``<ckpt>/latents/<size>.safetensors`` (float16) + captions JSON, and measure the
    per-channel latent mean / std that the exported VAE config will carry."""
    vae = load_trained_vae(args)
    out = args.ckpt / "latents"
    out.mkdir(parents=True, exist_ok=True)
    sets = [(SIZE, args.num_clips, 0), (args.big_size, args.num_big_clips, BIG_CLIPS_OFFSET)]
    for size, count, offset in sets:
        path = out / f"{size}.safetensors"
        if path.exists() or count == 0:
            continue
        t0, zs, caps = time.time(), [], []
        with torch.no_grad():
            for start in range(0, count, 8):
                n = min(8, count - start)
                x, c = tiny_clips.make_batch(args.seed, offset + start, n, frames=FRAMES, height=size, width=size)
                zs.append(vae.encode(torch.from_numpy(x)).latent_dist.mode().half())
                caps += c
                if start % 200 == 0:
                    log(f"latents {size}: {start + n}/{count} ({time.time() - t0:.0f} s)")
        z = torch.cat(zs)
        save_file({"latents": z.contiguous()}, str(path))
        (out / f"{size}.json").write_text(json.dumps(caps))
        log(f"latents {size}: {tuple(z.shape)} in {time.time() - t0:.0f} s")
    z = load_file(str(out / f"{SIZE}.safetensors"))["latents"].float()
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4))
    stats = {"latents_mean": [round(v, 5) for v in mean.tolist()], "latents_std": [round(v, 5) for v in std.tolist()]}
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    log(f"latent stats {stats}")


# ----------------------------------------------------------------------------- dit stage


def latent_shape_masks(seed: int, offset: int, count: int, size: int) -> torch.Tensor:
    """Where the shape is, at latent resolution: ``[count, 1, 5, size/2, size/2]`` in [0, 1]
    for cached clips ``offset .. offset+count-1`` (regenerated from their specs). The Wan VAE
    is causal with temporal factor 2: latent frame 0 is pixel frame 0, latent frame j >= 1
    covers pixel frames 2j-1 and 2j; the mask is the max over a latent cell's pixels."""
    m = np.stack([tiny_clips.coverage(tiny_clips.sample_spec(seed, offset + i), FRAMES, size, size)
                  for i in range(count)])
    t = torch.from_numpy(m)[:, None]  # [N, 1, F, H, W]
    rest = t[:, :, 1:].unflatten(2, ((FRAMES - 1) // 2, 2)).amax(3)
    return F.max_pool3d(torch.cat([t[:, :, :1], rest], dim=2), (1, 2, 2))


def encode_text(tokenizer, text_encoder, captions: list[str], max_len: int | None = MAX_TEXT_LEN) -> torch.Tensor:
    """Exactly WanPipeline's prompt embedding: encode with the padding masked, keep each
    caption's own tokens, zero-pad to ``max_len`` (None: to the longest caption)."""
    enc = tokenizer(captions, padding="longest", truncation=True, max_length=MAX_TEXT_LEN, return_tensors="pt")
    hidden = text_encoder(enc.input_ids, enc.attention_mask).last_hidden_state
    lens = enc.attention_mask.sum(1)
    max_len = int(lens.max()) if max_len is None else max_len
    out = hidden.new_zeros(len(captions), max_len, hidden.shape[-1])
    for i, n in enumerate(lens.tolist()):
        out[i, :n] = hidden[i, :n]
    return out


def sparse_table(patterns: list[str], num_layers: int, g: torch.Generator) -> dict[str, str]:
    """One random pattern per self-attention layer, as a ``{layer-regex: spec}`` for ``ds.apply``.

    Training a share of the steps this way (``--sparse-prob``) is a dropout of the far keys:
    weights that must also work when each layer sees only a local window cannot lean on far
    tokens in the dense steps either, so dense and sparse inference draw the same picture.
    (The idea of fitting the model to the sparse pattern is the sparse fine-tuning of sliding
    tile attention, FastVideo; here dense and sparse steps are mixed so that the dense model
    stays the reference.)
    """
    pick = torch.randint(len(patterns), (num_layers,), generator=g).tolist()
    return {rf"blocks\.{i}\.attn1$": patterns[j] for i, j in enumerate(pick)}


def sample_sigmas(n: int, g: torch.Generator, shift: float, high_frac: float = 0.0, high_min: float = 0.9) -> torch.Tensor:
    """Training noise levels: logit-normal with the scheduler's shift (SD3, Wan), and a share
    ``high_frac`` drawn uniformly from ``[high_min, 1]``.

    The high band is where the caption is decided. A flat-coloured 5x32x32 latent averages
    its noise away over thousands of elements, so down to sigma ~0.95 the noisy input itself
    reveals the background colour; only above it must the colour come from the caption. The
    logit-normal with shift 3 puts under 1% of the samples above 0.97 (and 9% above 0.92,
    where the sampler spends 5 of its 20 steps), and the DiTs trained that way ignored the
    caption: at sigma 1 their velocity error (``caption_gap.py``) was nearly the same with the
    caption as without, so the first steps drew a colour from the noise. The shipped DiT was
    trained with ``high_frac`` 0.3 (the errors of both: docs/tiny_wan_history.md).
    """
    u = torch.sigmoid(torch.randn(n, generator=g))
    sigma = shift * u / (1 + (shift - 1) * u)
    high = torch.rand(n, generator=g) < high_frac
    return torch.where(high, 1 - (1 - high_min) * torch.rand(n, generator=g), sigma)


def frame_noise(sigma: torch.Tensor, shape, g: torch.Generator, lo: float, hi: float, patch=(1, 2, 2),
                every: bool = False, hidden: bool = False):
    """Per-frame noise levels for ``--frame-noise-prob`` steps: in each clip one latent frame,
    drawn uniformly, is noised at ``sigma * r`` with ``r ~ U(lo, hi)``, the others at ``sigma``.

    Returns the noise scale ``[B, 1, F, 1, 1]`` and per-token timesteps ``[B, tokens]`` for the
    transformer's ``patch`` (``patch[0]`` must be 1: one timestep per latent frame)
    (Wan's transformer embeds a timestep per token when given a 2-D one, as Wan 2.2 TI2V
    does; equal per-token timesteps compute exactly the global path the pipeline uses).

    Why: with every frame equally noisy the direction word is worth almost nothing to the loss: at
    high noise a model without absolute positions can only predict a smear that is the same
    in every frame, and at lower noise the noisy frames show the motion themselves (the
    shipped DiT's velocity error was the same with the opposite direction in the caption).
    With one frame clearer than the rest, where the shape is in the others follows from
    where it is in that frame and from the captioned direction. (Training with independent
    noise levels per frame is diffusion forcing, Chen et al. 2024; here it is an auxiliary
    task for a sampler that keeps all frames at one level.)

    With ``every`` (``--frame-noise-every``) every frame draws its own ``r``: the frames range
    from clear to as noisy as the clip's sigma, a continuum between one clean frame among
    noisy ones and the sampler's equal levels.

    With ``hidden`` (``--frame-noise-hidden``) every token's timestep is the clip's ``sigma``:
    the model is not told which frame is clearer. A circuit that carries the shape along the
    captioned path from the clearer frame cannot then switch on from that frame's timestep
    embedding; it has to weigh the frames by what they show, which is what it must do at the
    sampler's equal levels, where the evidence is spread thinly over every frame.
    """
    b, _, f, h, w = shape
    if every:
        per_frame = sigma[:, None] * (lo + (hi - lo) * torch.rand(b, f, generator=g))
    else:
        ref = torch.randint(f, (b,), generator=g)
        r = lo + (hi - lo) * torch.rand(b, generator=g)
        per_frame = sigma[:, None].repeat(1, f)
        per_frame[torch.arange(b), ref] *= r
    told = sigma[:, None].repeat(1, f) if hidden else per_frame
    return per_frame.view(b, 1, f, 1, 1), per_token_timesteps(told, (h, w), patch)


def per_token_timesteps(per_frame: torch.Tensor, size, patch=(1, 2, 2)) -> torch.Tensor:
    """Wan timesteps ``[B, tokens]`` (frame-major) from per-latent-frame sigmas ``[B, F]`` on a
    ``size = (h, w)`` latent; ``patch[0]`` must be 1 (one timestep per latent frame)."""
    if patch[0] != 1:
        raise ValueError(f"per-frame timesteps need a temporal patch of 1, got {patch=}")
    tokens = (size[0] // patch[1]) * (size[1] // patch[2])
    return (per_frame * 1000).repeat_interleave(tokens, dim=1)


def direction_contrast(err: torch.Tensor, err_rev: torch.Tensor, w: torch.Tensor, margin: float):
    """The ``--direction-contrast`` term: a hinge that asks each clip's weighted velocity error
    with its true caption to be below the error with the opposite direction word ("reversed",
    same noisy input) by ``margin`` of itself. Returns ``(loss, mean relative gap)``.

    Why: every earlier DiT ignored the direction word where sampling needs it (the reversed
    caption cost next to nothing in ``caption_gap.py``): at high noise a prediction that is the
    same in every frame loses almost nothing to the MSE, so the plain loss never pays for
    reading the direction. The hinge pays for exactly that difference, and only until the
    margin is met. Both branches get the gradient; restricted to the noise band where the
    input shows little of the motion (``--contrast-band``), making the reversed prediction
    worse can only be done by drawing the captioned motion in the true one, not by spotting a
    clip whose visible motion disagrees with its caption. (A contrastive objective on
    conditions, as in contrastive guidance / "negative" prompts, used here as a training loss.)
    """
    dims = tuple(range(1, err.dim()))
    e_true = (err.square() * w).mean(dims) / w.mean(dims)
    e_rev = (err_rev.square() * w).mean(dims) / w.mean(dims)
    loss = F.relu(e_true - e_rev + margin * e_true.detach()).mean()
    return loss, ((e_rev - e_true) / e_true).mean().item()


def import_dit(args) -> None:
    """Seed ``<ckpt>/dit`` and ``<ckpt>/dit_ema`` (transformer + text encoder, no optimizer
    moments) from an existing WanPipeline folder (``--from``, default the shipped one), for a
    fine-tune with ``--stage dit --extend --steps N`` (or ``--minutes``)."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    transformer = WanTransformer3DModel.from_pretrained(str(args.from_path / "transformer"))
    text_encoder = UMT5EncoderModel.from_pretrained(str(args.from_path / "text_encoder"))
    arch = {"heads": transformer.config.num_attention_heads, "head_dim": transformer.config.attention_head_dim}
    modules = {"transformer": transformer, "text_encoder": text_encoder}
    Checkpoint(args.ckpt, "dit").save(modules, None, {"step": 0, "elapsed": 0.0, "budget": 0.0, "arch": arch,
                                                      "imported_from": str(args.from_path)})
    Checkpoint(args.ckpt, "dit_ema").save(modules, None, {"step": 0})
    log(f"import-dit: {args.from_path} -> {args.ckpt}/dit, {args.ckpt}/dit_ema ({arch})")


def train_dit(args) -> None:
    lat_dir = args.ckpt / "latents"
    stats = json.loads((lat_dir / "stats.json").read_text())
    mean = torch.tensor(stats["latents_mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(stats["latents_std"]).view(1, -1, 1, 1, 1)
    data = {}
    for size in (SIZE, args.big_size):
        path = lat_dir / f"{size}.safetensors"
        if path.exists():
            z = load_file(str(path))["latents"]
            offset = 0 if size == SIZE else BIG_CLIPS_OFFSET
            fg = latent_shape_masks(args.seed, offset, len(z), size) if args.fg_weight > 0 else None
            data[size] = (z, json.loads((lat_dir / f"{size}.json").read_text()), fg)
            log(f"dit: {len(z)} cached clips at {size}px, latent {tuple(z.shape[1:])}")

    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    arch = dit_arch(args)
    transformer = build_transformer(arch["heads"], arch["head_dim"])
    ema = build_transformer(arch["heads"], arch["head_dim"])
    ema.load_state_dict(transformer.state_dict())
    ema_te = build_text_encoder(len(tokenizer))
    ema_te.load_state_dict(text_encoder.state_dict())
    for m in (ema, ema_te):
        m.requires_grad_(False)
    make_text_padding_inert(transformer)
    make_text_padding_inert(ema)
    modules = {"transformer": transformer, "text_encoder": text_encoder}
    if not args.train_text_encoder:
        # A frozen, seeded random UMT5 still gives every caption distinct, contextual token
        # features; trained jointly it collapsed (its output shrank to near zero: the cheapest
        # way to silence a text path that did not help yet), and the caption never took.
        # Frozen, the projection and cross-attention learn to read it (docs/tiny_wan_history.md).
        text_encoder.requires_grad_(False)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    # the text path (encoder, projection, cross-attention) starts from nothing and is
    # drowned at first: give it a higher learning rate
    text_ids = {id(p) for p in text_encoder.parameters()}
    text_ids |= {id(p) for p in transformer.condition_embedder.text_embedder.parameters()}
    text_ids |= {id(p) for b in transformer.blocks for p in b.attn2.parameters()}
    groups = [
        {"params": [p for p in params if id(p) not in text_ids], "mult": 1.0, "text": False},
        {"params": [p for p in params if id(p) in text_ids], "mult": args.text_lr_mult, "text": True},
    ]
    opt = torch.optim.AdamW(groups, lr=args.dit_lr, weight_decay=0.01, betas=(0.9, 0.99))
    ck = Checkpoint(args.ckpt, "dit")
    state = {"step": 0, "elapsed": 0.0}  # budget: set_budget
    if ck.exists:
        saved = load_file(str(ck.dir / "model.safetensors"))
        if saved["text_encoder.shared.weight"].shape != text_encoder.shared.weight.shape:
            # the vocabulary changed: keep the transformer, start the text encoder afresh
            log("dit: tokenizer vocabulary changed, re-initialising the text encoder")
            state = ck.load({"transformer": transformer}, opt)
            Checkpoint(args.ckpt, "dit_ema").load_weights({"transformer": ema})
            ema_te.load_state_dict(text_encoder.state_dict())
        else:
            state = ck.load(modules, opt)
            Checkpoint(args.ckpt, "dit_ema").load_weights({"transformer": ema, "text_encoder": ema_te})
        del saved
        for m in (transformer, ema):
            if make_text_padding_inert(m):
                log("dit: made the text padding inert in the resumed weights")
        done = state.setdefault("text_reinits", {})
        if args.reinit_text and args.reinit_text not in done:
            torch.manual_seed(args.seed)
            reinit_text_path(transformer, text_encoder, opt)
            ema.load_state_dict(transformer.state_dict())
            ema_te.load_state_dict(text_encoder.state_dict())
            done[args.reinit_text] = state["step"]
            log(f"dit: text path re-initialised ({args.reinit_text!r}) at step {state['step']}")
        log(f"dit: resumed at step {state['step']} ({state['elapsed'] / 60:.1f} min)")
    set_budget(state, args, ck.exists)
    state["arch"] = arch
    n_params = sum(p.numel() for p in transformer.parameters()) / 1e6
    log(f"dit: transformer {arch['heads']} x {arch['head_dim']} heads, {n_params:.2f} M params, budget {budget_text(state)}")
    transformer.train()
    text_encoder.train()
    # bf16 autocast: the matmuls run on the CPU's bf16 units (AVX512-BF16); weights, optimizer
    # and loss stay fp32: more steps a minute, the same loss curve (docs/tiny_wan_history.md);
    # used for the shipped weights. On a CPU without bf16 instructions PyTorch runs bf16
    # matmuls in a generic loop, several times slower than fp32, so main() refuses it there.
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.autocast == "bf16"
                else contextlib.nullcontext())
    t0, last_save, run, gaps = time.time() - state["elapsed"], time.time(), [], []
    while True:
        elapsed = time.time() - t0
        if progress(state, elapsed) >= 1.0:
            break
        step = state["step"]
        lr = lr_at(progress(state, elapsed), args.dit_lr, decay=args.decay_frac)
        # text-only phase: only the text path learns, on noisy samples (where the caption is
        # what is left to know), so that it is useful before the rest adapts around it
        text_only = step < args.text_only_until
        for g in opt.param_groups:
            g["lr"] = lr * g["mult"] if (g["text"] or not text_only) else 0.0
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        big = args.big_size in data and step % args.big_every == args.big_every - 1
        size = args.big_size if big else SIZE
        bs = args.big_batch if big else args.dit_batch
        z_all, caps_all, fg_all = data[size]
        idx = torch.randint(len(z_all), (bs,), generator=g)
        x0 = (z_all[idx].float() - mean) / std
        caps = [caps_all[i] if torch.rand((), generator=g) >= args.drop_caption else "" for i in idx.tolist()]
        sigma = sample_sigmas(bs, g, args.shift, args.high_sigma_frac, args.high_sigma_min)
        if text_only:
            sigma = 0.5 + 0.5 * torch.rand(bs, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        # padded like WanPipeline (512) in a --pad-prob share of the steps, else only to the
        # longest caption: without pads the softmax has to land on caption tokens, so the
        # cross-attention cannot learn to shut itself (see reinit_text_path); with them the
        # caption logits must grow until ~500 pads at logit 0 no longer matter
        text_len = MAX_TEXT_LEN if torch.rand((), generator=g) < args.pad_prob else None
        sparse = None
        if args.sparse_prob > 0 and torch.rand((), generator=g) < args.sparse_prob:
            sparse = ds.apply(transformer, sparse_table(args.sparse_patterns, len(transformer.blocks), g))
            sigma = sigma * args.sparse_max_sigma  # sparse inference starts after the dense steps
        # the text encoder runs in fp32 as in the pipeline (it is tiny; its bf16 features
        # would differ from the ones the exported model sees at inference)
        s = sigma.view(-1, 1, 1, 1, 1)
        timestep = sigma * 1000
        noised = args.frame_noise_prob > 0 and torch.rand((), generator=g) < args.frame_noise_prob
        if noised:
            if args.frame_noise_sigma_min is not None:  # the other frames at (nearly) pure noise
                sigma = 1 - (1 - args.frame_noise_sigma_min) * torch.rand(bs, generator=g)
            s, timestep = frame_noise(sigma, x0.shape, g, *args.frame_noise_range,
                                      patch=transformer.config.patch_size, every=args.frame_noise_every,
                                      hidden=args.frame_noise_hidden)
        xt = (1 - s) * x0 + s * noise
        emb = encode_text(tokenizer, text_encoder, caps, text_len)
        with autocast:
            pred = transformer(hidden_states=xt, timestep=timestep, encoder_hidden_states=emb,
                               return_dict=False)[0].float()
            gap = None
            if (step + 1) % 20 == 0:
                # how much the caption helps: the same noisy batch, weights, precision and
                # attention patterns with every caption dropped (near 0: the text is unused)
                with torch.no_grad():
                    pred0 = transformer(
                        hidden_states=xt, timestep=timestep,
                        encoder_hidden_states=encode_text(tokenizer, text_encoder, [""] * bs, text_len),
                        return_dict=False,
                    )[0].float()
                gap = F.mse_loss(pred0, noise - x0).item() - F.mse_loss(pred.detach(), noise - x0).item()
        w = torch.ones(1, 1, pred.shape[2], 1, 1)
        w[:, :, 0] = args.frame0_weight  # see --frame0-weight
        if fg_all is not None:  # the shape's latents weigh (1 + fg_weight): see --fg-weight
            fg_w = args.fg_weight if args.fg_weight_final is None else (
                args.fg_weight + (args.fg_weight_final - args.fg_weight) * min(progress(state, elapsed), 1.0))
            w = w * (1.0 + fg_w * fg_all[idx])
        w = w.expand_as(pred)
        err = pred - (noise - x0)
        loss = (err.square() * w).mean() / w.mean()
        contrast = None
        if args.direction_contrast > 0 and (noised or not args.contrast_frame_noise_only):  # see direction_contrast
            sel = [i for i, c in enumerate(caps) if c and args.contrast_band[0] <= sigma[i] <= args.contrast_band[1]]
            if sel:
                rev = encode_text(tokenizer, text_encoder, [tiny_clips.reverse_direction(caps[i]) for i in sel], text_len)
                with autocast:
                    pred_r = transformer(hidden_states=xt[sel], timestep=timestep[sel], encoder_hidden_states=rev,
                                         return_dict=False)[0].float()
                contrast, margin_gap = direction_contrast(err[sel], pred_r - (noise - x0)[sel], w[sel],
                                                          args.contrast_margin)
                loss = loss + args.direction_contrast * contrast
                gaps.append(margin_gap)
        if args.temporal_weight > 0:  # see --temporal-weight
            loss = loss + args.temporal_weight * (err[:, :, 2:] - err[:, :, 1:-1]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if sparse is not None:
            sparse.remove()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for src, dst in ((transformer, ema), (text_encoder, ema_te)):
                for a, b in zip(dst.parameters(), src.parameters()):
                    a.lerp_(b, 1 - decay)
        state["step"] = step + 1
        run.append(loss.item())
        if gap is not None:
            rev = f" reversed gap {np.mean(gaps):+.4f}" if gaps else ""
            log(f"dit step {state['step']} loss {np.mean(run):.4f} text gap {gap:+.4f}{rev} lr {lr:.2e} t {elapsed / 60:.1f}m")
            run, gaps = [], []
        if time.time() - last_save > 180:
            state["elapsed"] = time.time() - t0
            ck.save(modules, opt, state)
            Checkpoint(args.ckpt, "dit_ema").save({"transformer": ema, "text_encoder": ema_te}, None, {"step": state["step"]})
            last_save = time.time()
    state["elapsed"] = time.time() - t0
    ck.save(modules, opt, state)
    Checkpoint(args.ckpt, "dit_ema").save({"transformer": ema, "text_encoder": ema_te}, None, {"step": state["step"]})
    log(f"dit: done, step {state['step']}, {state['elapsed'] / 60:.1f} min")


# ----------------------------------------------------------------------------- export


def export(args) -> None:
    """Assemble the standard WanPipeline folder from the checkpoints and save it."""
    from diffusers import WanPipeline

    stats = json.loads((args.ckpt / "latents" / "stats.json").read_text())
    vae = build_vae(stats["latents_mean"], stats["latents_std"])
    vae_stage = "vae_dec" if Checkpoint(args.ckpt, "vae_dec").exists else "vae"
    Checkpoint(args.ckpt, vae_stage).load_weights({"vae": vae})
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    arch = dit_arch(args)
    transformer = build_transformer(arch["heads"], arch["head_dim"])
    which = "dit" if args.no_ema else "dit_ema"
    Checkpoint(args.ckpt, which).load_weights({"transformer": transformer, "text_encoder": text_encoder})
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=build_scheduler(),
        transformer=transformer,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(args.out), safe_serialization=True)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    log(f"export: {vae_stage} + {which} weights -> {args.out} ({size / 1e6:.2f} MB)")


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=["vae", "vae-decoder", "import-vae", "import-dit", "latents", "dit", "export", "all"])
    p.add_argument("--ckpt", type=Path, default=Path("/work/ckpt"))
    p.add_argument("--out", type=Path, default=SHIPPED)
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time budget of the stage")
    p.add_argument("--steps", type=int, default=None,
                   help="vae, vae-decoder, dit: a budget of optimizer steps instead of --minutes (the schedule "
                        "follows the step count, so the run is the same on a faster or slower machine)")
    p.add_argument("--extend", action="store_true", help="on resume, add --minutes (or --steps) to the stage's budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-batch", type=int, default=4)
    p.add_argument("--vae-frames", type=int, default=5)
    p.add_argument("--vae-crop", type=int, default=48)
    p.add_argument("--vae-kl", type=float, default=1e-4)
    p.add_argument("--vae-static-weight", type=float, default=0.0,
                   help="vae: weight of the spread over time of the codes of a clip held still (see static_spread)")
    p.add_argument("--num-clips", type=int, default=2000, help="cached DiT clips at the training size")
    p.add_argument("--big-size", type=int, default=96, help="second, larger training size (resolution variety)")
    p.add_argument("--num-big-clips", type=int, default=256)
    p.add_argument("--big-every", type=int, default=8, help="every Nth DiT step uses the larger size")
    p.add_argument("--big-batch", type=int, default=3)
    p.add_argument("--dit-lr", type=float, default=1e-3)
    p.add_argument("--dit-batch", type=int, default=8)
    p.add_argument("--dit-heads", type=int, default=None,
                   help=f"attention heads of a new DiT (default {DIT_ARCH['heads']}; kept in the checkpoint)")
    p.add_argument("--dit-head-dim", type=int, default=None,
                   help=f"channels per head of a new DiT (default {DIT_ARCH['head_dim']}): Wan's 3D RoPE gives "
                        "each spatial axis 2 * (head_dim // 6) of them, so 64 resolves small offsets better")
    p.add_argument("--decay-frac", type=float, default=0.3, help="final fraction of the DiT budget with cosine decay")
    p.add_argument("--text-lr-mult", type=float, default=3.0, help="learning-rate factor of the text path")
    p.add_argument("--pad-prob", type=float, default=0.5,
                   help="share of DiT steps whose text is zero-padded to 512 like WanPipeline's (else unpadded)")
    p.add_argument("--reinit-text", default=None, metavar="NAME",
                   help="on resume, once per NAME: re-initialise the text encoder, text projection and cross-attention")
    p.add_argument("--text-only-until", type=int, default=0, metavar="STEP",
                   help="until this DiT step, train only the text path, on sigma in [0.5, 1]")
    p.add_argument("--train-text-encoder", action="store_true",
                   help="train the text encoder too (default: it stays at its seeded random initialisation)")
    p.add_argument("--drop-caption", type=float, default=0.1, help="empty-caption rate (for CFG)")
    p.add_argument("--shift", type=float, default=3.0, help="timestep shift, as the scheduler's")
    p.add_argument("--high-sigma-frac", type=float, default=0.3,
                   help="share of DiT samples whose sigma is drawn uniformly from [--high-sigma-min, 1]")
    p.add_argument("--high-sigma-min", type=float, default=0.9)
    p.add_argument("--fg-weight-final", type=float, default=None,
                   help="--fg-weight moves linearly to this value over the DiT budget (default: constant)")
    p.add_argument("--sparse-max-sigma", type=float, default=1.0,
                   help="sparse steps scale their sigmas by this (sparse inference follows dense first steps)")
    p.add_argument("--fg-weight", type=float, default=4.0,
                   help="extra loss weight of the latents the shape covers (0: plain MSE); the shape is "
                        "a fifth of the frame, and with plain MSE the model learned backgrounds only")
    p.add_argument("--frame0-weight", type=float, default=1.0,
                   help="loss weight of latent frame 0 (the causal VAE codes pixel frame 0 alone, unlike the "
                        "later latent frames, and the transformer has no absolute position to tell it apart)")
    p.add_argument("--temporal-weight", type=float, default=0.0,
                   help="weight of an extra loss on the change of the velocity error between consecutive latent "
                        "frames 1..4 (how the clip moves; frame 0 is coded apart by the causal VAE)")
    p.add_argument("--direction-contrast", type=float, default=0.0, metavar="W",
                   help="weight of the direction-word hinge (see direction_contrast); 0: off")
    p.add_argument("--contrast-band", type=float, nargs=2, default=(0.9, 1.0), metavar=("LO", "HI"),
                   help="noise levels whose clips get the direction hinge")
    p.add_argument("--contrast-frame-noise-only", action="store_true",
                   help="the direction hinge only in --frame-noise-prob steps (band: the noisier frames' level)")
    p.add_argument("--contrast-margin", type=float, default=0.05,
                   help="asked gap between reversed- and true-caption error, relative to the latter")
    p.add_argument("--frame-noise-prob", type=float, default=0.0,
                   help="share of DiT steps with one latent frame less noisy than the rest (see frame_noise)")
    p.add_argument("--frame-noise-range", type=float, nargs=2, default=(0.1, 0.8), metavar=("LO", "HI"),
                   help="that frame's sigma is the clip's times U(LO, HI)")
    p.add_argument("--frame-noise-sigma-min", type=float, default=None, metavar="S",
                   help="in the frame-noise steps, draw the clip's sigma from U(S, 1) (default: as other steps)")
    p.add_argument("--frame-noise-every", action="store_true",
                   help="in the frame-noise steps, every latent frame draws its own factor from the range")
    p.add_argument("--frame-noise-hidden", action="store_true",
                   help="in the frame-noise steps, give every token the clip's timestep: the model is not told which "
                        "frame is clearer (see frame_noise)")
    p.add_argument("--from", dest="from_path", type=Path,
                   default=SHIPPED,
                   help="import-vae / import-dit: the WanPipeline folder whose autoencoder / transformer and text encoder to import")
    p.add_argument("--autocast", choices=["none", "bf16"], default="none",
                   help="dit: forward pass under CPU bf16 autocast (1.25x the steps on a CPU with AVX512-BF16; "
                        "refused on a CPU without bf16 instructions, where it is ~6x slower)")
    p.add_argument("--sparse-prob", type=float, default=0.0,
                   help="share of DiT steps run with sparse self-attention (see sparse_table)")
    p.add_argument("--sparse-patterns", nargs="+", default=list(SPARSE_PATTERNS), metavar="SPEC",
                   help="patterns drawn per layer in the sparse steps ('full' keeps a layer dense)")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--no-ema", action="store_true", help="export the raw instead of the EMA weights")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps {args.steps} must be >= 1")
    if args.steps is not None and args.stage not in ("vae", "vae-decoder", "dit"):
        p.error(f"--steps {args.steps} with --stage {args.stage}: a step budget is for one training stage "
                "(vae, vae-decoder, dit)")
    if args.direction_contrast < 0 or args.contrast_margin < 0:
        p.error(f"--direction-contrast {args.direction_contrast} / --contrast-margin {args.contrast_margin}: "
                "both must be >= 0")
    lo, hi = args.contrast_band
    if not 0.0 <= lo <= hi <= 1.0:
        p.error(f"--contrast-band {lo} {hi}: needs 0 <= LO <= HI <= 1 (noise levels)")
    if args.autocast == "bf16" and not cpu_half_matmul_is_native("bfloat16"):
        p.error("--autocast bf16: this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX), so every "
                "matmul runs in a generic loop, ~6x fewer DiT steps than fp32; use --autocast none")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.stage == "vae":
        train_vae(args)
    elif args.stage == "vae-decoder":
        train_vae(args, decoder_only=True)
    elif args.stage == "import-vae":
        import_vae(args)
    elif args.stage == "import-dit":
        import_dit(args)
    elif args.stage == "latents":
        cache_latents(args)
    elif args.stage == "dit":
        train_dit(args)
    elif args.stage == "export":
        export(args)
    else:  # all
        total = args.minutes
        args.minutes = 0.25 * total
        train_vae(args)
        cache_latents(args)
        args.minutes = 0.65 * total
        train_dit(args)
        args.minutes = 0.1 * total
        train_vae(args, decoder_only=True)
        export(args)


if __name__ == "__main__":
    main()
