"""A fresh clone, run from its root: the repository's top-level ``kernels/`` and ``pipelines/``
folders must never shadow installed packages of those names (transformers imports Hugging
Face's ``kernels``), and a dependency that fails to import is reported in one line naming
the package and where Python found it.

The installed stand-ins are regular packages on ``PYTHONPATH``, which comes after the
current directory on ``sys.path``: the very order in which the repository's folders used to
win.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code_or_args, cwd: Path, extra_path: Path = None, timeout: int = 120):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def installed(tmp_path):
    """A site folder with regular packages named ``kernels`` and ``pipelines``."""
    site = tmp_path / "site"
    for name in ("kernels", "pipelines"):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"WHO = 'installed {name}'\nclass CUDAProperties: pass\n")
    return site


@pytest.mark.parametrize("name", ["kernels", "pipelines"])
def test_repository_folders_do_not_shadow_installed_packages(installed, name):
    proc = _run(f"import {name}; print({name}.WHO)", cwd=ROOT, extra_path=installed)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"installed {name}"


@pytest.mark.parametrize("name", ["kernels", "pipelines"])
def test_repository_folders_are_no_regular_packages(name):
    """A top-level ``__init__.py`` would make the folder win over any installed package."""
    assert (ROOT / name).is_dir()
    assert not (ROOT / name / "__init__.py").exists()


def test_library_imports_its_own_kernels_beside_installed_ones(installed):
    code = ("import kernels, dit_sparse.kernels.cpu.attention as a, dit_sparse.pipelines.hooks as h; "
            "print(kernels.WHO); print(a.__file__); print(h.__file__)")
    proc = _run(code, cwd=ROOT, extra_path=installed)
    assert proc.returncode == 0, proc.stderr
    who, cpu, hooks = proc.stdout.split("\n")[:3]
    assert who == "installed kernels"
    assert Path(cpu).resolve() == ROOT / "kernels" / "cpu" / "attention.py"
    assert Path(hooks).resolve() == ROOT / "pipelines" / "hooks.py"


def test_real_kernels_package_wins_from_the_root():
    """With Hugging Face's ``kernels`` installed (transformers >= 5 requires it), the root's
    folder does not hide it."""
    try:
        import importlib.metadata as md

        md.version("kernels")
    except Exception:
        pytest.skip("Hugging Face's kernels package is not installed here")
    proc = _run("import kernels; print(kernels.__file__)", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "site-packages" in proc.stdout, proc.stdout


def test_broken_dependency_is_one_line_naming_package_and_place(tmp_path):
    """diffusers importing a broken ``kernels``: one line that says which package and where."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("")
    (site / "diffusers").mkdir()
    (site / "diffusers" / "__init__.py").write_text("from kernels import CUDAProperties\n")
    out = tmp_path / "out.png"
    proc = _run(["-m", "dit_sparse", "generate", "a red circle", "-o", str(out), "--frames", "1",
                 "--height", "32", "--width", "32", "--steps", "1", "-q"], cwd=ROOT, extra_path=site)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "'kernels'" in lines[0] and str(site / "kernels") in lines[0], lines[0]
    assert "CUDAProperties" in lines[0]
    assert not out.exists()


def test_submodules_are_attributes_of_the_lazy_face():
    """``ds.ops`` and ``ds.metrics`` right after ``import dit_sparse`` (the face loads names lazily)."""
    proc = _run("import dit_sparse as ds; print(ds.ops.BACKENDS, callable(ds.metrics.clip_psnr), ds.FarField.__name__)",
                cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["('xformers',", "'triton',", "'cpu')", "True", "FarField"]
    proc = _run("import dit_sparse as ds; ds.nothing_here", cwd=ROOT)
    assert proc.returncode != 0 and "has no attribute 'nothing_here'" in proc.stderr
