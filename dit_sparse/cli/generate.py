"""``dit-sparse generate "PROMPT" -o out.mp4``: one clip (or image) with sparse attention.

The model is the embedded tiny Wan pipeline unless ``--model`` names a diffusers pipeline
folder (or a Hugging Face id already in the local cache; nothing is downloaded). Attention
is dense, a uniform ``--pattern`` on every self-attention layer, or a ``--plan`` from
``dit-sparse profile``; ``--cache NAME`` adds one of diffusers' caching hooks on top
(:mod:`dit_sparse.pipelines.caching`), and ``--merge-text-padding`` merges the padded text
keys of Wan's cross-attention exactly (:mod:`dit_sparse.pipelines.text_padding`). The output
format follows the suffix (:mod:`dit_sparse.video_io`: MP4, GIF, PNG; a PNG of several frames
is a horizontal strip).

The last line reports the pipeline call's wall time, the part of it spent in the
self-attention core and the mean density. The attention time comes from
:class:`AttentionMeter`, an observer (:func:`dit_sparse.observe`) that times every
self-attention core call (queries and keys of one length).

User errors (empty prompt, sizes the model cannot take, unknown pattern, unwritable output,
missing model) print one line on stderr and exit with code 2, leaving no file behind.

This module also holds what ``dit-sparse bench`` shares with it: model loading, size
rules, the sparsity options and the meter.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

NAME = "generate"
HELP = "generate a video or image with sparse attention"


def epilog() -> str:
    """The pattern spec syntax, shown under ``--help`` (torch is imported only then)."""
    from dit_sparse.patterns import PATTERN_SPEC_HELP

    return PATTERN_SPEC_HELP

DTYPES = ("float32", "float16", "bfloat16")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


from . import dependency_error
from . import preflight
from .preflight import SizeRules


fail = preflight.fail


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def _has_weights(folder: Path) -> bool:
    return any(p.suffix in WEIGHT_SUFFIXES for p in folder.rglob("*") if p.is_file())


def resolve_model(model: Optional[str]) -> Tuple[str, bool]:
    """``(path or id, is_embedded)`` for ``--model``; checks local folders before loading."""
    if model is None:
        from dit_sparse.pipelines.tiny import embedded_model_path

        try:
            return str(embedded_model_path()), True
        except FileNotFoundError as exc:
            fail(f"no --model given and {exc}")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            fail(f"--model {model!r} is a file; give a diffusers pipeline folder (with model_index.json)")
        if not (path / "model_index.json").is_file():
            fail(f"--model {model!r} has no model_index.json; it is not a diffusers pipeline folder")
        if not _has_weights(path):
            fail(f"--model {model!r} has no weights (no {', '.join('*' + s for s in WEIGHT_SUFFIXES[:2])} files)")
        return str(path), False
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
        return model, False  # maybe a Hugging Face id in the local cache: from_pretrained decides
    fail(f"--model {model!r} does not exist")


def load_pipeline(model: Optional[str], device: str, dtype: str, native_conv3d: bool = False, quiet: bool = False):
    """``(pipeline, is_embedded)``: ``--model`` loaded offline on ``device`` in ``dtype``. On CPU its
    3D convolutions run through oneDNN (:mod:`dit_sparse.pipelines.cpu_conv`) unless
    ``native_conv3d``. Says what it loads in one line on stderr first, unless ``quiet``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name, embedded = resolve_model(model)
    if not quiet:
        what = "the embedded tiny-wan model" if embedded else repr(name)
        print(f"dit-sparse: loading {what} on {device} ({dtype}) ...", file=sys.stderr, flush=True)
    import torch

    torch_dtype = getattr(torch, dtype)
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device} but CUDA is not available")
    note = slow_dtype_note(device, dtype)
    if note:
        print(f"dit-sparse: warning: {note}", file=sys.stderr)
    from diffusers import DiffusionPipeline

    try:
        with _quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(name, torch_dtype=torch_dtype, local_files_only=True)
    except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError, ...
        dependency = dependency_error(exc)
        if dependency:
            fail(f"cannot load --model {name!r}: {dependency}")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "" if Path(name).exists() else " (not a local folder, and not in the local Hugging Face cache)"
        fail(f"cannot load --model {name!r}{where}: {first}")
    if getattr(pipe, "transformer", None) is None:
        fail(f"--model {name!r} is a {type(pipe).__name__} without a transformer; dit-sparse needs a DiT pipeline")
    try:
        pipe = pipe.to(device)
    except (RuntimeError, AssertionError) as exc:
        fail(f"cannot move the pipeline to --device {device}: {exc}")
    if device.startswith("cpu") and not native_conv3d:
        from dit_sparse.pipelines.cpu_conv import use_onednn_conv3d

        use_onednn_conv3d(pipe)
    return pipe, embedded


