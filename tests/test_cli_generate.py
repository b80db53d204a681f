"""``dit-sparse generate`` end to end, its error cases, and the attention meter.

The model is the embedded tiny Wan pipeline at a CI size (a few frames, 32 x 32, 2 steps);
when the package has no embedded weights, a tiny random WanPipeline saved with
``save_pretrained`` stands in (same VAE factors: spatial 2, temporal 2; patch 1 x 2 x 2).
Outputs are decoded back (imageio for MP4/GIF, Pillow for PNG) and checked for the
requested frame count and size. Every user error must exit with code 2, print exactly one
line on stderr and leave no file in the output folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dit_sparse import video_io
from dit_sparse.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FRAMES, HEIGHT, WIDTH, STEPS = 5, 32, 32, 2
PROMPT = "a red circle moving left on a blue background"


def build_random_wan(out: Path) -> Path:
    """A tiny random ``WanPipeline`` folder (offline), VAE factors 2 x 2 like the embedded model."""
    from pipelines_fixtures import tiny_wan_pipeline

    tiny_wan_pipeline(heads=2, model_max_length=16).save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def model_args(tmp_path_factory):
    """``--model`` arguments: none for the embedded model, else a tiny random pipeline folder."""
    from dit_sparse.pipelines.tiny import embedded_model_path

    try:
        embedded_model_path()
        return []
    except FileNotFoundError:
        return ["--model", str(build_random_wan(tmp_path_factory.mktemp("tiny-wan")))]


def size_args(frames=FRAMES, height=HEIGHT, width=WIDTH, steps=STEPS):
    return ["--frames", str(frames), "--height", str(height), "--width", str(width), "--steps", str(steps), "-q"]


def stderr_lines(text: str):
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("name, frames, sparsity", [
    ("out.mp4", FRAMES, ["--pattern", "sliding-tile:tile=1x4x4,window=3x3x3"]),
    ("out.gif", FRAMES, ["--pattern", "neighborhood:kernel=3x5x5", "--dense-steps", "1"]),
    ("strip.png", 3, ["--dense"]),
    ("image.png", 1, ["--pattern", "neighborhood:kernel=1x3x3"]),
])
def test_generate_writes_decodable_file(tmp_path, capsys, model_args, name, frames, sparsity):
    out = tmp_path / name
    code = main(["generate", PROMPT, "-o", str(out), *model_args, *size_args(frames=frames), *sparsity])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    decoded = video_io.read_frames(out)
    if name.endswith(".png"):  # several frames: one horizontal strip
        assert decoded.shape == (1, HEIGHT, WIDTH * frames, 3)
    else:
        assert decoded.shape == (frames, HEIGHT, WIDTH, 3)
    assert decoded.std() > 0  # not a blank picture
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary files left
    line = captured.out.strip().splitlines()[-1]
    assert line.startswith(f"{out}: {frames} frame") and "total" in line and "self-attention" in line
    assert "mean density" in line
    if "--dense" in sparsity:
        assert "mean density 1.000 (dense)" in line


def test_generate_density_counts_dense_steps(tmp_path, capsys, model_args):
    """The reported density mixes dense warm-up steps (1.0) and the pattern's density."""
    from dit_sparse import Neighborhood, TokenLayout

    out = tmp_path / "a.gif"
    code = main(["generate", PROMPT, "-o", str(out), *model_args, *size_args(steps=4),
                 "--pattern", "neighborhood:kernel=1x3x3", "--dense-steps", "2"])
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    latent = ((FRAMES - 1) // 2 + 1, HEIGHT // 2 // 2, WIDTH // 2 // 2)  # VAE factor 2, patch 1 x 2 x 2
    d = Neighborhood(kernel=(1, 3, 3)).density(TokenLayout(grid=latent))
    assert f"mean density {(1.0 + d) / 2:.3f} (neighborhood:kernel=1x3x3, 2 of 4 steps dense)" in line


def test_generate_subprocess_module(tmp_path, model_args):
    out = tmp_path / "clip.mp4"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "dit_sparse", "generate", PROMPT, "-o", str(out), *model_args,
                           *size_args(), "--pattern", "sliding-tile:tile=1x4x4,window=3x3x3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert video_io.read_frames(out).shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert "self-attention" in proc.stdout


def _no_weights_model(tmp_path, model_args) -> str:
    from dit_sparse.pipelines.tiny import embedded_model_path

    source = Path(model_args[1]) if model_args else embedded_model_path()
    target = tmp_path / "no-weights"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*[f"*{s}" for s in (".safetensors", ".bin")]))
    return str(target)


ERRORS = {
    "empty prompt": (lambda tmp: ["   "], "prompt is empty"),
    "frames": (lambda tmp: [PROMPT, *size_args(frames=4)], "--frames 4 does not fit the VAE's temporal factor 2"),
    "height": (lambda tmp: [PROMPT, *size_args(height=40)], "--height 40 is not a multiple of 16"),
    "width": (lambda tmp: [PROMPT, *size_args(width=8)], "--width 8 is not a multiple of 16"),
    "pattern": (lambda tmp: [PROMPT, *size_args(), "--pattern", "sliding-window:tile=4"], "unknown pattern spec"),
    "pattern args": (lambda tmp: [PROMPT, *size_args(), "--pattern", "neighborhood:size=3"], "--pattern"),
    "plan missing": (lambda tmp: [PROMPT, *size_args(), "--plan", str(tmp / "nope.json")], "does not exist"),
    "model missing": (lambda tmp: [PROMPT, *size_args(), "--model", str(tmp / "nowhere")], "does not exist"),
    "model not a pipeline": (lambda tmp: [PROMPT, *size_args(), "--model", str(tmp)], "no model_index.json"),
}


