"""Train the embedded tiny Wan text-to-video model (the record of how its weights were made).

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

Training data is procedural (``scripts/tiny_clips.py``): 9-frame 64x64 clips of a coloured
shape moving left/right/up/down on a coloured background, captioned, deterministic from
``--seed``. At 9 x 64 x 64 pixels the latent is 5 x 32 x 32 and the transformer sees a
5 x 16 x 16 token grid (1280 tokens); at 2x spatial size (128 x 128) it is 5 x 32 x 32
(5120 tokens), where self-attention dominates the run time.

Stages (each resumable from ``--ckpt``; each stops after ``--minutes`` of wall time and can
be started again to continue)::

    python scripts/train_tiny.py --stage vae     --ckpt /work/ckpt --minutes 18
    python scripts/train_tiny.py --stage latents --ckpt /work/ckpt       # encode + cache clips
    python scripts/train_tiny.py --stage dit     --ckpt /work/ckpt --minutes 60
    python scripts/train_tiny.py --stage export  --ckpt /work/ckpt --out pipelines/embedded/tiny-wan
    python scripts/train_tiny.py --stage all     --ckpt /work/ckpt --out ... --minutes 80

``vae-decoder`` then fine-tunes only the VAE decoder on full 9-frame clips with the encoder
frozen (so the cached latents and the DiT stay valid); it can run beside ``dit``::

    python scripts/train_tiny.py --stage vae-decoder --ckpt /work/ckpt --minutes 15

``--steps N`` instead of ``--minutes`` gives ``vae``, ``vae-decoder`` or ``dit`` a budget of
optimizer steps: the learning-rate schedule then follows the step count, so a recorded run
can be made again step for step on a machine of another speed (the minutes below are of the
machines that ran them; ``--extend --steps N`` adds N steps to a resumed stage).

``all`` runs them in sequence, splitting ``--minutes`` 25% vae, 65% dit, 10% vae-decoder. Checkpoints are
safetensors files (model + Adam moments) plus a small ``state.json`` per stage, in
``--ckpt`` (outside the repository). Runs single-threaded by default (``--threads``).

How the shipped weights were made (the record; wall minutes on the 2-core machine)::

    --stage vae --minutes 20                                   # 20.0 min, 865 steps
    --stage vae-decoder --minutes 27                           # 27.6 min
    --stage latents --num-clips 1200 --num-big-clips 0 --threads 2  # 1.9 min (64 px)
    --stage latents --big-size 128 --num-big-clips 160         #  0.8 min (128 px)
    --stage dit --minutes 42 --threads 2 --autocast bf16 --high-sigma-frac 0.3 \
        --fg-weight 4 --fg-weight-final 1 --sparse-prob 0.5 --sparse-max-sigma 0.95 \
        --big-size 128 --big-batch 2                           # 42.0 min, 2,430 steps, from scratch
    --stage export                                             # EMA weights
                                                               # 92.3 min in all

What made the caption work is ``--high-sigma-frac`` (see ``sample_sigmas``): every DiT
before it drew its colours from the noise, whatever the prompt (caption scores at chance),
because the shifted logit-normal almost never trained the noise levels where only the
caption can say what to draw. With it: the captioned background in 24 of 24 unseen
captions, the captioned shape colour in 16 (``scripts/caption_score.py``); the velocity error
at sigma 1 is 0.31 with the caption against 1.04 without (``scripts/caption_gap.py``; the
previous DiT: 0.94 against 1.07). The ``--sparse-prob`` steps (half of them: a random local
pattern per layer, sigmas scaled below 0.95 where sparse inference runs) keep the attention
local at 128 px: the budget-0.25 plan's per-layer errors there are 0.07 / 0.16 / 0.20,
against 0.17 / 0.34 / 0.37 for the previous DiT. A twin run with ``--sparse-prob 0.7`` (2,544
steps) scored a little better at 64 px (shape colour 19 of 24) but was less local at 128 px
(0.16 / 0.17 / 0.21) and was not shipped. What is still wrong: the first one or two frames
(the causal VAE encodes pixel frame 0 alone, in a code that correlates only ~0.35 with the
later latent frames', and Wan's transformer has no absolute position to tell that frame
apart), and the shapes are blobs that barely travel (motion and outline scores at chance).
A twin run with ``--frame0-weight 3`` (latent frame 0 weighs 3 in the loss; 2,509 steps):
captioned background 24 of 24, shape colour 17, motion 3 (shipped: 1), outline 2 (shipped:
7), stray share 0.044 (0.074); its first frames show the captioned background more often, but
shapes still appear and vanish between frames. Not shipped: no clear gain. Another with
``--temporal-weight 1`` (an extra loss on how the velocity error changes between latent
frames 1..4; 2,554 steps): background 24, shape colour 15, motion 3, outline 6, stray 0.077.
Not shipped either: motion stays near chance.

A whole recipe with a time-homogeneous autoencoder (2026-11-30, not shipped)::

    --stage vae --minutes 10 --threads 2 --vae-static-weight 0.5   # then --extend --minutes 6:
                                                                  # 16.0 min, 1,700 steps
    --stage vae-decoder --minutes 8 --threads 2                    #  8.0 min, 795 steps
    --stage latents --num-clips 1200 --big-size 128 --num-big-clips 160 --threads 2   # 2.5 min
    --stage dit --minutes 62 [the shipped DiT flags]               # 62.0 min, 3,743 steps
                                                                  # 88.5 min in all

``--vae-static-weight`` (``static_spread``) makes the encoder code a still picture the same at
latent frame 0 as at the later ones: cosine 0.999 between the codes of frame 0 and the later
frames of a clip held still (``static_spread`` 0.0006), against 0.43 (0.21) for the shipped
autoencoder. Two threads made the autoencoder cheap (without the static term 0.43 s per step
against 0.59 on one at batch 4, 5 frames, 48 px crops; with it 0.56 s; the shipped one took
47.6 minutes in its two stages) and better: reconstruction PSNR 28.4-30.1 dB per pixel frame of
9-frame clips against 22.2-26.2 dB. Its DiT, with 1.5x the steps, no longer smears the first
frames, but draws the shape in fewer clips: caption scores background 21 of 24, shape colour
11, motion 2, outline 4, stray 0.033; the shape often appears some frames in, or vanishes, and
where it moves it moves against the caption in most clips (right -> left, up -> down). Frame 0
was not what kept the shapes still. At guidance 2 it scored 24 / 14 / 5 / 5 (the shipped DiT
at guidance 2: 24 / 17 / 4 / 8). A 40-minute DiT with the shipped flags on the same new
autoencoder (2,387 steps, the shipped DiT's budget) scored lower still: 18 / 8 / 2 / 4, stray
0.050. So it is the new latent space, not the longer run, that the DiT draws worse from: a
sharper autoencoder is not an easier one to denoise in.

Why the shapes do not travel (2026-11-30, later; none of it shipped): the DiTs do not read
the direction word. ``scripts/caption_gap.py`` with the opposite direction in the caption
("reversed") gives the shipped DiT's velocity error to the fourth decimal at sigma 0.5-0.97
(+0.0035 at 1, against +1.06 for a wrong caption), and ``caption_score.py --from-sigma S``
shows the model keeping the motion of a true clip noised to 0.58 (24 of 24), of 10 from 0.84 and
of 1 from pure noise: it denoises motion it is shown but never starts any. With
every frame equally noisy the direction is nearly worthless to the loss (at high noise a model
without absolute positions predicts a smear that is the same in every frame; lower down, the
frames show the motion themselves), so ``--frame-noise-prob`` (``frame_noise``) trains with one
latent frame per clip less noisy than the rest, where the direction decides where the shape is
in the others. Runs on the shipped autoencoder:

    8-min fine-tunes of the shipped DiT (--extend --dit-lr 3e-4):
      --high-sigma-frac 1 --high-sigma-min 0.5 (sigma ~ U(0.5, 1)), 520 steps:
          caption scores 24 / 18 / 1 / 5, stray 0.049; from sigma 0.84 motion 13 of 24 (shipped: 10)
      shipped flags + --frame-noise-prob 0.5, 430 steps: 24 / 11 / 1 / 4
    42 min from scratch, shipped flags + --frame-noise-prob 0.5 --frame-noise-range 0.0 0.6:
      2,313 steps (about two minutes shared with tests): 24 / 18 / 1 / 7, stray 0.080;
      from sigma 0.84 motion 15 of 24; reversed - true +0.0017 at 0.97, +0.0114 at 1
    its 6-min continuation on frame-noise steps only (--frame-noise-prob 1 --frame-noise-range
      0.0 0.3 --high-sigma-frac 1 --dit-lr 1e-3), 355 steps: with frame 0.2 x sigma and the
      others at 0.97, the velocity error is 0.0003 *lower* with the reversed caption
    8 min from scratch on frame-noise steps alone (--frame-noise-prob 1 --frame-noise-range
      0.0 0.05 --high-sigma-frac 1 --high-sigma-min 0.99: one frame clean, the rest pure
      noise; 482 steps): the reversed caption costs +0.016 (4%) in that setting - the first
      DiT to read the direction at all
    its 34-min continuation with the shipped flags + --frame-noise-prob 0.5 --frame-noise-range
      0.0 0.6 (42 min in all, 2,398 steps): 23 / 16 / 2 / 4, stray 0.100; from sigma 0.84 motion
      16 of 24 (the most of any DiT); but reversed - true in the frame-noise setting back to
      -0.002 and +0.0020 at 0.97 in caption_gap: the mixed steps unlearned the direction
    10 min from scratch, shipped flags + --frame-noise-prob 0.3 --frame-noise-range 0.0 0.05
      --frame-noise-sigma-min 0.99 (a share of the pure steps throughout; 591 steps, ~180 of
      them frame-noise): reversed - true -0.002 in the pure setting: not learned either

Wan's 3D RoPE rotates separate channel pairs by time and by each spatial axis, so a head's
position preference is a sum of a temporal and a spatial term: it can look one frame back at
one offset, not along a path; a direction-dependent motion needs such a head per frame
offset, its offset set by the caption. With ``attention_head_dim`` 32 each spatial axis gets
2 * (32 // 6) = 10 channels, 5 frequencies of which two (1 and 0.16 rad per token) resolve
offsets of 1-8 tokens; with 64 it gets 10 frequencies (1, 0.40, 0.16, 0.06, ...).
``scripts/motion_probe.py`` measures the circuit directly: the x0 prediction with latent frame
2 clean and the rest at sigma 0.995, decoded, its shape's path slope along the captioned
direction (1: as captioned, 0: copied in place, -1: reversed), with the true caption / the
opposite direction, 24 unseen clips (2026-11-30, later):

    shipped DiT                                                             +0.05 / +0.05
    8 min pure frame-noise steps (the run above that read the direction)    +0.12 / -0.19
    its 4 x 32 twin (same flags, --autocast bf16 --fg-weight 4 --fg-weight-final 1
      --frame-noise-prob 1 --frame-noise-range 0.0 0.05 --high-sigma-frac 1
      --high-sigma-min 0.99; 450 steps)                                     +0.12 / -0.15
    the same with --dit-heads 2 --dit-head-dim 64 (same parameter count; 528 steps)  +0.34 / +0.00
    4 x 32 pure run + 34 min with the shipped flags + --frame-noise-prob 0.4
      --frame-noise-range 0.0 0.5 --frame-noise-sigma-min 0.99 (40% of the steps keep
      the task; 2,470 steps)                                                -0.00 / -0.05
    2 x 64 pure run + the same 34 min (2,688 steps)                         +0.77 / -0.42

After 8 pure minutes both head shapes read the direction a little (true - reversed 0.27 for
4 x 32, 0.34 for 2 x 64); with the usual steps mixed in, the 2 x 64 DiT grew it (1.19: it
moves the clean frame's shape the captioned way in the other frames) and the 4 x 32 one lost
it (it copies the shape in place). So the head shape, not the mix, decided (wider heads or
fewer of them: the two are not separated here). But it does not carry over to sampling:
with every frame at one level (the sampler's) the slope is the same for either direction
(0.61 / 0.65 at sigma 0.95, the noisy true clip's own motion), caption_gap's reversed - true
stays +0.0006 at 0.97, and from pure noise the 2 x 64 DiT scores 22 / 9 / 2 / 4 (stray
0.080; guidance 1: 24 / 9 / 6 / 8), fewer shape colours than the 4 x 32 runs (the 4 x 32
continuation: 23 / 18 / 2 / 6, stray 0.086), though from sigma 0.85 it keeps the motion of 18
of 24 (shipped: 10 from 0.84). A 15-minute fine-tune of it with ``--frame-noise-every
--frame-noise-range 0.3 1.0`` (every frame its own level between clear and pure noise, a
bridge towards equal levels; --dit-lr 3e-4, 991 steps) kept the circuit (+0.56 / -0.36) and
still did not move shapes from noise: 23 / 9 / 1 / 2. Nor did a 10-minute fine-tune with 60%
of the steps at equal levels 0.9-1, where the circuit would pay (``--high-sigma-frac 0.6
--high-sigma-min 0.9``, 30% one-clean-frame steps, --dit-lr 3e-4, 676 steps): slope +0.80 /
-0.48, reversed - true -0.0000 at 0.97, 24 / 8 / 0 / 3. The circuit is gated by the clean
frame (its per-token timestep or its content); sampling needs it to act on evidence spread
thinly over every frame. What began to move it there: a 10-minute fine-tune with the gap
narrowed, the reference frame only a little less noisy than the rest (shipped flags +
``--frame-noise-prob 0.5 --frame-noise-range 0.7 0.95 --frame-noise-sigma-min 0.9``, --dit-lr
3e-4, 620 steps): slope +0.92 / -0.68 with a clean frame, and for the first time a direction
effect at one level for all frames (+0.67 / +0.46 at sigma 0.95; caption_gap reversed - true
+0.0133 at 0.97, against +0.0006 before it); from sigma 0.95 the clips keep or start the
captioned motion in 10 of 24 (the 2 x 64 DiT before it: 5; shipped, from 0.94: 7), from pure
noise still 2 of 24 (scores 23 / 9 / 2 / 4; guidance 1: 23 / 8 / 4 / 5). Ten more minutes
narrowed further (``--frame-noise-range 0.85 1.0``, 628 steps): +0.79 / +0.19 at sigma 0.95
for all frames, reversed - true +0.0271 at 0.97, from sigma 0.95 the captioned motion in 13
of 24 (shape colour 22), from pure noise still 2 (24 / 9 / 2 / 2). None of it shipped.

Two 10-minute continuations of that one (2026-11-30, the next session; --dit-lr 3e-4, shipped
flags + ``--frame-noise-prob 0.5 --frame-noise-sigma-min 0.9``), side by side, and a 20-minute
continuation of the second:

    run                                       steps  probe clean  all@0.95       rev - true  scores g4      g1
    --frame-noise-range 0.93 1.0                626  +0.91/-0.74  +0.75 / +0.06  +0.0341     24/ 8/1/3      24/14/4/8
    --frame-noise-range 0.7 0.95 + hidden       664  +0.91/-0.69  +0.81 / +0.08  +0.0418     24/16/3/6      24/16/4/9
      then --frame-noise-range 0.85 1.0 + hidden  1,295  +0.87/-0.72  +0.75 / -0.07  +0.0634     24/16/8/3      23/13/6/4

(probe: ``motion_probe.py`` slopes true / reversed caption; rev - true: caption_gap at sigma
0.97; scores: background / shape colour / motion / outline of 24 from pure noise, guidance 4
and 1.) ``--frame-noise-hidden`` (``frame_noise``) gives every token the clip's timestep, so
the model is not told which frame is clearer; with the wider gap it kept the shape colours
that the narrowest gap lost, and the direction effect at equal levels grew the most. The
separation at equal levels is now clear (true +0.81 against reversed +0.08), yet from pure
noise those clips still barely moved; 20 more minutes (narrower gap, hidden) made it the
first DiT whose clips from pure noise move the captioned way in a third of the captions (8 of
24, stray 0.066; reversed - true +0.030 even at sigma 1), the shape colour kept (16; over 48
captions 48 / 31 / 18 / 9; with the scheduler's shift 10: 24 / 20 / 8 / 4, stray 0.069). It is
not shipped: its DiT has had 92 minutes in six stages, which with the autoencoder's 47.6 is
half again the recipe's budget. Sampling with more of the schedule at high noise helps a
little (the hidden run with the scheduler's shift 10 instead of 3: motion 4 of 24; with 40
steps: 5; shift 1: 0), and the motion check is thrown off by the smeared first frames: scored
from pixel frame 3 on, 7 of 24 move the captioned way (4 from frame 0), about what shapes
moving in a random direction would score.

The same curriculum on the time-homogeneous autoencoder (``--vae-static-weight``, above; its
smear-free first frames would let the motion check see the whole path), 2 x 64 heads: 8 pure
minutes (524 steps) read the direction only a little (probe +0.16 / +0.05), and after the 34
mixed minutes (2,636 steps) not at all (+0.48 / +0.49 with a clean frame, where the 2 x 64 DiT
on the shipped autoencoder had +0.77 / -0.42; +0.55 / +0.56 at equal levels); from pure
noise, scored from pixel frame 3 on, 20 / 5 / 0 / 4. Stopped there: on that latent space the
circuit does not form, and the DiT draws the shape colour in fewer clips still.

The lineage compressed into the DiT's 42 minutes, on the shipped autoencoder (2 x 64 heads; 8
pure minutes, 16 mixed with ``--frame-noise-prob 0.4 --frame-noise-range 0.0 0.5
--frame-noise-sigma-min 0.99``, then 9 + 9 hidden narrowed-gap minutes, 0.7-0.95 and 0.85-1.0,
--dit-lr 3e-4; 2,478 steps, the pure phase 411 of them, its CPU shared with evals): no
direction at all (probe +0.07 / +0.10 with a clean frame, +0.54 / +0.56 at equal levels;
reversed - true +0.0028 at 0.97), scores 23 / 13 / 1 / 4 (guidance 1: 24 / 14 / 6 / 7). In
the long lineage the circuit grew during the 34 mixed minutes (+0.34 / +0.00 after the pure
phase, +0.77 / -0.42 after them); 16 were not enough to grow it.
Leads: a recipe that fits 90 minutes with the long lineage's DiT steps (a cheaper autoencoder
that keeps the shipped one's latent space, e.g. its two stages on two threads; the DiT's 92
minutes would still need cutting, most safely from the first 10-minute fine-tunes); 4 x 64
heads (twice the attention width; the shape colours may need the heads that 2 x 64 gave up);
a motion larger than the 1.7 tokens per latent frame. A shipped 2 x 64 DiT needs the bench
re-measured: the 20-minute run's attention at 128 px sits elsewhere (3x5x5 mass per layer
0.061 / 0.509 / 0.116, against the shipped 0.215 / 0.067 / 0.037).

The minutes above are of a 2-core AMD EPYC with AVX512-BF16. On a 2-core EPYC with AVX2 only
(2026-12-01) the same steps take about twice as long and more: the 2 x 64 DiT with the shipped
flags but ``--autocast none`` ran 64 steps in 2.5 minutes (26 a minute; with ``--autocast
bf16`` 7 in 1.5, which is why ``main`` refuses bf16 there), the latents took 2.2 + 1.5 minutes,
and ``torch.compile`` of the transformer saved only 5-12% a step (fwd + bwd: the flash-attention
kernels and the matmuls already run near the 80 GFLOP/s of its fp32 matmul). The shipped
recipe's 2,430 DiT steps would take about 93 minutes there, the 92-minute lineage above about 230.
The shipped autoencoder's 47.6 minutes were one thread, the decoder stage beside a DiT run; by
step count on two threads (``--stage vae --steps 865 --threads 2``: 13.7 min on that slower
machine; then ``--stage vae-decoder --steps 600 --threads 2``: 11.5 min) an autoencoder of the
same recipe reconstructs 9-frame clips at 26.9-28.7 dB per pixel frame (the shipped one: 22.2-26.2
on the same 16 clips) and codes frame 0 apart much as the shipped one does (``static_spread``
0.165 against 0.211; cosine of a still clip's frame-0 code with its later codes 0.53 against
0.45; the time-homogeneous one above: 0.999), so it may keep the latent space the motion
lineage formed its circuit on, in some 12-15 minutes on the faster machine (estimated from the
2-2.4x speed ratio of the DiT and the bench; not measured there) instead of 47.6.
A first test with a DiT, side by side at equal steps (the shipped 4 x 32 DiT's flags without bf16,
``--steps 600 --threads 1`` each, the two runs beside each other, 38 minutes; latents as in the
record): caption scores on the shipped autoencoder background 19 / shape colour 7 / motion 1 /
outline 6 of 24, stray 0.199; on this one 21 / 17 / 1 / 7, stray 0.120. At 600 steps the DiT
draws the captioned shape colour in more than twice as many clips on the new autoencoder: not
a harder latent space to denoise in (unlike the time-homogeneous one). Lead: the shipped DiT
recipe, and then the motion lineage, on it, with the ~30 minutes it frees.

The shipped DiT recipe on it, by steps (2026-12-01, the AVX2 machine, fp32; not shipped)::

    --stage vae --steps 865 --threads 2                        # 13.7 min
    --stage vae-decoder --steps 600 --threads 2                # 11.5 min
    --stage dit --steps 2430 --threads 2 [the shipped DiT flags, no --autocast]   # 100.1 min

Caption scores of 24: background 24 / shape colour 17 / motion 3 / outline 6, stray 0.023
(shipped: 24 / 16 / 1 / 7, 0.074); 3x5x5 attention mass at 64 px 0.266 / 0.155 / 0.088. At
128 px it is far more local than the shipped DiT: the README's bench command (its plans
profiled anew by ``docs/plans/make_plans.py``) gave dense 29.9 s, ``b25`` 1.61x at 41.5 dB,
``e10`` 1.14x at 56.5 dB, ``e10p`` 1.43x at 45.2 dB (its last layer stays dense before step 10),
the 5x1x3 tile 1.65x at 41.5 dB. Those means flatter it: per prompt the red circle got 22.5 dB
with the tile (``e10``: 32.9), and the yellow triangle's dense clip at 128 px is black without a
shape (50-60 dB). Its 64 px strip is worse to look at than the shipped one: shapes appear and
vanish between frames and come in several copies (the red circle gone after frame 2, no green
square, no black triangle), where the shipped DiT keeps one blob per clip. The stray share
counts wrong colours, not missing or duplicated shapes.

Is the motion lineage's first stage reproducible? Its 2 x 64 pure run (above: probe +0.34 /
+0.00 after 528 steps, bf16 autocast, the shipped autoencoder) again by steps, fp32, on this
AVX2 machine (2026-12-01; ``--stage dit --steps 528 --threads 2 --dit-heads 2 --dit-head-dim 64
--fg-weight 4 --fg-weight-final 1 --frame-noise-prob 1 --frame-noise-range 0.0 0.05
--high-sigma-frac 1 --high-sigma-min 0.99 --big-size 128 --big-batch 2``, ~20 min each):
``motion_probe.py`` ref slopes true / reversed +0.04 / +0.05 on the shipped autoencoder's
latents and +0.01 / -0.03 on the 2-thread autoencoder's. Neither read the direction: the
earlier run's +0.34 was not the autoencoder's doing, and a recipe that needs it is at the
mercy of numerics (bf16 against fp32) or luck. It is luck: the same command with ``--autocast
bf16`` on an AVX512-BF16 EPYC like the first run's (2026-12-02, shipped autoencoder via
``--stage import-vae``, latents as in the record; 528 steps in 11.2 min) gave +0.04 / +0.04
(with every frame at 0.9: +0.12 / +0.06). The second stage on top of the latter anyway
(``--extend --steps 2160`` with the shipped flags + ``--frame-noise-prob 0.4 --frame-noise-range
0.0 0.5 --frame-noise-sigma-min 0.99``, 2,688 steps in all, ~50 min at ~40 steps a minute):
+0.38 / +0.37 with a clean frame, +0.76 / +0.75 at equal levels 0.9 (the long lineage at this
point: +0.77 / -0.42). It moves the clean frame's shape, the same way for either direction
word: no circuit to build the hidden stages on, so they were not run (checkpoint /work/ckptM).

Would a motion that static pooling cannot fake make the DiT learn it? The shapes are wide
(0.32-0.48 of the frame) and move 0.105 of it per latent frame, so a shape overlaps itself
from one latent frame to the next, and copying it in place costs the loss little (2026-12-01,
not shipped). Two data variants, each with its own latents on the 2-thread autoencoder above
(made on the old clips; ``tiny_clips.TRAVEL`` / ``SIZE_RANGE`` edited in a copy of the
scripts), the 600-step DiT of the side-by-side test (same flags, ``--steps 600 --threads 1``,
the two beside each other, 38.9 min each); caption scores of 24 (background / shape colour /
motion / outline, stray share):

    clips                                          scores g4       stray
    TRAVEL 0.42, SIZE_RANGE 0.16-0.24 (as shipped)   21 / 17 / 1 / 7   0.120
    TRAVEL 0.6 (0.15 of the frame per latent frame)  22 /  9 / 1 / 4   0.107
    TRAVEL 0.6, SIZE_RANGE 0.12-0.16                 24 /  1 / 1 / 1   0.056
      (shape colour threshold 2% there: a triangle of half-extent 0.12 covers 2.9%)

Neither moved a shape: the faster motion halved the clips with the captioned shape colour,
and the smaller shapes were left out (the model draws the background alone). At this budget
the wide, slow shapes are the easier data; the motion must come from the training signal,
not from the clips.

Can the loss pay for the direction word directly? ``--direction-contrast W`` (``direction_contrast``)
adds a hinge asking each clip's velocity error with its caption to be ``--contrast-margin`` (of
itself) below the error with the opposite direction word on the same noisy input, for clips in
``--contrast-band`` (2026-12-01, the AVX512-BF16 machine, bf16 autocast, two threads; the shipped
autoencoder via ``--stage import-vae``, latents as in the record; ``--stage import-dit`` seeds a
fine-tune from the shipped DiT; none shipped). Results (probe: ``motion_probe.py`` ref slopes
true / reversed; rev - true: ``caption_gap.py`` at sigma 0.97 and 1; scores g4 of 24)::

    run                                                    steps  probe ref      rev - true         scores g4
    shipped DiT + 9 min, W 1, band 0.9-1 (all steps)        383    -0.14 / -0.15  +0.0019 / -0.0013  -
    shipped DiT + 10 min, W 1, margin 0.1, only on hidden
      frame-noise steps (prob 0.5, range 0.7-0.95, others
      at 0.9-1; exported at the last save)                   ~300   +0.08 / +0.05  -                  -
    2 x 64 from scratch, 28 min, shipped flags + W 2, margin
      0.1, on frame-noise steps (prob 0.4, range 0.0-0.5,
      others at 0.99-1)                                      1,197  +0.04 / +0.03  +0.0049 / +0.0172  24 / 9 / 0 / 1
    the last + 14 min (``--extend``), hidden frame noise narrowed
      (range 0.7-0.95, others at 0.9-1), ``--dit-lr 3e-4``, W 2    ~300   not evaluated (logged gap within +-0.02)

The training log's mean relative gap (reversed - true over true, per clip) stayed within
+-0.02 of zero throughout, far from the 0.1 asked: at these budgets the gradient of the hinge
does not build the circuit either. In the band near sigma 1 no model can meet it (without
absolute positions the best prediction from pure noise is the same for either direction), so
there it only adds noise; with a clearer frame it could be met, and was not.

The previous DiT (shipped until 2026-11-30) was trained ``--stage dit --minutes 42 --threads
2`` (1,994 steps, fp32) on the same autoencoder and 64 + 96 px latents.

The autoencoder was trained in an earlier session and carried over to the machine of the
DiT run with ``--stage import-vae`` (which seeds ``<ckpt>/vae`` and ``<ckpt>/vae_dec`` from
the shipped folder). The two VAE stages ran before the clips' paths were centred
(``tiny_clips.JITTER``; before, start points were uniform over the frame); the autoencoder
sees the same shapes, colours and sizes either way, and its reconstructions of the centred
clips are sharp. Otherwise the DiT used the defaults: frozen seeded text encoder, text
unpadded in half the steps (``--pad-prob``).

The history below is of the DiTs before ``--high-sigma-frac`` (they ran with what is now
``--high-sigma-frac 0``; the default became 0.3 with the shipped run); what they lacked
explains much of it. The loss weight is what made shapes appear. Two earlier DiTs trained with plain MSE (42
minutes from scratch; and 143.5 minutes in six resumed stages with text-path restarts,
``--reinit-text``, ``--text-only-until``, ``--train-text-encoder``: those flags remain for
such repairs) learned the background colour from the caption and left the shape out: the
shape covers about an eighth of the latent, and Wan's transformer has no absolute position
signal (3D RoPE is relative and the patch embedding has no padding), so from pure noise the
shape's place is uncertain and the MSE-optimal prediction is the plain background
(``scripts/denoise_check.py``: at sigma 0.6 the x0 prediction drew the shape in place, at
0.9 it did not). Weighted, the same budget gives blobs of the captioned colour on the
captioned background (README strip); the outlines are not yet circles, squares or triangles.
A second run with the same recipe but 128 px clips as the larger size (``--big-size 128
--big-batch 2``, 42 min, 1,933 steps), meant to make the model at home on the 5x32x32 token
grid of the 2x benchmark, drew worse strips at 64 px (shape and background colours swapped in
two rows) and was not shipped.

Two further DiTs trained locality in (``--sparse-prob``: in that share of the steps every
self-attention layer runs a pattern drawn from ``--sparse-patterns``, see ``sparse_table``),
both 42 minutes from scratch with ``--autocast bf16 --threads 2`` on the shipped autoencoder:

    --sparse-prob 0.5 --big-size 128 --big-batch 2     # 1,954 steps (~10 min shared with evals)
    --sparse-prob 0.65                                 # 2,778 steps (96 px; text encoder in fp32)

Both made the attention at 128 px far more local (the second: the budget-0.25 plan's relative
errors per layer 0.13 / 0.16 / 0.24 against 0.27 / 0.43 / 0.41 for the then shipped DiT; the
README's bench with sliding tile 5x1x3 at 1.78x: 17.2 dB against 13.0 dB), but at 64 px both
paint the captioned shape and background colours in patches of similar size instead of one
blob on one background (with local attention each region decides for itself which colour it
carries), so neither was shipped. A 12-minute fine-tune of the then shipped DiT the same way
(``--extend --minutes 12 --dit-lr 3e-4 --sparse-prob 0.5 --autocast bf16``, 790 more steps)
kept one blob on one background and drew cleaner blobs at 64 px than its strip (the
extra steps, more likely than the sparsity), but was no more local at 128 px (sliding tile
5x1x3 12.8 dB at 1.81x; per-head budget-0.25 plan 16.6 dB at 1.59x) and puts the recipe at
104 minutes. Leads: sparse steps only at low noise (sigma < ~0.6, after the layout is set);
a cheaper autoencoder recipe to give the DiT more of the 90 minutes (tried 2026-11-30, above:
24 minutes on two threads; the DiT's 1.5x steps did not make it draw better).

``scripts/caption_score.py`` puts numbers on "recognisable" (24 unseen captions; share of
clips whose most common colour is the captioned background / whose shape colour is second /
whose shape moves the captioned way / whose outline matches; true clips: 1 / 1 / 1 / 1).
The DiT shipped until 2026-11-30: 0.17 / 0.17 / 0.21 / 0.33 (chance), the shape's colour
spreading over most of the frame. Two more 42-minute DiTs from scratch on the shipped autoencoder, not shipped:

    --autocast bf16                      # 2,580 steps: 0.21 / 0.21 / 0.04 / 0.33
    --autocast bf16 --fg-weight 1        # 2,650 steps: 0.21 / 0.25 / 0.00 / 0.33, stray 0.62

The first draws much like that one (cleaner in two rows of the strip, worse in one);
in the second the caption never took hold (yellow and white fields for every caption, text
gap ~0 throughout). The spreading colour is what the loss weight asks for: where the shape
is with probability p, the weighted MSE is minimised by a prediction (1 + w) p / ((1 + w) p
+ 1 - p) of the way from background to shape colour (w = ``--fg-weight``; p = 0.2 and w = 4
give 0.56), so every sampling step leans a little more towards the shape. A weight that
decays with the step count, or one applied per clip rather than per pixel, would keep the
push towards drawing a shape without that bias.
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
    and the text gradient is drowned (a first run learned no conditioning in 300 steps).
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
    negative (measured: -5.4 on average, 0.05% of the attention mass, no effect of the
    caption on the output). See ``--pad-prob`` for what prevents it.
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
        if crop < SIZE:  # random crops: convolutions do not care, and it is 1.8x cheaper
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
    caption: at sigma 1 the previous embedded DiT's velocity error was 0.94 with the caption
    and 1.07 without (``scripts/caption_gap.py``), so the first steps drew a colour from the
    noise; the shipped one, trained with ``high_frac`` 0.3: 0.31 against 1.04. (An A/B of 290
    steps from scratch, errors on cached training clips with unpadded text: 0.43 with the
    high band, 0.89 without.)
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
    caption cost ``caption_gap.py`` +0.0035 at sigma 1): at high noise a prediction that is the
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
        # features; trained jointly it collapsed (output std 0.05 after 250 steps: the cheapest
        # way to silence a text path that did not help yet), and the caption never took.
        # Frozen, the projection and cross-attention learn to read it (an isolated run on the
        # trained video model: caption-shuffled loss 0.25 vs 0.18 true after 200 steps).
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
    # and loss stay fp32. Measured on the 2-core AMD EPYC with AVX512-BF16, 90 s from scratch:
    # 96 steps vs 77 in fp32 (1.25x), the same loss curve. Used for the shipped weights. On a
    # CPU without bf16 instructions it is ~6x slower than fp32, so main() refuses it there.
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
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "pipelines/embedded/tiny-wan")
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
                   default=Path(__file__).resolve().parents[1] / "pipelines/embedded/tiny-wan",
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
        # the 2 x 64 DiT on a 2-core AVX2 EPYC: 7 steps in 90 s under bf16 autocast, 41 in fp32
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