def slow_dtype_note(device: str, dtype: str) -> Optional[str]:
    """A one-line warning when ``--dtype`` would run the pipeline's matmuls without hardware
    support (half precision on a CPU without it: see
    :func:`dit_sparse.env.cpu_half_matmul_is_native`), else ``None``."""
    from dit_sparse import env

    if dtype not in ("float16", "bfloat16") or not device.startswith("cpu") or env.cpu_half_matmul_is_native(dtype):
        return None
    return (f"--dtype {dtype} on --device {device}: this CPU has no {dtype} matrix instructions, so PyTorch "
            f"multiplies in a generic loop, 30-300x slower than float32; use --dtype float32")


@contextlib.contextmanager
def _quiet_loading():
    """No loading bars, library warnings or deprecation notices while loading: errors
    must stay one line, and the rest is not the user's business."""
    import warnings

    from diffusers.utils import logging as dlog

    try:
        from transformers.utils import logging as tlog
    except ImportError:  # pragma: no cover - transformers is a dependency
        tlog = None
    levels = [dlog.get_verbosity(), tlog.get_verbosity() if tlog else None]
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    if tlog:
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlog.enable_progress_bar()
        dlog.set_verbosity(levels[0])
        if tlog:
            tlog.enable_progress_bar()
            tlog.set_verbosity(levels[1])


def call_parameters(pipe) -> Dict[str, inspect.Parameter]:
    return dict(inspect.signature(type(pipe).__call__).parameters)


def is_video_pipeline(pipe) -> bool:
    return "num_frames" in call_parameters(pipe)


# --------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------


def _first_attr(obj, names, default=None):
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return default


def size_rules(pipe) -> SizeRules:
    """Height/width multiple, temporal factor and token size of ``pipe`` from its VAE factors
    and the transformer's patch size (both as the pipeline itself computes them)."""
    cfg = pipe.transformer.config
    get = cfg.get if hasattr(cfg, "get") else (lambda key, default=None: getattr(cfg, key, default))
    pt, ph, pw = preflight.patch_triple(get("patch_size", 1), get("patch_size_t", 1) or 1)
    if type(pipe.transformer).__name__ == "FluxTransformer2DModel":
        ph = pw = 2  # the Flux pipeline packs 2 x 2 latent patches itself
    vs = _first_attr(pipe, ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_spatial_scale_factor",
                            "vae_scale_factor"), 8)
    temporal = None
    if is_video_pipeline(pipe):
        temporal = _first_attr(pipe, ("vae_scale_factor_temporal", "vae_temporal_compression_ratio",
                                      "vae_temporal_scale_factor"), 1)
    return SizeRules.of(vs, (pt, ph, pw), temporal, type(pipe).__name__)


# --------------------------------------------------------------------------------------
# Sparsity options
# --------------------------------------------------------------------------------------


def parse_dense_steps(text: str):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be an int >= 0 or a fraction in (0, 1)")
    if value.is_integer():
        return int(value)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a non-integer must be a fraction in (0, 1) of the steps")
    return value


@dataclass
class Sparsity:
    """One attention configuration: ``spec`` is None (dense), a Pattern or a Plan; ``cache``
    the name of a diffusers cache that runs with it (None: no cache) and ``cache_config`` its
    config once built (:func:`build_cache`); ``merge_text`` whether the padded text keys of the
    cross-attention are merged (:func:`dit_sparse.merge_text_padding`)."""

    label: str
    spec: Any = None
    dense_steps: Any = None
    cache: Optional[str] = None
    cache_config: Any = None
    merge_text: bool = False

    @property
    def dense(self) -> bool:
        return self.spec is None


