"""scripts/tiny_wan/motion_probe.py: the path slope is 1 for the captioned motion, -1 reversed, 0 still."""

import dataclasses
import math

import numpy as np
import pytest
import torch

import motion_probe as mp
import tiny_clips
from caption_gap import OPPOSITE


def _frames(spec, frames=9, size=64):
    return (tiny_clips.render(spec, frames, size, size).transpose(1, 2, 3, 0) + 1) / 2  # [F, H, W, 3]


@pytest.mark.parametrize("index", range(6))
def test_path_slope_of_rendered_clips(index):
    spec = tiny_clips.sample_spec(5, index)
    assert abs(mp.path_slope(_frames(spec), spec) - 1.0) < 0.1
    # the same clip scored against the opposite caption moves backwards
    opposite = dataclasses.replace(spec, direction=OPPOSITE[spec.direction])
    assert abs(mp.path_slope(_frames(spec), opposite) + 1.0) < 0.1
    still = np.repeat(_frames(spec)[4:5], 9, axis=0)
    assert abs(mp.path_slope(still, spec)) < 1e-6
    # the first half of a 17-frame clip (the same path over twice the frames) moves half as fast
    slow = _frames(spec, frames=17)[:9]
    assert abs(mp.path_slope(slow, spec) - 0.5) < 0.05
    # no frame with the shape colour: no slope
    background = np.repeat(_frames(spec)[:, :1, :1], 64, axis=1).repeat(64, axis=2)
    assert math.isnan(mp.path_slope(background, spec))


def test_noise_levels():
    assert torch.equal(mp.noise_levels("ref", 0.99, 5, 2), torch.tensor([0.99, 0.99, 0.0, 0.99, 0.99]))
    assert torch.equal(mp.noise_levels("all@0.8", 0.99, 3, 0), torch.full((3,), 0.8))


def test_runs_on_the_embedded_model(capsys):
    assert mp.main(["--clips", "2", "--size", "32", "--frames", "5", "--ref", "1", "--levels", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("embedded:tiny-wan: path slope of the x0 prediction")
    assert lines[1].split() == ["setting", "true", "n", "reversed", "n"]
    assert [line.split()[0] for line in lines[3:]] == ["ref", "all@0.5"]
    with pytest.raises(SystemExit):
        mp.main(["--clips", "2", "--frames", "5", "--ref", "3"])  # 5 frames -> 3 latent frames
