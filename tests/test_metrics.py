"""PSNR and SSIM against closed forms and an independent brute-force SSIM; clip PSNR and SSIM of
frames whose errors are set by construction."""

import math

import numpy as np
import pytest
import torch

from dit_sparse.metrics import clip_psnr, clip_quality, clip_ssim, gaussian_window, psnr, ssim, to_images


def _brute_ssim(x, y, size=11, sigma=1.5, data_range=1.0):
    """SSIM of one [H, W] image, one window position at a time (float64 numpy)."""
    c = np.arange(size) - (size - 1) / 2
    g = np.exp(-c ** 2 / (2 * sigma ** 2))
    w2 = np.outer(g, g)
    w2 /= w2.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    h, w = x.shape
    vals = []
    for i in range(h - size + 1):
        for j in range(w - size + 1):
            px, py = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            mx, my = (w2 * px).sum(), (w2 * py).sum()
            vx = (w2 * (px - mx) ** 2).sum()
            vy = (w2 * (py - my) ** 2).sum()
            cxy = (w2 * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_closed_form():
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = x + 0.1  # MSE = 0.01 -> 20 dB at data_range 1
    assert psnr(x, y) == pytest.approx(20.0, abs=1e-9)
    assert psnr(x * 255, y * 255, data_range=255.0) == pytest.approx(20.0, abs=1e-9)
    assert psnr(x, x) == math.inf
    noise = torch.zeros(2, 3, 8, 8)
    noise[1] += 0.01  # second image: 40 dB; first identical
    per = psnr(torch.zeros(2, 3, 8, 8), noise, reduction="none")
    assert per.shape == (2,) and per[0] == math.inf and per[1].item() == pytest.approx(40.0)


#: Per-frame PSNRs of a clip from issue 26: two bad frames among near-identical ones.
FRAME_DB = (21.7, 29.3, 62.7, 75.4, 76.2, 75.6, 74.2, 74.5, 75.8)


def _clip_with_frame_mses(mses, shape=(3, 6, 5), seed=0):
    """``(x, y)`` clips ``[F, C, H, W]`` whose frame ``f`` differs by ``+-sqrt(mses[f])`` at every
    pixel (so its MSE is exactly ``mses[f]``); ``x`` in [0.2, 0.8]."""
    x = 0.2 + 0.6 * torch.rand(len(mses), *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sign = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.5, -1.0, 1.0)
    offset = torch.tensor(mses, dtype=torch.float64).sqrt().view(-1, 1, 1, 1)
    return x, x + sign.double() * offset


def test_clip_psnr_is_the_psnr_of_the_clip_mse():
    mses = [10 ** (-db / 10) for db in FRAME_DB]
    x, y = _clip_with_frame_mses(mses)
    # by hand: every frame has the same pixel count, so the clip's MSE is the mean of the frame MSEs
    clip_mse = sum(mses) / len(mses)
    expected = 10 * math.log10(1.0 / clip_mse)
    assert expected == pytest.approx(30.546, abs=1e-3)
    assert clip_psnr(x, y) == pytest.approx(expected, abs=1e-9)
    per_frame = psnr(x, y, reduction="none")
    assert per_frame.tolist() == pytest.approx(FRAME_DB, abs=1e-9)
    mean_db = sum(FRAME_DB) / len(FRAME_DB)  # what averaging the frames' dB gives: 62.8
    assert psnr(x, y) == pytest.approx(mean_db, abs=1e-9) and mean_db > expected + 30
    # data range 255: the same clip scaled
    assert clip_psnr(255 * x, 255 * y, data_range=255.0) == pytest.approx(expected, abs=1e-9)
    q = clip_quality(x, y)
    assert q.psnr == pytest.approx(expected, abs=1e-9) and q.frame_psnr == pytest.approx(FRAME_DB, abs=1e-9)
    assert q.frame_min == pytest.approx(21.7, abs=1e-9) and q.ssim == pytest.approx(clip_ssim(x, y))


def test_clip_psnr_identical_batches_and_errors():
    x, y = _clip_with_frame_mses([1e-2, 1e-4, 0.0, 1e-3])
    assert clip_psnr(x, x) == math.inf and clip_quality(x, x).psnr == math.inf
    assert clip_quality(x, y).frame_psnr[2] == math.inf  # one identical frame does not make the clip inf
    expected = 10 * math.log10(4 / (1e-2 + 1e-4 + 0.0 + 1e-3))
    assert clip_psnr(x, y) == pytest.approx(expected, abs=1e-9)
    # a batch of clips [B, F, C, H, W]: one value per clip; "mean" averages the clips' dB values
    x2, y2 = _clip_with_frame_mses([1e-4] * 4, seed=5)
    batch_x, batch_y = torch.stack([x, x2, x]), torch.stack([y, y2, x])
    per = clip_psnr(batch_x, batch_y, reduction="none")
    assert per.shape == (3,) and per[0].item() == pytest.approx(expected) and per[1].item() == pytest.approx(40.0)
    assert per[2].item() == math.inf
    assert clip_psnr(batch_x[:2], batch_y[:2]) == pytest.approx((expected + 40.0) / 2)
    with pytest.raises(ValueError, match=r"\[\.\.\., F, C, H, W\]"):
        clip_psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="one clip"):
        clip_quality(batch_x, batch_y)