def load_plan(path: str):
    from dit_sparse import Plan

    try:
        return Plan.load(path)
    except (OSError, ValueError) as exc:
        fail(f"--plan: {exc}")


def load_pattern(spec: str):
    from dit_sparse import parse_pattern

    try:
        return parse_pattern(spec)
    except (TypeError, ValueError) as exc:
        fail(f"--pattern: {exc}")


def apply_sparsity(pipe, sparsity: Sparsity):
    """Apply ``sparsity`` to ``pipe``; returns the handle (None when dense)."""
    if sparsity.dense:
        return None
    import dit_sparse as ds

    try:
        return ds.apply(pipe, sparsity.spec, dense_steps=sparsity.dense_steps)
    except (TypeError, ValueError) as exc:
        fail(f"{sparsity.label}: {exc}")


def add_cache_argument(parser: argparse.ArgumentParser) -> None:
    """``--cache NAME``: one of diffusers' caching hooks (``generate`` and ``bench``)."""
    from dit_sparse.pipelines.caching import CACHE_NAMES

    parser.add_argument("--cache", metavar="NAME",
                        help=f"a diffusers cache that skips work between steps, together with the sparsity: "
                             f"{', '.join(('none',) + CACHE_NAMES)} (default: none); settings for Wan from "
                             "dit_sparse.pipelines.caching.cache_config; mag first measures its magnitude ratios "
                             "with one untimed call")


def add_merge_text_argument(parser: argparse.ArgumentParser) -> None:
    """``--merge-text-padding`` (``generate`` and ``bench``)."""
    parser.add_argument("--merge-text-padding", action="store_true",
                        help="merge the zero-padded text rows of Wan's cross-attention into one key with a log(count) "
                             "bias: the same output up to float rounding, a shorter cross-attention "
                             "(dit_sparse.merge_text_padding)")


def merge_text_padding(pipe, on: bool):
    """The handle of :func:`dit_sparse.merge_text_padding` on ``pipe`` when ``on`` (None when
    off); a model it cannot merge is a user error."""
    if not on:
        return None
    from dit_sparse.pipelines.text_padding import merge_text_padding as merge

    try:
        return merge(pipe)
    except (TypeError, ValueError) as exc:
        fail(f"--merge-text-padding: {exc}")


def check_cache(value: Optional[str]) -> Optional[str]:
    """The cache name of ``--cache`` (None for none or not given)."""
    from dit_sparse.pipelines.caching import CACHE_NAMES

    if value is None or value == "none":
        return None
    if value not in CACHE_NAMES:
        fail(f"--cache {value!r}: must be one of {', '.join(('none',) + CACHE_NAMES)}")
    return value


def build_cache(pipe, name: Optional[str], prompt: str, seed: int, kwargs: Dict[str, Any], steps: Optional[int],
                prog: str, quiet: bool):
    """The diffusers config of cache ``name`` for calls of ``pipe`` with ``kwargs`` (None for no
    cache). MagCache's ratios are measured first with one call on ``prompt`` and ``seed``."""
    if name is None:
        return None
    import torch

    from dit_sparse.pipelines.caching import cache_config, calibrate_mag_ratios

    if name != "mag":
        return cache_config(name, pipe)
    if steps is None:
        fail("--cache mag needs --steps (its magnitude ratios are per step)")
    if not quiet:
        print(f"{prog}: note: --cache mag: measuring its magnitude ratios with one call first", file=sys.stderr,
              flush=True)
    rest = {k: v for k, v in kwargs.items() if k != "num_inference_steps"}
    ratios = calibrate_mag_ratios(pipe, steps, prompt=prompt, generator=torch.Generator(device="cpu").manual_seed(seed),
                                  output_type="latent", **rest)
    return cache_config(name, pipe, steps=steps, mag_ratios=ratios)


# --------------------------------------------------------------------------------------
# Timing the attention core
# --------------------------------------------------------------------------------------


