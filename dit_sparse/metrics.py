"""Image and video quality metrics: PSNR and SSIM, in torch only.

* :func:`psnr` - peak signal-to-noise ratio, ``10 log10(data_range^2 / MSE)`` in dB, per
  image (``inf`` for identical images).
* :func:`ssim` - structural similarity (Wang, Bovik, Sheikh and Simoncelli, "Image Quality
  Assessment: From Error Visibility to Structural Similarity", IEEE TIP 2004), with the
  paper's defaults: an 11 x 11 Gaussian window of sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``,
  local statistics over the window positions that fit inside the image ("valid", as in the
  reference MATLAB code), averaged over positions and channels. Images smaller than the
  window use a window of the image's smaller side (odd).

Inputs are ``[..., C, H, W]`` tensors (a video is ``[F, C, H, W]``, a batch of videos
``[B, F, C, H, W]``), any float dtype (computed in float64). Results are per image
(``reduction="none"``, shape ``[...]``) or their mean (``"mean"``, a float).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, y: torch.Tensor):
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"x and y shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() < 3:
        raise ValueError(f"images must be [..., C, H, W], got shape {tuple(x.shape)}")
    return x.double(), y.double()


def _reduce(values: torch.Tensor, reduction: str):
    if reduction == "none":
        return values
    if reduction == "mean":
        return float(values.mean())
    raise ValueError(f"reduction={reduction!r} must be 'mean' or 'none'")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, reduction: str = "mean"):
    """PSNR in dB of each ``[C, H, W]`` image of ``x`` against ``y`` (``inf`` when equal).

    With ``reduction="mean"`` the per-image values are averaged (an ``inf`` makes it ``inf``).
    """
    x, y = _check(x, y)
    if not data_range > 0:
        raise ValueError(f"data_range={data_range!r} must be > 0")
    mse = (x - y).pow(2).flatten(-3).mean(-1)
    values = 10.0 * torch.log10(data_range ** 2 / mse)  # mse == 0 -> inf
    return _reduce(values, reduction)


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1D Gaussian of ``size`` taps, float64."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, reduction: str = "mean"):
    """Mean SSIM of each ``[C, H, W]`` image of ``x`` against ``y`` (1 when equal)."""
    x, y = _check(x, y)
    if not data_range > 0:
        raise ValueError(f"data_range={data_range!r} must be > 0")
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size={window_size!r} must be a positive odd int")
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    size = min(window_size, h, w)
    if size % 2 == 0:
        size -= 1
    g = gaussian_window(size, sigma)
    xs = x.reshape(-1, 1, h, w)
    ys = y.reshape(-1, 1, h, w)

    def blur(t):  # separable Gaussian, valid positions only
        t = F.conv2d(t, g.view(1, 1, size, 1))
        return F.conv2d(t, g.view(1, 1, 1, size))

    mu_x, mu_y = blur(xs), blur(ys)
    sxx = blur(xs * xs) - mu_x.pow(2)
    syy = blur(ys * ys) - mu_y.pow(2)
    sxy = blur(xs * ys) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (sxx + syy + c2))
    per_image = s.reshape(*lead, c, -1).mean((-1, -2)) if lead else s.reshape(c, -1).mean()
    return _reduce(per_image, reduction)


def to_images(frames, channels_last: bool = True) -> torch.Tensor:
    """Pipeline output frames as a float64 ``[..., C, H, W]`` tensor.

    ``frames``: a numpy array or tensor (``[..., H, W, C]`` when ``channels_last``, as
    diffusers returns with ``output_type="np"``), or PIL images / lists of them (scaled from
    0..255 to 0..1).
    """
    import numpy as np

    if isinstance(frames, (list, tuple)):
        return torch.stack([to_images(f, channels_last) for f in frames])
    if not isinstance(frames, (torch.Tensor, np.ndarray)):  # a PIL image
        frames, channels_last = np.asarray(frames, dtype=np.float32) / 255.0, True
        if frames.ndim == 2:
            frames = frames[..., None]
    t = torch.as_tensor(frames).double()
    return t.movedim(-1, -3) if channels_last else t


__all__ = ["psnr", "ssim", "gaussian_window", "to_images"]
