"""scripts/tiny_wan/caption_score.py: every check passes on the true clips and fails on a clip that breaks it."""

import numpy as np
import pytest
import torch

import caption_score as cs
import tiny_clips

SPECS = [tiny_clips.sample_spec(cs.DATASET_SEED, i) for i in range(12)]


def test_true_clips_pass_every_check():
    for spec in SPECS:
        scores = cs.score_clip(cs.true_frames(spec, 9, 64), spec)
        assert all(scores[c] == 1.0 for c in cs.CHECKS), (spec.caption, scores)
        assert scores["stray"] < 0.01


def _with(spec, **changes):
    fields = dict(vars(spec))
    fields.update(changes)
    return tiny_clips.ClipSpec(**fields)


@pytest.mark.parametrize("spec", SPECS[:4], ids=lambda s: s.caption)
def test_each_check_fails_on_a_clip_that_breaks_it(spec):
    swapped = _with(spec, color=spec.background, background=spec.color)
    scores = cs.score_clip(cs.true_frames(swapped, 9, 64), spec)
    assert scores["background"] == 0.0 and scores["shape_colour"] == 0.0

    still = np.repeat(cs.true_frames(spec, 9, 64)[:1], 9, axis=0)  # the first frame held
    assert cs.score_clip(still, spec)["motion"] == 0.0
    reverse = {"left": "right", "right": "left", "up": "down", "down": "up"}[spec.direction]
    assert cs.score_clip(cs.true_frames(_with(spec, direction=reverse), 9, 64), spec)["motion"] == 0.0

    other = next(s for s in tiny_clips.SHAPES if s != spec.shape)
    assert cs.score_clip(cs.true_frames(_with(spec, shape=other), 9, 64), spec)["outline"] == 0.0

    flat = np.broadcast_to(np.asarray(tiny_clips.COLORS[spec.background], np.float32), (9, 64, 64, 3))
    scores = cs.score_clip(np.ascontiguousarray(flat), spec)  # background only, no shape
    assert scores["background"] == 1.0 and scores["shape_colour"] == 0.0 and scores["motion"] == 0.0


def test_largest_component_and_fill_ratio():
    mask = np.zeros((12, 12), bool)
    mask[1:3, 1:3] = True  # 4 pixels
    mask[5:11, 4:10] = True  # 36 pixels, a square
    mask[5, 4] = False
    part = cs.largest_component(mask)
    assert part.sum() == 35 and not part[1:3, 1:3].any()
    assert cs.fill_ratio(mask) == pytest.approx(35 / 36)
    assert np.isnan(cs.fill_ratio(np.zeros((8, 8), bool)))


def test_main_at_ci_size(capsys):
    assert cs.main(["--count", "2", "--frames", "5", "--size", "32", "--steps", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split() == ["clips", *cs.CHECKS, "stray"]
    rows = {line.rsplit(None, 5)[0]: [float(v) for v in line.split()[-5:]] for line in lines[3:]}
    assert rows["true clips"][:4] == [1.0] * 4
    assert len(rows) == 2 and all(0.0 <= v <= 1.0 for values in rows.values() for v in values)


def test_from_sigma_starts_from_the_true_clip(capsys):
    # at low noise the sampler must end near the true clip: the captioned background and
    # shape colour in place; from pure noise the same call is free to draw anything
    assert cs.main(["--count", "2", "--frames", "9", "--size", "64", "--steps", "6",
                    "--from-sigma", "0.3", "--guidance", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "from the true clips noised to sigma 0.3" in out[0]
    model_row = [float(v) for v in out[-1].split()[-5:]]
    assert model_row[:2] == [1.0, 1.0] and model_row[4] < 0.1


def test_denoise_from_low_noise_ends_near_the_true_clip():
    from eval_plan import load

    pipe, _, _ = load(None)
    call = dict(num_frames=9, height=64, width=64, num_inference_steps=6, guidance_scale=1.0)
    spec = tiny_clips.sample_spec(cs.DATASET_SEED, 1)
    truth = cs.true_frames(spec, 9, 64)
    psnr = {}
    for sigma in (0.3, 1.0):
        with torch.no_grad():
            frames = cs.denoise_from(pipe, spec, 0, call, sigma)
        assert frames.shape == truth.shape
        psnr[sigma] = 10 * np.log10(1 / np.mean((frames - truth) ** 2))
    # from sigma 0.3 the clip is kept up to the autoencoder's error (~24 dB); from pure noise
    # the model draws its own clip (~12 dB)
    assert psnr[0.3] > 20 and psnr[0.3] > psnr[1.0] + 6, psnr


def test_from_sigma_out_of_range_is_an_error():
    with pytest.raises(SystemExit) as info:
        cs.main(["--from-sigma", "1.5"])
    assert info.value.code == 2