class AttentionMeter:
    """Wall time and density of the self-attention core calls of one pipeline.

    ``with AttentionMeter(pipe) as meter:`` registers an observer
    (:func:`dit_sparse.observe`) that times every self-attention core call of the pipeline's
    transformer families for the duration, whatever runs it (the model's own attention, or
    the sparse core of :func:`dit_sparse.apply`). Cross-attention is not observed. On CUDA
    the device is synchronised around each timed call, which costs a little overlap.

    ``density`` is the mean over self-attention calls of the fraction of query-key pairs
    computed: 1 for a dense call, the pattern's block-level density (mean over heads) for a
    sparse one, so dense warm-up steps count.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.seconds = 0.0
        self.calls = 0
        self.density_sum = 0.0
        self._handle = None

    @property
    def density(self) -> float:
        return self.density_sum / self.calls if self.calls else float("nan")

    def reset(self) -> None:
        self.seconds, self.calls, self.density_sum = 0.0, 0, 0.0

    def __enter__(self):
        from dit_sparse.pipelines.api import observe

        self._handle = observe(self.pipe, self)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __call__(self, call, proceed):
        import torch

        cuda = call.query.is_cuda
        if cuda:
            torch.cuda.synchronize(call.query.device)
        start = time.perf_counter()
        out = proceed()
        if cuda:
            torch.cuda.synchronize(call.query.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.density_sum += call.density()
        return out


# --------------------------------------------------------------------------------------
# Running the pipeline
# --------------------------------------------------------------------------------------


def embedded_defaults() -> Dict[str, Any]:
    from dit_sparse.pipelines.tiny import DEFAULT_CALL_KWARGS

    return dict(DEFAULT_CALL_KWARGS)


@dataclass
class Settings:
    """Generation settings; None means the pipeline's default."""

    frames: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None

    def fill(self, defaults: Dict[str, Any]) -> "Settings":
        return Settings(
            self.frames if self.frames is not None else defaults.get("num_frames"),
            self.height if self.height is not None else defaults.get("height"),
            self.width if self.width is not None else defaults.get("width"),
            self.steps if self.steps is not None else defaults.get("num_inference_steps"),
            self.guidance if self.guidance is not None else defaults.get("guidance_scale"),
        )

    def check(self, pipe) -> None:
        preflight.check_int("--steps", self.steps, 1, preflight.MAX_STEPS)
        preflight.check_number("--guidance", self.guidance, 0.0, preflight.MAX_GUIDANCE)
        size_rules(pipe).check(self.frames, self.height, self.width)

    def resolved_steps(self, pipe) -> Optional[int]:
        """The step count the call will run: ``steps`` or the pipeline's own default."""
        if self.steps is not None:
            return self.steps
        default = call_parameters(pipe).get("num_inference_steps")
        value = getattr(default, "default", None)
        return value if isinstance(value, int) else None

    def resolved_size(self, pipe) -> Tuple[Optional[int], int, int]:
        """``(frames, height, width)`` of the call: these settings, else the defaults of the
        pipeline's ``__call__`` (else its ``default_sample_size`` in latent pixels)."""
        params = call_parameters(pipe)

        def default(key):
            value = getattr(params.get(key), "default", None)
            if isinstance(value, int):
                return value
            sample = getattr(pipe, "default_sample_size", None) or 128
            return sample * _first_attr(pipe, ("vae_scale_factor_spatial", "vae_scale_factor"), 8)

        frames = self.frames
        if frames is None and is_video_pipeline(pipe):
            value = getattr(params.get("num_frames"), "default", None)
            frames = value if isinstance(value, int) else None
        return (frames, self.height if self.height is not None else default("height"),
                self.width if self.width is not None else default("width"))

    def call_kwargs(self, pipe) -> Dict[str, Any]:
        params = call_parameters(pipe)
        kwargs: Dict[str, Any] = {}
        for key, value in (("num_frames", self.frames), ("height", self.height), ("width", self.width),
                           ("num_inference_steps", self.steps), ("guidance_scale", self.guidance)):
            if value is None:
                continue
            if key == "num_frames" and key not in params:
                continue  # an image pipeline; check() made sure frames == 1
            kwargs[key] = value
        return kwargs


def check_prompt(prompt: str, what: str = "prompt") -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        fail(f"{what} is empty")
    return prompt


