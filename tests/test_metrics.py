"""PSNR and SSIM against closed forms and an independent brute-force SSIM."""

import math

import numpy as np
import pytest
import torch

from dit_sparse.metrics import gaussian_window, psnr, ssim, to_images


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
