"""Batch-1 3D convolutions on CPU through oneDNN instead of PyTorch's native ``slow_conv3d``.

PyTorch picks its CPU convolution kernel with a heuristic written for 2D inputs
(``use_mkldnn`` in ATen's ``Convolution.cpp``): a float32 input of batch 1 goes to oneDNN
only if ``N * C * D * H`` (the first four sizes) exceeds 20480; otherwise it runs the native
``slow_conv3d`` (an im2col + matmul loop). For the 5-D inputs of a video autoencoder, whose
frames are fed one or two at a time by a causal cache, that product is small and the
native path is taken, while oneDNN computes the same convolution several times faster
(docs/benchmarks.md). The decode costs the same in a dense and in a sparse run, so a slow
one hides what sparse attention saves.

:func:`use_onednn_conv3d` routes the ``Conv3d`` layers of a pipeline (or module) to
``torch.mkldnn_convolution`` when the call qualifies (CPU, float32, zero padding mode,
numeric padding, no autograd, ``torch.backends.mkldnn.enabled``); every other call, and
every layer after :func:`restore_conv3d`, runs PyTorch's own path. Results differ from the
native kernel only by summation order (about 1e-4 relative).
"""

from __future__ import annotations

from typing import Iterator, Tuple

import torch

_COMPONENTS = ("vae", "transformer", "transformer_2")


def _conv3d_layers(target) -> Iterator[torch.nn.Conv3d]:
    if isinstance(target, torch.nn.Module):
        roots = [target]
    else:  # a pipeline: its model components
        roots = [getattr(target, name, None) for name in _COMPONENTS]
        roots = [r for r in roots if isinstance(r, torch.nn.Module)]
        if not roots:
            raise TypeError(f"target={type(target).__name__}: expected a torch.nn.Module or a diffusers "
                            f"pipeline with one of {', '.join(_COMPONENTS)}")
    seen = set()
    for root in roots:
        for m in root.modules():
            if isinstance(m, torch.nn.Conv3d) and id(m) not in seen:
                seen.add(id(m))
                yield m


def _qualifies(conv: torch.nn.Conv3d, x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (torch.backends.mkldnn.enabled and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.dim() == 5
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def _onednn_conv_forward(self: torch.nn.Conv3d, x: torch.Tensor, weight: torch.Tensor, bias):
    if _qualifies(self, x, weight):
        return torch.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, list(self.padding),
                                        list(self.stride), list(self.dilation), self.groups)
    return torch.nn.Conv3d._conv_forward(self, x, weight, bias)


def _is_switched(conv: torch.nn.Conv3d) -> bool:
    """Whether ``conv`` carries this module's ``_conv_forward`` (an instance attribute)."""
    return getattr(vars(conv).get("_conv_forward"), "__func__", None) is _onednn_conv_forward


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN (MKL-DNN) and the op to call it."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch, "mkldnn_convolution")


def use_onednn_conv3d(target) -> int:
    """Route ``target``'s ``Conv3d`` layers (a diffusers pipeline's ``vae`` / ``transformer`` /
    ``transformer_2``, or any module) to oneDNN where PyTorch would take its slow native CPU
    kernel (see the module docstring). Idempotent; returns the number of layers switched
    (0 when this build has no oneDNN). Undo with :func:`restore_conv3d`.

    Example::

        pipe = WanPipeline.from_pretrained(...)
        dit_sparse.pipelines.cpu_conv.use_onednn_conv3d(pipe)   # a faster CPU decode
    """
    if not onednn_available():
        return 0
    n = 0
    for conv in _conv3d_layers(target):
        if not _is_switched(conv):
            # an instance attribute shadows nn.Conv3d._conv_forward for this layer only; subclasses
            # that pad by hand and call super().forward() (Wan's CausalConv3d) go through it too
            conv._conv_forward = _onednn_conv_forward.__get__(conv, type(conv))
            n += 1
    return n


def restore_conv3d(target) -> int:
    """Undo :func:`use_onednn_conv3d`; returns the number of layers restored."""
    n = 0
    for conv in _conv3d_layers(target):
        if _is_switched(conv):
            del conv._conv_forward
            n += 1
    return n


def switched(target) -> Tuple[int, int]:
    """``(switched, total)`` Conv3d layers of ``target``."""
    layers = list(_conv3d_layers(target))
    return sum(_is_switched(c) for c in layers), len(layers)