def run_pipeline(pipe, prompt: str, seed: int, kwargs: Dict[str, Any]):
    """``[F, H, W, C]`` float frames in [0, 1] of one pipeline call."""
    import numpy as np
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        out = pipe(prompt=prompt, generator=generator, output_type="np", **kwargs)
    frames = getattr(out, "frames", None)
    if frames is None:
        frames = getattr(out, "images", None)
        if frames is None:
            raise RuntimeError(f"{type(pipe).__name__} returned {type(out).__name__} without frames or images")
        frames = np.asarray(frames[:1])  # [1, H, W, C]: an image is one frame
    else:
        frames = np.asarray(frames[0])  # [F, H, W, C]
    return frames.astype(np.float32)


def describe(sparsity: Sparsity, handle, merged=None) -> str:
    what = "dense"
    if handle is not None:
        steps = handle.step_log
        dense = sum(1 for *_, sparse in steps if not sparse)
        what = f"{sparsity.label}, {dense} of {len(steps)} steps dense"
    if sparsity.cache is not None:
        what += f", cache {sparsity.cache}"
    if merged is not None:
        calls = merged.merged_calls + merged.unchanged_calls
        what += f", merged text padding in {merged.merged_calls} of {calls} cross-attention calls"
    return what


def timed_call(pipe, sparsity: Sparsity, prompt: str, seed: int, kwargs: Dict[str, Any]):
    """One timed pipeline call with ``sparsity`` (its cache, its text merge) applied, then removed.

    Returns ``(frames, seconds, meter, description)``: the decoded frames, the call's wall
    time, the :class:`AttentionMeter` of the call and a one-line description of what ran.
    """
    from dit_sparse.pipelines.caching import cached

    with cached(pipe, sparsity.cache_config):
        merged = merge_text_padding(pipe, sparsity.merge_text)
        handle = None
        try:
            handle = apply_sparsity(pipe, sparsity)
            with AttentionMeter(pipe) as meter:
                start = time.perf_counter()
                frames = run_pipeline(pipe, prompt, seed, kwargs)
                seconds = time.perf_counter() - start
            what = describe(sparsity, handle, merged)
        finally:
            if handle is not None:
                handle.remove()
            if merged is not None:
                merged.remove()
    return frames, seconds, meter, what


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser, *, dense_steps: bool = True, fps: bool = True) -> None:
    """Options shared by ``generate``, ``bench`` and ``profile``: model, size, device."""
    parser.add_argument("--model", metavar="PATH_OR_ID",
                        help="diffusers pipeline folder or cached Hugging Face id (default: the embedded tiny Wan "
                             "model); loaded with local_files_only=True")
    parser.add_argument("--frames", type=int, metavar="N", help="frames (1 gives an image; default: the model's)")
    parser.add_argument("--height", type=int, metavar="PX", help="height in pixels (default: the model's)")
    parser.add_argument("--width", type=int, metavar="PX", help="width in pixels (default: the model's)")
    parser.add_argument("--steps", type=int, metavar="N",
                        help=f"denoising steps, 1 to {preflight.MAX_STEPS} (default: the model's)")
    parser.add_argument("--guidance", "--guidance-scale", dest="guidance", type=float, metavar="G",
                        help="classifier-free guidance scale (default: the model's)")
    if dense_steps:
        parser.add_argument("--dense-steps", type=parse_dense_steps, metavar="N",
                            help="first steps that run dense: an int below --steps, or a fraction in (0, 1) "
                                 "(default: the plan's, 0 for a pattern)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="weights and compute dtype")
    parser.add_argument("--native-conv3d", action="store_true",
                        help="on CPU, keep PyTorch's own kernel choice for 3D convolutions (default: batch-1 "
                             "Conv3d layers run through oneDNN, 4-20x faster than the native kernel "
                             "PyTorch picks for them; see dit_sparse.pipelines.cpu_conv)")
    if fps:
        parser.add_argument("--fps", type=float, default=16.0,
                            help="frames per second of MP4/GIF output (default 16)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no loading line")


PROMPT_FILE_SUFFIXES = (".txt", ".json")


def add_prompts_argument(parser: argparse.ArgumentParser, *, required: bool, default_help: str = "") -> None:
    """``--prompts``: prompts, or files of prompts (``profile`` and ``bench`` alike)."""
    parser.add_argument("--prompts", nargs="+", required=required, metavar="PROMPT_OR_FILE",
                        help="prompts, or files of prompts (an existing file, or a name ending in .txt or .json: "
                             "one prompt per line, # starts a comment; or a JSON list of strings)"
                             + (f"; {default_help}" if default_help else ""))


def read_prompts(path: str) -> List[str]:
    """The prompts of a prompts file (one per line, or a JSON list when it ends in .json)."""
    import json

    file = Path(path)
    if file.is_dir():
        fail(f"--prompts {path!r} is a folder, not a prompts file")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"--prompts: prompts file {path!r} does not exist")
    except UnicodeDecodeError:
        fail(f"--prompts: prompts file {path!r} is not UTF-8 text")
    except OSError as exc:
        fail(f"--prompts: prompts file {path!r} cannot be read: {exc.strerror or exc}")
    if file.suffix.lower() == ".json":
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as exc:
            fail(f"--prompts: prompts file {path!r}: malformed JSON ({exc.msg} at line {exc.lineno})")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            fail(f"--prompts: prompts file {path!r} must hold a JSON list of strings")
        prompts = [p.strip() for p in prompts if p.strip()]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        fail(f"--prompts: prompts file {path!r} has no prompts")
    return prompts


