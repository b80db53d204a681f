"""dit-sparse: sparse 3D attention for Diffusion Transformers.

``import dit_sparse as ds``; see README.md for the quick start.
"""

import os as _os

# Installed, ``dit_sparse.kernels`` and ``dit_sparse.pipelines`` are subfolders of this package
# (pyproject maps the top-level ``kernels/`` and ``pipelines/`` folders there). Imported from a
# source checkout instead (the repository root on sys.path, e.g. ``python -m dit_sparse`` run
# there), they sit beside this folder: let the package find them there. Neither folder has an
# ``__init__.py`` (see kernels/README.md): as namespace portions they can never shadow an
# installed top-level ``kernels`` or ``pipelines`` package when Python runs from the root.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")) and _os.path.isdir(
        _os.path.join(_root, "kernels", "triton_attn")):
    __path__.append(_root)

__version__ = "0.1.0"

# The public names, by the module that defines them. Loaded on first use (PEP 562), so that
# ``import dit_sparse`` (and the CLI's ``--help`` and argument errors) does not wait for torch,
# and the parts that run models (``dit_sparse.pipelines``, which imports diffusers) stay out
# of the way of the core.
_EXPORTS = {
    "layout": ["TokenLayout"],
    "patterns": ["Pattern", "Full", "Neighborhood", "SlidingTile", "BlockSparse", "FarField", "parse_pattern"],
    "ops": ["sparse_attention", "reference_attention", "estimate_speedup", "SpeedupEstimate", "choose_backend",
            "can_run_cpu", "can_run_triton"],
    "blockmask": ["BlockMask"],
    "plan": ["Plan", "PlanGridWarning", "PlanStepsWarning"],
    "pipelines.api": ["apply", "remove", "applied", "observe"],
    "pipelines.hooks": ["AttentionCall"],
    "pipelines.caching": ["cache_config", "cached", "calibrate_mag_ratios"],
    "pipelines.text_padding": ["merge_text_padding"],
    "pipelines.profiling": ["profile"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name):
    import importlib
    import importlib.util

    module = _WHERE.get(name)
    if module is None:
        # a submodule (``ds.ops``, ``ds.metrics``): as reachable as when the face imported it
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'dit_sparse' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__all__ = [name for names in _EXPORTS.values() for name in names]
