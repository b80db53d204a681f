"""Image and video quality metrics: PSNR and SSIM, in torch only.

* :func:`psnr` - peak signal-to-noise ratio, ``10 log10(data_range^2 / MSE)`` in dB, per
  image (``inf`` for identical images).
* :func:`clip_psnr` - the PSNR of a whole clip: the same formula with the MSE taken over every
  pixel of every frame, as video papers report it. It is not the mean of the frames' dB
  values: a mean of logarithms lets frames that barely differ (70+ dB) hide the ones that do.
  Frames of 21.7, 29.3, 62.7, 75.4, 76.2, 75.6, 74.2, 74.5 and 75.8 dB average 62.8 dB; the
  clip's PSNR is 30.5 dB, set by its two worst frames.
* :func:`ssim` - structural similarity (Wang, Bovik, Sheikh and Simoncelli, "Image Quality
  Assessment: From Error Visibility to Structural Similarity", IEEE TIP 2004), with the
  paper's defaults: an 11 x 11 Gaussian window of sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``,
  local statistics over the window positions that fit inside the image ("valid", as in the
  reference MATLAB code), averaged over positions and channels. Images smaller than the
  window use a window of the image's smaller side (odd).
* :func:`clip_ssim` - the SSIM of a whole clip: the mean of its frames' SSIM. SSIM is already a
  mean of local statistics over window positions, and every frame has the same positions, so
  the mean over frames is the mean over every window of the clip.
* :func:`clip_quality` - both for one clip, with the per-frame PSNRs beside them.

Inputs are ``[..., C, H, W]`` tensors (a video is ``[F, C, H, W]``, a batch of videos
``[B, F, C, H, W]``), any float dtype (computed in float64). Results are per image
(``reduction="none"``, shape ``[...]``) or their mean (``"mean"``, a float); the clip
functions take ``[..., F, C, H, W]`` and give one value per clip (shape ``[...]``) or their
mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

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

    With ``reduction="mean"`` the per-image dB values are averaged (an ``inf`` makes it
    ``inf``); for the PSNR of a video use :func:`clip_psnr`, not this mean over its frames.
    """
    return _psnr_over(x, y, data_range, reduction, dims=3)


def clip_psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, reduction: str = "mean"):
    """PSNR in dB of each ``[F, C, H, W]`` clip of ``x`` against ``y``: ``10 log10(data_range^2 /
    MSE)`` with the MSE over all pixels of all ``F`` frames (``inf`` when equal).

    ``reduction="none"`` gives shape ``x.shape[:-4]``; ``"mean"`` averages the clips' dB values.
    """
    if isinstance(x, torch.Tensor) and x.dim() < 4:
        raise ValueError(f"clips must be [..., F, C, H, W], got shape {tuple(x.shape)}")
    return _psnr_over(x, y, data_range, reduction, dims=4)


def _psnr_over(x, y, data_range: float, reduction: str, dims: int):
    """PSNR with the MSE over the last ``dims`` dimensions."""
    x, y = _check(x, y)
    if not data_range > 0:
        raise ValueError(f"data_range={data_range!r} must be > 0")
    mse = (x - y).pow(2).flatten(-dims).mean(-1)
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


def clip_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, reduction: str = "mean", **kwargs):
    """SSIM of each ``[F, C, H, W]`` clip of ``x`` against ``y``: the mean of its frames' SSIM.

    SSIM is a mean of local statistics over window positions; every frame has the same
    positions, so this is the mean over every window of the clip (module docstring).
    ``kwargs`` are :func:`ssim`'s window parameters. Shapes as in :func:`clip_psnr`.
    """
    if isinstance(x, torch.Tensor) and x.dim() < 4:
        raise ValueError(f"clips must be [..., F, C, H, W], got shape {tuple(x.shape)}")
    per_frame = ssim(x, y, data_range=data_range, reduction="none", **kwargs)
    return _reduce(per_frame.mean(-1), reduction)


@dataclass(frozen=True)
class ClipQuality:
    """One clip against its reference: :func:`clip_psnr` and :func:`clip_ssim`, and the PSNR of
    each frame (``inf`` where a frame is identical)."""

    psnr: float
    ssim: float
    frame_psnr: List[float]

    @property
    def frame_min(self) -> float:
        """The worst frame's PSNR."""
        return min(self.frame_psnr)


def clip_quality(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> ClipQuality:
    """:class:`ClipQuality` of one ``[F, C, H, W]`` clip ``x`` against ``y``."""
    if isinstance(x, torch.Tensor) and x.dim() != 4:
        raise ValueError(f"one clip must be [F, C, H, W], got shape {tuple(x.shape)}")
    return ClipQuality(psnr=clip_psnr(x, y, data_range), ssim=clip_ssim(x, y, data_range),
                       frame_psnr=psnr(x, y, data_range, reduction="none").tolist())


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


__all__ = ["psnr", "ssim", "clip_psnr", "clip_ssim", "ClipQuality", "clip_quality", "gaussian_window",
           "to_images"]
