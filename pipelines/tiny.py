"""The embedded default model: a tiny Wan text-to-video pipeline shipped inside the package.

``pipelines/embedded/tiny-wan/`` is a standard diffusers ``WanPipeline`` folder (saved with
``save_pretrained``, safetensors weights, ~5.7 MB) trained by
``scripts/tiny_wan/train_tiny.py`` on procedural clips of a coloured shape moving
left/right/up/down on a coloured background, e.g. ``"a red circle moving left on a blue
background"``. Training size: 9 frames at
64 x 64 pixels (a 5 x 16 x 16 token grid); it also runs at 128 x 128 (5 x 32 x 32 tokens),
where self-attention dominates the run time. It lets the CLI and the benchmarks run offline
on a model whose attention is really local. Its training scripts and record:
``scripts/tiny_wan/README.md`` (research, never imported by the library).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

EMBEDDED_NAME = "tiny-wan"

#: Generation settings the model was trained for (pass them to the pipeline call).
DEFAULT_CALL_KWARGS = {"num_frames": 9, "height": 64, "width": 64, "num_inference_steps": 20, "guidance_scale": 4.0}

#: An image of this model is the middle frame of a clip of this many frames (its training
#: length): a lone frame (``num_frames=1``), like the first frame of a clip, does not follow
#: the caption's colours (scored with scripts/tiny_wan/caption_score.py: docs/benchmarks.md).
IMAGE_CLIP_FRAMES = 9


def embedded_model_path() -> Path:
    """Installed path of the embedded ``tiny-wan`` pipeline folder (has ``model_index.json``)."""
    try:
        path = Path(str(resources.files(__package__ or "dit_sparse.pipelines") / "embedded" / EMBEDDED_NAME))
    except (ModuleNotFoundError, TypeError):  # imported as a plain file, outside the package
        path = Path(__file__).resolve().parent / "embedded" / EMBEDDED_NAME
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"embedded model not found: {path} has no model_index.json")
    return path


def load_embedded_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load the embedded tiny Wan model as a ``diffusers.WanPipeline``, offline.

    Nothing is downloaded (``local_files_only=True``). Call it with the trained sizes, e.g.
    ``pipe(prompt, **DEFAULT_CALL_KWARGS).frames[0]``.
    """
    from diffusers import WanPipeline

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pipe = WanPipeline.from_pretrained(str(embedded_model_path()), dtype=dtype, local_files_only=True)
    return pipe.to(device)
