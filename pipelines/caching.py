"""diffusers' caching hooks for Wan pipelines, by name, to use with sparse attention.

diffusers ships five feature caches that skip work between denoising steps; each is a
config passed to ``transformer.enable_cache(config)`` and removed with
``transformer.disable_cache()``. They compose with :func:`dit_sparse.apply` in either order:
the caches hook transformer blocks or attention modules and skip their forward on some
steps, while dit-sparse replaces the attention core of the calls that do run; removing
either leaves the other exactly as it runs alone. The transformer forward itself always
runs, so the dense warm-up steps of ``apply`` are counted as without a cache.

:func:`cache_config` gives a config per name with settings that engage on Wan (the
diffusers defaults for attention-module identifiers do not all match Wan's module names):

``first-block``
    First Block Cache (ParaAttention's dynamic caching): when the first block's residual
    changed by less than ``threshold`` (relative mean absolute change) since the step that
    last ran every block, the other blocks are skipped and their cached residual is added.
    The threshold is 0.2: at diffusers' default (0.05) the embedded model's first block
    changes by more than that at every step, so nothing would be skipped.
``pyramid``
    Pyramid Attention Broadcast (Zhao et al. 2024, arXiv 2408.12588): self-attention runs
    every ``spatial_attention_block_skip_range``-th call inside a timestep range and is
    reused in between.
``faster``
    FasterCache (Lv et al. 2024, arXiv 2410.19355), attention part only: inside a timestep
    range, self-attention runs every other call and is extrapolated from the last two in
    between. Its CFG cache needs the conditional and unconditional inputs concatenated in
    one batch; Wan's pipeline runs them as two forwards, so the config sets
    ``is_guidance_distilled=True`` (without it diffusers fails on Wan's first forward).
    The timestep range must leave out the first step: diffusers reads an empty cache if
    the first call of a run may skip.
``taylorseer``
    TaylorSeer (Liu et al. 2025, arXiv 2503.06923): each block's self-attention,
    cross-attention and feed-forward outputs are computed every ``cache_interval`` steps
    and predicted by a Taylor expansion in between. diffusers' default module patterns
    (``^blocks.*attn`` under ``re.fullmatch``) match none of Wan's ``attn1``/``attn2``,
    which leaves the cache idle; this config names Wan's modules.
``mag``
    MagCache (Ma et al. 2025): a step reuses the previous step's residual of the whole
    block stack while the accumulated error predicted from the model's residual
    magnitude ratios stays under ``threshold``. The ratios are checkpoint- and
    schedule-specific: pass ``mag_ratios`` or measure them with
    :func:`calibrate_mag_ratios` (one run).

PAB and FasterCache count calls, not steps: with guidance above 1, Wan's pipeline calls the
transformer twice per step (conditional, then unconditional), so a skip range of 2 makes
the unconditional call reuse the conditional call's attention. First Block Cache,
TaylorSeer and MagCache keep one state per branch (diffusers' ``cache_context``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from typing import Any, Dict, Iterator, List, Optional

#: Names accepted by :func:`cache_config`, in the order the CLI lists them.
CACHE_NAMES = ("first-block", "pyramid", "faster", "taylorseer", "mag")

#: Wan's per-block modules that TaylorSeer predicts (``re.fullmatch`` on module names).
WAN_TAYLORSEER_MODULES = (r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn")


def _models(pipe) -> List[Any]:
    models = [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]
    if not models:
        raise TypeError(f"pipe must be a diffusers pipeline with a .transformer, got {type(pipe).__name__}")
    return models


def _defaults(name: str, pipe, steps: Optional[int]) -> Dict[str, Any]:
    def timestep():
        return pipe.current_timestep

    if name == "first-block":
        return {"threshold": 0.2}
    if name == "pyramid":
        return {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (100, 800),
                "current_timestep_callback": timestep}
    if name == "faster":
        return {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (-1, 681),
                "attention_weight_callback": lambda _: 0.5, "is_guidance_distilled": True,
                "current_timestep_callback": timestep, "tensor_format": "BCFHW"}
    if name == "taylorseer":
        return {"cache_interval": 5, "disable_cache_before_step": 3, "max_order": 1,
                "cache_identifiers": list(WAN_TAYLORSEER_MODULES), "taylor_factors_dtype": _models(pipe)[0].dtype}
    if name == "mag":
        return {"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2,
                **({} if steps is None else {"num_inference_steps": steps})}
    raise ValueError(f"cache name={name!r} is not one of {', '.join(CACHE_NAMES)}")


def _config_class(name: str):
    from diffusers.hooks import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                                 PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig)

    return {"first-block": FirstBlockCacheConfig, "pyramid": PyramidAttentionBroadcastConfig,
            "faster": FasterCacheConfig, "taylorseer": TaylorSeerCacheConfig, "mag": MagCacheConfig}[name]


def cache_config(name: str, pipe, *, steps: Optional[int] = None, **overrides):
    """A diffusers cache config for ``pipe`` (a Wan pipeline) by ``name`` (:data:`CACHE_NAMES`).

    Args:
        name: ``"first-block"``, ``"pyramid"``, ``"faster"``, ``"taylorseer"`` or ``"mag"``.
        pipe: the pipeline; timestep-gated caches read ``pipe.current_timestep``.
        steps: denoising steps of the calls (needed by ``"mag"``, whose ratios are per step).
        overrides: fields of the diffusers config to set instead of the defaults (module
            docstring), e.g. ``threshold=0.1``; ``"mag"`` needs ``mag_ratios`` (see
            :func:`calibrate_mag_ratios`) unless ``calibrate=True``.
    Returns:
        the config, for ``pipe.transformer.enable_cache(config)`` or :func:`cached`.
    """
    if name not in CACHE_NAMES:
        raise ValueError(f"cache name={name!r} is not one of {', '.join(CACHE_NAMES)}")
    cls = _config_class(name)
    fields = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(f"{', '.join(unknown)}: not a field of {cls.__name__} (cache {name!r}); "
                        f"fields: {', '.join(fields)}")
    if name == "mag":
        if steps is None and "num_inference_steps" not in overrides:
            raise ValueError("cache 'mag' needs steps= (the denoising steps its mag_ratios are for)")
        if overrides.get("mag_ratios") is None and not overrides.get("calibrate", False):
            raise ValueError("cache 'mag' needs mag_ratios= (the model's residual magnitude ratios per step); "
                             "measure them with dit_sparse.pipelines.caching.calibrate_mag_ratios(pipe, ...) "
                             "or pass calibrate=True")
    return cls(**{**_defaults(name, pipe, steps), **overrides})


@contextlib.contextmanager
def cached(pipe, config) -> Iterator[None]:
    """``with cached(pipe, config): ...`` enables ``config`` on the pipeline's transformer (and
    ``transformer_2``, when present) on entry and disables it on exit. ``config=None`` does
    nothing, so a caller can pass an optional cache through."""
    if config is None:
        yield
        return
    enabled = []
    try:
        for model in _models(pipe):
            model.enable_cache(config)
            enabled.append(model)
        yield
    finally:
        for model in reversed(enabled):
            model.disable_cache()


_RATIOS_LINE = re.compile(r"^\[\s*[-+0-9.eE,\s]*\]$")


def calibrate_mag_ratios(pipe, steps: int, **call_kwargs) -> List[float]:
    """MagCache's magnitude ratios of ``pipe`` for ``steps`` denoising steps, from one call.

    Runs ``pipe(num_inference_steps=steps, **call_kwargs)`` with diffusers' MagCache in its
    calibration mode (no step is skipped) and returns the per-step ratios
    ``mean_token(|r_t| / |r_{t-1}|)`` of the block stack's residual ``r``, which diffusers
    prints at the end of each branch; with classifier-free guidance (two branches) the
    element-wise mean of the branches. Pass the result as ``mag_ratios`` to
    :func:`cache_config`.
    """
    import torch
    from diffusers.hooks import MagCacheConfig

    config = MagCacheConfig(calibrate=True, num_inference_steps=steps)
    printed = io.StringIO()
    with cached(pipe, config), contextlib.redirect_stdout(printed), torch.no_grad():
        pipe(num_inference_steps=steps, **call_kwargs)
    runs = [[float(x) for x in line.strip()[1:-1].split(",") if x.strip()]
            for line in printed.getvalue().splitlines() if _RATIOS_LINE.match(line.strip())]
    runs = [r for r in runs if len(r) == steps]
    if not runs:
        raise RuntimeError(f"MagCache calibration over {steps} steps reported no ratios (diffusers printed "
                           f"{printed.getvalue()[-200:]!r})")
    return [sum(values) / len(values) for values in zip(*runs)]


__all__ = ["CACHE_NAMES", "cache_config", "cached", "calibrate_mag_ratios"]
