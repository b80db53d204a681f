"""Batch-1 ``Conv3d`` on CPU through oneDNN (``dit_sparse.pipelines.cpu_conv``).

Checked: the switched layers call oneDNN (not ``slow_conv3d``) and agree with PyTorch's own
result for strided, dilated, grouped, padded and bias-free convolutions and for a subclass
that pads by hand (Wan's ``CausalConv3d``); calls that do not qualify (autograd, string
padding, non-zero padding modes, float64) keep PyTorch's path; restore is exact; a whole
``WanPipeline`` is switched, its decode unchanged within float32 rounding; the CLI switches
on CPU unless ``--native-conv3d``.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from dit_sparse.pipelines import cpu_conv

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.skipif(not cpu_conv.onednn_available(), reason="this PyTorch build has no oneDNN")


def conv_ops(fn) -> set:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    kernels = ("aten::slow_conv3d_forward", "aten::slow_conv_dilated3d", "aten::mkldnn_convolution")
    return {e.key for e in prof.key_averages() if e.key in kernels}


@pytest.mark.parametrize("kwargs, shape", [
    (dict(in_channels=8, out_channels=8, kernel_size=3), (1, 8, 3, 18, 18)),
    (dict(in_channels=8, out_channels=16, kernel_size=(1, 2, 2), stride=(1, 2, 2)), (1, 8, 5, 16, 16)),
    (dict(in_channels=8, out_channels=4, kernel_size=3, padding=(1, 2, 0), dilation=(1, 2, 1), bias=False),
     (1, 8, 4, 12, 10)),
    (dict(in_channels=8, out_channels=8, kernel_size=3, groups=2, padding=1), (1, 8, 2, 9, 11)),
    (dict(in_channels=4, out_channels=6, kernel_size=(3, 1, 1)), (1, 4, 5, 7, 7)),
])
def test_switched_layer_runs_onednn_and_matches_pytorch(kwargs, shape):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(**kwargs)
    x = torch.randn(shape)
    with torch.no_grad():
        want = conv(x)
        if conv.groups == 1:  # what PyTorch picks by itself (grouped convolutions it sends to oneDNN)
            assert conv_ops(lambda: conv(x)) in ({"aten::slow_conv3d_forward"}, {"aten::slow_conv_dilated3d"})
        assert cpu_conv.use_onednn_conv3d(conv) == 1
        assert conv_ops(lambda: conv(x)) == {"aten::mkldnn_convolution"}
        got = conv(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


class HandPadded(torch.nn.Conv3d):
    """Pads in forward and calls ``super().forward`` with padding 0, as Wan's CausalConv3d does."""

    def forward(self, x):
        return super().forward(torch.nn.functional.pad(x, (1, 1, 1, 1, 2, 0)))


def test_subclass_that_pads_by_hand_is_switched_too():
    torch.manual_seed(1)
    conv = HandPadded(6, 6, 3)
    x = torch.randn(1, 6, 2, 10, 10)
    with torch.no_grad():
        want = conv(x)
        cpu_conv.use_onednn_conv3d(torch.nn.Sequential(conv))
        assert conv_ops(lambda: conv(x)) == {"aten::mkldnn_convolution"}
        torch.testing.assert_close(conv(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["autograd", "same", "reflect", "float64", "mkldnn-off"])
def test_calls_that_do_not_qualify_keep_pytorchs_path(case):
    torch.manual_seed(2)
    kw = dict(padding="same") if case == "same" else dict(padding=1, padding_mode="reflect") if case == "reflect" else {}
    conv = torch.nn.Conv3d(4, 4, 3, **kw)
    x = torch.randn(1, 4, 3, 8, 8)
    if case == "float64":
        conv, x = conv.double(), x.double()
    cpu_conv.use_onednn_conv3d(conv)
    if case == "autograd":
        x.requires_grad_(True)
        ops = conv_ops(lambda: conv(x))
        conv(x).sum().backward()  # PyTorch's path, so autograd works
        assert x.grad is not None and x.grad.shape == x.shape
    else:
        enabled = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = case != "mkldnn-off"  # (its flags() context warns about TF32)
        try:
            with torch.no_grad():
                ops = conv_ops(lambda: conv(x))
        finally:
            torch.backends.mkldnn.enabled = enabled
    assert ops and "aten::mkldnn_convolution" not in ops


def test_restore_is_exact_and_switching_is_idempotent():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv3d(4, 4, 3), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))
    x = torch.randn(1, 4, 3, 9, 9)
    with torch.no_grad():
        want = model(x)
        assert cpu_conv.use_onednn_conv3d(model) == 2
        assert cpu_conv.use_onednn_conv3d(model) == 0
        assert cpu_conv.switched(model) == (2, 2)
        assert cpu_conv.restore_conv3d(model) == 2
        assert cpu_conv.switched(model) == (0, 2)
        assert torch.equal(model(x), want)
    assert all("_conv_forward" not in vars(m) for m in model.modules())


def test_target_without_models_is_refused():
    with pytest.raises(TypeError, match="target=str: expected a torch.nn.Module or a diffusers pipeline"):
        cpu_conv.use_onednn_conv3d("pipe")


def test_wan_pipeline_is_switched_and_decodes_the_same():
    from pipelines_fixtures import tiny_wan_pipeline

    pipe = tiny_wan_pipeline(heads=2)
    z = torch.randn(1, pipe.vae.config.z_dim, 3, 8, 8)
    with torch.no_grad():
        want = pipe.vae.decode(z).sample
        n = cpu_conv.use_onednn_conv3d(pipe)
        total = sum(isinstance(m, torch.nn.Conv3d) for c in (pipe.vae, pipe.transformer) for m in c.modules())
        assert n == total > 0 and cpu_conv.switched(pipe) == (total, total)
        ops = conv_ops(lambda: pipe.vae.decode(z))
        got = pipe.vae.decode(z).sample
    assert ops == {"aten::mkldnn_convolution"}
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("native", [False, True])
def test_cli_loader_switches_on_cpu_unless_native_conv3d(tmp_path, native):
    from pipelines_fixtures import tiny_wan_pipeline

    from dit_sparse.cli import generate as gen

    folder = tmp_path / "wan"
    tiny_wan_pipeline(heads=2, model_max_length=16).save_pretrained(str(folder), safe_serialization=True)
    pipe, _ = gen.load_pipeline(str(folder), "cpu", "float32", native_conv3d=native)
    done, total = cpu_conv.switched(pipe)
    assert total > 0 and done == (0 if native else total)