def prompts_from_args(args) -> Optional[List[str]]:
    """``--prompts`` as a list of prompts (files read), or None when not given."""
    if args.prompts is None:
        return None
    prompts: List[str] = []
    for i, item in enumerate(args.prompts):
        if Path(item).is_file() or Path(item).suffix.lower() in PROMPT_FILE_SUFFIXES:
            prompts += read_prompts(item)
        else:
            prompts.append(check_prompt(item, f"--prompts[{i}]"))
    return prompts


def add_seeds_argument(parser: argparse.ArgumentParser) -> None:
    """``--seeds N [N ...]`` (``--seed N``, repeatable, is the same list)."""
    parser.add_argument("--seeds", "--seed", dest="seeds", nargs="+", type=int, action="extend", metavar="SEED",
                        help="seeds, 0 to 2**63-1, one run per prompt and seed (default 0)")


def seeds_from_args(args) -> List[int]:
    seeds = list(args.seeds) if args.seeds else [0]
    preflight.check_seeds("--seeds", seeds)
    return seeds


def check_model_args(args) -> None:
    """Everything about the model and sizes that can be checked before the load."""
    preflight.check_device(args.device)
    name, embedded = resolve_model(args.model)
    facts = preflight.folder_facts(name)
    defaults = embedded_defaults() if embedded else {}
    preflight.check_sizes(args.frames, args.height, args.width, args.steps, args.guidance, facts, defaults)
    if hasattr(args, "fps"):
        preflight.check_number("--fps", args.fps, 0.0, preflight.MAX_FPS, open_lo=True)
    steps = args.steps if args.steps is not None else defaults.get("num_inference_steps")
    preflight.check_dense_steps(getattr(args, "dense_steps", None), steps)


def dense_share(sparsity: "Sparsity", steps: Optional[int]) -> float:
    """The share of steps that run dense under ``sparsity`` (for :func:`preflight.pay_note`)."""
    from dit_sparse import Plan

    dense = sparsity.dense_steps
    if dense is None and isinstance(sparsity.spec, Plan):
        dense = sparsity.spec.dense_steps  # steps are absolute (dit_sparse.plan.PlanStepsWarning)
    if dense is None or not steps:
        return 0.0
    return float(dense) if isinstance(dense, float) else min(1.0, dense / steps)


