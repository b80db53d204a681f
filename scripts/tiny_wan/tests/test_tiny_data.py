"""Quick checks of the procedural clips the embedded tiny model is trained on."""

import numpy as np
import pytest

import tiny_clips


def _shape_centroids(clip: np.ndarray, spec: tiny_clips.ClipSpec) -> np.ndarray:
    """Per frame (x, y) centroid of the pixels that are closer to the shape colour."""
    fg = np.asarray(tiny_clips.COLORS[spec.color])[:, None, None] * 2 - 1
    bg = np.asarray(tiny_clips.COLORS[spec.background])[:, None, None] * 2 - 1
    out = []
    for f in range(clip.shape[1]):
        frame = clip[:, f]
        w = (((frame - bg) ** 2).sum(0) > ((frame - fg) ** 2).sum(0)).astype(np.float64)
        ys, xs = np.mgrid[0 : frame.shape[1], 0 : frame.shape[2]]
        out.append(((w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()))
    return np.asarray(out)


def test_deterministic_from_seed_and_index():
    a, ca = tiny_clips.make_clip(3, 17)
    b, cb = tiny_clips.make_clip(3, 17)
    assert ca == cb and np.array_equal(a, b)
    batch, caps = tiny_clips.make_batch(3, 15, 4)
    assert caps[2] == ca and np.array_equal(batch[2], a)  # index, not position in a batch
    c, cc = tiny_clips.make_clip(4, 17)
    assert cc != ca or not np.array_equal(a, c)


@pytest.mark.parametrize("frames,height,width", [(9, 64, 64), (17, 96, 128)])
def test_shape_dtype_and_range(frames, height, width):
    x, caption = tiny_clips.make_clip(0, 1, frames, height, width)
    assert x.shape == (3, frames, height, width) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    words = caption.split()
    assert set(words) <= set(tiny_clips.vocabulary())
    assert words[0] == "a" and words[3] == "moving" and words[-1] == "background"


@pytest.mark.parametrize("index", range(24))
def test_caption_matches_motion_and_colours(index):
    spec = tiny_clips.sample_spec(0, index)
    x, caption = tiny_clips.make_clip(0, index)
    assert caption == spec.caption
    assert spec.color != spec.background
    xy = _shape_centroids(x, spec)
    dx, dy = xy[-1] - xy[0]
    expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[spec.direction]
    moved = (dx, dy)
    main = int(np.argmax(np.abs(moved)))
    assert expected[main] != 0 and np.sign(moved[main]) == expected[main], (caption, moved)
    assert abs(moved[main]) > 0.3 * 64 * tiny_clips.TRAVEL
    # the shape stays mostly inside the frame, on the named background
    corner = x[:, 0, 0, 0]
    if not _covers_corner(spec):
        assert np.allclose(corner, np.asarray(tiny_clips.COLORS[spec.background]) * 2 - 1, atol=1e-5)


def _covers_corner(spec: tiny_clips.ClipSpec) -> bool:
    return spec.x0 - 1.3 * spec.size < 1 / 64 and spec.y0 - 1.3 * spec.size < 1 / 64


def test_all_words_reachable():
    words = set()
    for i in range(400):
        words.update(tiny_clips.sample_spec(0, i).caption.split())
    assert words == set(tiny_clips.vocabulary())


def test_caption_fixes_the_path_up_to_the_jitter():
    # the path is centred on the frame: two clips with the same caption differ only by the
    # jitter and the shape size, so the caption tells where the shape is in every frame
    for i in range(60):
        spec = tiny_clips.sample_spec(0, i)
        mid = np.asarray(spec.center(0.5))
        assert np.all(np.abs(mid - 0.5) <= tiny_clips.JITTER + 1e-9), (i, mid)
        dx, dy = tiny_clips.DIRECTIONS[spec.direction]
        start = np.asarray(spec.center(0.0))
        assert np.allclose(start - mid, [-dx * tiny_clips.TRAVEL / 2, -dy * tiny_clips.TRAVEL / 2])


@pytest.mark.parametrize("index", [0, 5, 11])
def test_coverage_marks_the_shape_pixels(index):
    """The loss weight's mask: coverage is 1 where the clip shows the shape colour, 0 where it
    shows the background, and it is the shape of the clip, frame by frame."""
    spec = tiny_clips.sample_spec(0, index)
    clip = tiny_clips.render(spec, 9, 48, 40)
    cov = tiny_clips.coverage(spec, 9, 48, 40)
    assert cov.shape == (9, 48, 40) and cov.min() >= 0 and cov.max() <= 1
    fg = np.asarray(tiny_clips.COLORS[spec.color])[:, None, None, None] * 2 - 1
    bg = np.asarray(tiny_clips.COLORS[spec.background])[:, None, None, None] * 2 - 1
    assert np.allclose(clip[:, cov == 1], np.broadcast_to(fg[..., 0, 0], (3, int((cov == 1).sum()))), atol=1e-6)
    assert np.allclose(clip[:, cov == 0], np.broadcast_to(bg[..., 0, 0], (3, int((cov == 0).sum()))), atol=1e-6)
    assert 0.02 < (cov > 0.5).mean() < 0.5
    # the shape moves: its frames differ
    assert not np.array_equal(cov[0], cov[-1])