@pytest.mark.parametrize("case", list(ERRORS) + ["model without weights", "output folder missing",
                                                 "output is a folder", "output suffix"])
def test_generate_errors(tmp_path, capsys, model_args, case):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.mp4"
    if case in ERRORS:
        make, expected = ERRORS[case]
        argv = ["generate", *make(tmp_path), "-o", str(out)]
        if "--model" not in argv:
            argv += model_args
    elif case == "model without weights":
        argv = ["generate", PROMPT, "-o", str(out), *size_args(), "--model", _no_weights_model(tmp_path, model_args)]
        expected = "has no weights"
    elif case == "output folder missing":
        argv = ["generate", PROMPT, "-o", str(out_dir / "sub" / "x.mp4"), *model_args, *size_args()]
        expected = "does not exist"
    elif case == "output is a folder":
        (out_dir / "d.mp4").mkdir()
        argv = ["generate", PROMPT, "-o", str(out_dir / "d.mp4"), *model_args, *size_args()]
        expected = "is a directory"
    else:
        argv = ["generate", PROMPT, "-o", str(out_dir / "x.webm"), *model_args, *size_args()]
        expected = "use one of .mp4, .gif, .png"
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = stderr_lines(captured.err)
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dit-sparse generate: error: ") and expected in lines[0], lines[0]
    assert [p.name for p in out_dir.iterdir()] == (["d.mp4"] if case == "output is a folder" else [])


def test_size_error_names_nearest_valid(tmp_path, capsys, model_args):
    assert main(["generate", PROMPT, "-o", str(tmp_path / "x.gif"), *model_args, *size_args(height=40, frames=8)]) == 2
    err = capsys.readouterr().err
    assert "nearest valid: 32 or 48" in err


def test_attention_meter_times_self_attention_only(model_args):
    """The meter counts self-attention calls (3 layers or 2, x CFG forwards x steps), leaves
    the module global as it found it, and stacks on top of apply's shim."""
    import importlib

    import dit_sparse as ds
    from dit_sparse.cli.generate import AttentionMeter, load_pipeline, run_pipeline

    pipe, _ = load_pipeline(model_args[1] if model_args else None, "cpu", "float32")
    pipe.set_progress_bar_config(disable=True)
    module = importlib.import_module("diffusers.models.transformers.transformer_wan")
    before = module.dispatch_attention_fn
    kwargs = dict(num_frames=3, height=16, width=16, num_inference_steps=2, guidance_scale=1.0)
    with AttentionMeter(pipe) as meter:
        run_pipeline(pipe, PROMPT, 0, kwargs)
    assert module.dispatch_attention_fn is before
    layers = len(pipe.transformer.blocks)
    assert meter.calls == 2 * layers and meter.density == 1.0 and meter.seconds > 0
    with ds.applied(pipe, "neighborhood:kernel=1x3x3"):
        shim = module.dispatch_attention_fn
        with AttentionMeter(pipe) as meter:
            frames = run_pipeline(pipe, PROMPT, 0, kwargs)
        assert module.dispatch_attention_fn is shim
    assert module.dispatch_attention_fn is before
    expected = ds.Neighborhood(kernel=(1, 3, 3)).density(ds.TokenLayout(grid=(2, 4, 4)))
    assert meter.calls == 2 * layers and meter.density == pytest.approx(expected)
    assert frames.shape == (3, 16, 16, 3) and np.isfinite(frames).all()


@pytest.mark.parametrize("native", [False, True])
def test_half_dtype_on_a_cpu_without_its_instructions_warns_once(monkeypatch, capsys, model_args, native):
    """Half precision on a CPU without the matrix instructions runs every matmul in a generic
    loop (30-300x slower than fp32 on AVX2): loading warns in one line naming --dtype, its
    value and the alternative; with the instructions, or for float32, nothing is printed."""
    from dit_sparse import env
    from dit_sparse.cli.generate import load_pipeline

    asked = []
    monkeypatch.setattr(env, "cpu_half_matmul_is_native", lambda name: asked.append(name) or native)
    load_pipeline(model_args[1] if model_args else None, "cpu", "bfloat16", quiet=True)
    err = stderr_lines(capsys.readouterr().err)
    assert asked == ["bfloat16"]
    if native:
        assert err == []
    else:
        assert len(err) == 1 and err[0].startswith("dit-sparse: warning: --dtype bfloat16 on --device cpu")
        assert "use --dtype float32" in err[0]
    monkeypatch.setattr(env, "cpu_half_matmul_is_native", lambda name: False)
    load_pipeline(model_args[1] if model_args else None, "cpu", "float32", quiet=True)
    assert stderr_lines(capsys.readouterr().err) == []  # float32 never asks the probe


def test_half_matmul_probe_answers_per_dtype():
    import torch

    from dit_sparse import env

    assert env.cpu_half_matmul_is_native("float32") is True
    for name, probe in (("bfloat16", "_is_mkldnn_bf16_supported"), ("float16", "_is_mkldnn_fp16_supported")):
        assert env.cpu_half_matmul_is_native(name) is bool(getattr(torch.ops.mkldnn, probe)())