def warn_if_cannot_pay(pipe, sparsity: "Sparsity", settings: "Settings", device: str, embedded: bool,
                       prog: str) -> None:
    """Print one line on stderr when ``sparsity`` cannot be faster than dense at these sizes
    (a plan that does not fit the model is an error first)."""
    if sparsity.dense:
        return
    from dit_sparse import Plan

    if isinstance(sparsity.spec, Plan):
        try:
            from dit_sparse.pipelines.api import describe_model

            sparsity.spec.validate_for(describe_model(pipe))
        except ValueError as exc:
            fail(f"{sparsity.label}: {exc}")
    frames, height, width = settings.resolved_size(pipe)
    grid = preflight.token_grid(frames, height, width, size_rules(pipe))
    note = preflight.pay_note(pipe, sparsity.spec, dense_share(sparsity, settings.resolved_steps(pipe)), grid,
                              device, embedded)
    if note:
        print(f"{prog}: note: {note}", file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="text prompt")
    parser.add_argument("-o", "--output", "--out", dest="output", required=True, metavar="PATH",
                        help="output file: .mp4 (H.264), .gif or .png (several frames: a horizontal strip)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, 0 to 2**63-1 (default 0)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--plan", metavar="PLAN_JSON", help="per-layer plan from `dit-sparse profile`")
    which.add_argument("--pattern", metavar="SPEC",
                       help="one pattern for every self-attention layer (syntax below)")
    which.add_argument("--dense", action="store_true", help="dense attention (the default without --plan/--pattern)")
    add_cache_argument(parser)
    add_merge_text_argument(parser)
    add_model_arguments(parser)


def sparsity_from_args(args) -> Sparsity:
    if args.plan is not None:
        return Sparsity(f"plan {Path(args.plan).name}", load_plan(args.plan), args.dense_steps)
    if args.pattern is not None:
        from dit_sparse.plan import pattern_spec

        pattern = load_pattern(args.pattern)
        return Sparsity(pattern_spec(pattern), pattern, args.dense_steps)
    return Sparsity("dense")


def settings_from_args(args) -> Settings:
    return Settings(args.frames, args.height, args.width, args.steps, args.guidance)


def prepare(args, pipe, embedded: bool) -> Settings:
    settings = settings_from_args(args)
    if embedded:
        settings = settings.fill(embedded_defaults())
    settings.check(pipe)
    preflight.check_dense_steps(getattr(args, "dense_steps", None), settings.resolved_steps(pipe))
    return settings


def set_progress(pipe, quiet: bool, desc: str) -> None:
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=quiet, desc=desc, leave=False)


def run(args) -> int:
    """Run ``generate`` from parsed arguments; returns the exit code."""
    from dit_sparse import video_io

    check_prompt(args.prompt)
    try:
        out = video_io.check_writable(args.output)
    except (OSError, ValueError) as exc:
        fail(f"-o/--output: {exc}")
    preflight.check_seeds("--seed", [args.seed])
    check_model_args(args)
    cache = check_cache(args.cache)
    sparsity = sparsity_from_args(args)
    pipe, embedded = load_pipeline(args.model, args.device, args.dtype, args.native_conv3d, args.quiet)
    settings = prepare(args, pipe, embedded)
    sparsity.merge_text = args.merge_text_padding
    if sparsity.merge_text:
        merge_text_padding(pipe, True).remove()  # a model it cannot merge fails before any call
    keep = None
    if embedded and settings.frames == 1:
        from dit_sparse.pipelines.tiny import IMAGE_CLIP_FRAMES

        settings.frames, keep = IMAGE_CLIP_FRAMES, IMAGE_CLIP_FRAMES // 2
        if not args.quiet:
            print(f"dit-sparse {NAME}: note: --frames 1 on the embedded model generates {IMAGE_CLIP_FRAMES} "
                  "frames and keeps the middle one (a lone frame of this model does not follow the caption)",
                  file=sys.stderr, flush=True)
    kwargs = settings.call_kwargs(pipe)
    warn_if_cannot_pay(pipe, sparsity, settings, args.device, embedded, f"dit-sparse {NAME}")
    set_progress(pipe, args.quiet, "denoising")
    sparsity.cache = cache
    sparsity.cache_config = build_cache(pipe, cache, args.prompt, args.seed, kwargs, settings.resolved_steps(pipe),
                                        f"dit-sparse {NAME}", args.quiet)
    frames, total, meter, what = timed_call(pipe, sparsity, args.prompt, args.seed, kwargs)
    if keep is not None:
        frames = frames[keep:keep + 1]
    video_io.write_frames(out, frames, fps=args.fps)
    f, h, w, _ = frames.shape
    share = meter.seconds / total if total > 0 else 0.0
    print(f"{out}: {f} frame{'s' if f != 1 else ''} {h}x{w}, total {total:.2f} s, self-attention {meter.seconds:.2f} s "
          f"({share:.0%}), mean density {meter.density:.3f} ({what})")
    return 0