def test_clip_ssim_is_the_mean_over_frames():
    g = torch.Generator().manual_seed(6)
    x = torch.rand(4, 1, 13, 12, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    y[1] = x[1]  # one identical frame
    frames = [_brute_ssim(x[f, 0].numpy(), y[f, 0].numpy()) for f in range(4)]
    assert frames[1] == pytest.approx(1.0)
    assert clip_ssim(x, y) == pytest.approx(float(np.mean(frames)), rel=1e-9)
    assert clip_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    per = clip_ssim(torch.stack([x, x]), torch.stack([y, x]), reduction="none")
    assert per.shape == (2,) and per[0].item() == pytest.approx(float(np.mean(frames)), rel=1e-9)


def test_ssim_identical_and_constant_images():
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(2))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    a, b = 0.2, 0.7  # constant images: variance terms vanish, SSIM = luminance term
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = (2 * a * b + c1) * c2 / ((a * a + b * b + c1) * c2)
    got = ssim(torch.full((1, 16, 16), a, dtype=torch.float64), torch.full((1, 16, 16), b, dtype=torch.float64))
    assert got == pytest.approx(expected, rel=1e-9)


def test_ssim_matches_brute_force_and_orders_distortions():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 19, 23, generator=g)
    noisy = (x + 0.1 * torch.randn(1, 19, 23, generator=g)).clamp(0, 1)
    noisier = (x + 0.3 * torch.randn(1, 19, 23, generator=g)).clamp(0, 1)
    for y in (noisy, noisier, 1 - x):
        assert ssim(x, y) == pytest.approx(_brute_ssim(x[0].numpy(), y[0].numpy()), rel=1e-9, abs=1e-12)
    assert 1.0 > ssim(x, noisy) > ssim(x, noisier) > 0.0
    assert ssim(x, 1 - x) < 0  # anti-correlated structure
    assert ssim(x, noisy) == pytest.approx(ssim(noisy, x), rel=1e-12)  # symmetric


def test_ssim_small_images_and_video_shapes():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 5, 3, 8, 8, generator=g)  # 2 videos x 5 frames, 8x8 < window 11 -> 7 taps
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    per = ssim(x, y, reduction="none")
    assert per.shape == (2, 5)
    assert per[1, 2].item() == pytest.approx(
        np.mean([_brute_ssim(x[1, 2, c].numpy(), y[1, 2, c].numpy(), size=7) for c in range(3)]), rel=1e-9)
    assert ssim(x, y) == pytest.approx(per.mean().item())


def test_window_and_errors():
    w = gaussian_window(11, 1.5)
    assert w.sum().item() == pytest.approx(1.0) and torch.equal(w, w.flip(0)) and w.argmax() == 5
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="window_size"):
        ssim(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), window_size=4)
    with pytest.raises(ValueError, match="reduction"):
        psnr(torch.zeros(1, 4, 4), torch.ones(1, 4, 4), reduction="sum")


def test_to_images_channels_last():
    frames = np.zeros((2, 4, 5, 3), dtype=np.float32)
    frames[..., 1] = 0.5
    t = to_images(frames)
    assert t.shape == (2, 3, 4, 5) and t[:, 1].eq(0.5).all() and t[:, 0].eq(0).all()
