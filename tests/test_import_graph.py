"""Dependencies point one way: cli -> pipelines -> core -> kernels (DESIGN.md).

Every module of ``dit_sparse/``, ``kernels/`` and ``pipelines/`` is parsed with ``ast``
(never imported), and every import in it, at module level or inside a function, absolute
or relative, is mapped to a layer:

* kernels: ``dit_sparse.kernels.*`` (the ``kernels/`` folder);
* core: the modules directly in ``dit_sparse/``;
* pipelines: ``dit_sparse.pipelines.*`` (the ``pipelines/`` folder);
* cli: ``dit_sparse.cli.*`` and ``dit_sparse.__main__`` (``python -m dit_sparse``).

The package face (``dit_sparse/__init__.py``) is exempt: it re-exports names of every
layer lazily. A name taken from the face (``from dit_sparse import X``, or ``ds.X`` after
``import dit_sparse as ds``) counts as an import of the module its ``_EXPORTS`` table
names, so that ``apply`` or ``profile`` taken from the face by a core module is an upward
import. A module may import its own layer and the layers below it; core modules must not
import each other in a cycle; kernels import neither the core nor diffusers.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"dit_sparse": "dit_sparse", "kernels": "dit_sparse.kernels", "pipelines": "dit_sparse.pipelines"}
LAYERS = ("kernels", "core", "pipelines", "cli")  # bottom to top
FACE = "dit_sparse"

# Known upward imports, each waiting for the change its entry names; every entry has an
# xfail(strict=True) test, so the entry must go when the import does.


@dataclasses.dataclass(frozen=True)
class Import:
    source: str   # dotted module that imports
    target: str   # dotted module (or package) it imports
    path: str     # file of the source, relative to the repository
    line: int


def layer(module: str) -> Optional[str]:
    """The layer of a dotted module name, ``"face"`` for the package itself, None outside it."""
    if module == FACE:
        return "face"
    if not module.startswith(FACE + "."):
        return None
    part = module.split(".")[1]
    if part in ("kernels", "pipelines"):
        return part
    if part in ("cli", "__main__"):
        return "cli"
    return "core"


def module_files(root: Path = ROOT) -> Dict[str, Tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` of every module of the three folders."""
    out = {}
    for folder, prefix in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            package = parts[-1] == "__init__"
            if package:
                parts.pop()
            out[".".join([prefix, *parts])] = (path, package)
    return out


def face_exports(source: str) -> Dict[str, str]:
    """``{name: dotted module}`` from the face's ``_EXPORTS = {module: [names]}`` table."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            table = ast.literal_eval(node.value)
            return {name: f"{FACE}.{module}" for module, names in table.items() for name in names}
    raise AssertionError("dit_sparse/__init__.py has no _EXPORTS table")


def scan(source: str, module: str, is_package: bool, path: str, modules: Set[str],
         exports: Dict[str, str]) -> List[Import]:
    """Every import of one module's source (module level and inside functions alike)."""
    tree = ast.parse(source, filename=path)
    package = module if is_package else module.rpartition(".")[0]
    found: List[Import] = []
    face_aliases: Set[str] = set()

    def add(target: str, node: ast.AST):
        found.append(Import(module, target, path, node.lineno))

    def from_face(name: str) -> str:
        submodule = f"{FACE}.{name}"
        return submodule if submodule in modules else exports.get(name, FACE)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
                if alias.name == FACE or (alias.asname is None and alias.name.startswith(FACE + ".")):
                    face_aliases.add(alias.asname or FACE)  # ``import dit_sparse.x`` binds ``dit_sparse``
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            for alias in node.names:
                if origin == FACE:
                    add(from_face(alias.name), node)
                elif f"{origin}.{alias.name}" in modules:
                    add(f"{origin}.{alias.name}", node)
                else:
                    add(origin, node)
        elif isinstance(node, ast.Call):  # importlib.import_module("x") / __import__("x") with a constant
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                add(node.args[0].value, node)
    if face_aliases:  # ``import dit_sparse as ds`` ... ``ds.profile``: the module behind the name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in face_aliases:
                target = from_face(node.attr)
                if target != FACE:
                    add(target, node)
    return found


def upward(imports: Iterable[Import]) -> List[Import]:
    """Imports whose target sits in a higher layer than their source (the face as a source
    is exempt; the face as a target only from pipelines and the CLI, and never from kernels)."""
    bad = []
    for imp in imports:
        src, dst = layer(imp.source), layer(imp.target)
        if src in (None, "face") or dst is None:
            continue
        if dst == "face":
            if src == "kernels":
                bad.append(imp)
            continue
        if LAYERS.index(dst) > LAYERS.index(src):
            bad.append(imp)
    return bad


def kernel_violations(imports: Iterable[Import]) -> List[Import]:
    """Imports of a kernel module that reach the package outside the kernels, or diffusers."""
    return [imp for imp in imports if layer(imp.source) == "kernels"
            and (imp.target.partition(".")[0] == "diffusers" or layer(imp.target) not in (None, "kernels"))]


def core_cycles(imports: Iterable[Import]) -> List[List[Import]]:
    """Cycles among core modules: for every strongly connected set of two or more core
    modules (or a module importing itself), one cycle through all of its edges' modules."""
    edges: Dict[str, Dict[str, Import]] = {}
    for imp in imports:
        if layer(imp.source) == "core" and layer(imp.target) == "core":
            edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
    nodes = sorted(set(edges) | {t for e in edges.values() for t in e})
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def connect(v: str):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            components.append(sorted(comp))

    for v in nodes:
        if v not in index:
            connect(v)
    cycles = []
    for comp in components:
        if len(comp) == 1 and comp[0] not in edges.get(comp[0], {}):
            continue
        members = set(comp)
        cycles.append([imp for src in comp for dst, imp in sorted(edges.get(src, {}).items()) if dst in members])
    return cycles


def script_imports(imports: Iterable[Import], root: Path = ROOT) -> List[Import]:
    """Imports of a research script (any ``scripts/**/*.py``, e.g. the embedded model's
    ``scripts/tiny_wan/``), or of ``scripts`` itself: the package never ships them."""
    names = {path.stem for path in (root / "scripts").rglob("*.py")} | {"scripts"}
    return [imp for imp in imports if imp.target.partition(".")[0] in names]


def scan_repository(root: Path = ROOT) -> List[Import]:
    files = module_files(root)
    exports = face_exports((root / "dit_sparse" / "__init__.py").read_text())
    out = []
    for module, (path, package) in files.items():
        out += scan(path.read_text(), module, package, str(path.relative_to(root)), set(files), exports)
    return out


def describe(imports: Sequence[Import]) -> str:
    return "\n".join(f"  {i.path}:{i.line}: {i.source} ({layer(i.source)}) -> {i.target} ({layer(i.target)})"
                     for i in imports)


# --------------------------------------------------------------------------------------
# The repository
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imports() -> List[Import]:
    return scan_repository()


def test_every_module_is_scanned(imports):
    files = module_files()
    for module in ("dit_sparse.patterns", "dit_sparse.kernels.cpu.parallel", "dit_sparse.pipelines.adapters",
                   "dit_sparse.pipelines.adapters.wan", "dit_sparse.cli.generate", "dit_sparse.__main__"):
        assert module in files
    assert {layer(m) for m in files} == {"face", *LAYERS}
    assert {i.source for i in imports} >= {"dit_sparse.ops", "dit_sparse.kernels.cpu.attention",
                                          "dit_sparse.pipelines.api", "dit_sparse.cli.generate"}


def test_no_upward_imports(imports):
    bad = upward(imports)
    assert not bad, "imports that run upward (cli -> pipelines -> core -> kernels):\n" + describe(bad)


def test_no_cycles_between_core_modules(imports):
    cycles = core_cycles(imports)
    assert not cycles, "cycles between core modules:\n" + "\n".join(
        " <-> ".join(sorted({i.source for i in cycle})) + "\n" + describe(cycle) for cycle in cycles)


def test_kernels_import_neither_core_nor_diffusers(imports):
    bad = kernel_violations(imports)
    assert not bad, "kernels take plain tensors and ints; these imports reach above them:\n" + describe(bad)


def test_the_library_imports_no_research_script(imports):
    bad = script_imports(imports)
    assert not bad, "research scripts are not part of the package; these imports reach them:\n" + describe(bad)


# --------------------------------------------------------------------------------------
# The scanner itself: it must be able to fail
# --------------------------------------------------------------------------------------

MODULES = {"dit_sparse", "dit_sparse.env", "dit_sparse.patterns", "dit_sparse.tiling", "dit_sparse.plan",
           "dit_sparse.pipelines.profiling", "dit_sparse.pipelines.api", "dit_sparse.kernels.cpu",
           "dit_sparse.kernels.cpu.parallel", "dit_sparse.kernels.cpu.attention", "dit_sparse.cli"}
EXPORTS = {"apply": "dit_sparse.pipelines.api", "profile": "dit_sparse.pipelines.profiling",
           "Pattern": "dit_sparse.patterns"}


def scan_one(source: str, module: str, is_package: bool = False) -> List[Import]:
    return scan(source, module, is_package, module.replace(".", "/") + ".py", MODULES, EXPORTS)


def test_scanner_reports_an_upward_import_inside_a_function():
    source = "import torch\n\ndef validate(model):\n    from .pipelines.profiling import describe_model\n"
    bad = upward(scan_one(source, "dit_sparse.plan"))
    assert [(i.target, i.line) for i in bad] == [("dit_sparse.pipelines.profiling", 4)]
    assert "dit_sparse/plan.py:4: dit_sparse.plan (core) -> dit_sparse.pipelines.profiling (pipelines)" in describe(bad)


def test_scanner_resolves_relative_absolute_and_face_imports():
    source = ("from dit_sparse import apply, Pattern\nimport dit_sparse as ds\nimport dit_sparse.pipelines.api\n"
              "from .. import cli\n\ndef f():\n    return ds.profile, ds.__version__\n")
    targets = [(i.target, i.line) for i in scan_one(source, "dit_sparse.tiling")]
    assert ("dit_sparse.pipelines.api", 1) in targets and ("dit_sparse.patterns", 1) in targets
    assert ("dit_sparse.pipelines.profiling", 7) in targets and ("dit_sparse.pipelines.api", 3) in targets
    bad = {i.target for i in upward(scan_one(source, "dit_sparse.tiling"))}
    assert bad == {"dit_sparse.pipelines.api", "dit_sparse.pipelines.profiling"}
    assert not upward(scan_one(source, "dit_sparse.cli"))  # the CLI may import everything


def test_scanner_reports_kernels_reaching_the_core_or_diffusers():
    source = "from ... import env\nfrom . import attention\n\ndef f():\n    import diffusers\n"
    imports = scan_one(source, "dit_sparse.kernels.cpu.parallel")
    assert {i.target for i in imports} == {"dit_sparse.env", "dit_sparse.kernels.cpu.attention", "diffusers"}
    assert {i.target for i in kernel_violations(imports)} == {"dit_sparse.env", "diffusers"}
    assert [i.target for i in upward(imports)] == ["dit_sparse.env"]
    package = scan_one("from . import parallel\n", "dit_sparse.kernels.cpu", is_package=True)
    assert [i.target for i in package] == ["dit_sparse.kernels.cpu.parallel"]


def test_scanner_reports_a_cycle_between_core_modules():
    imports = (scan_one("from .tiling import tiling_for\n", "dit_sparse.patterns")
               + scan_one("import torch\n\ndef f():\n    from .patterns import Full\n", "dit_sparse.tiling")
               + scan_one("from .patterns import Pattern\n", "dit_sparse.plan"))
    cycles = core_cycles(imports)
    assert [sorted((i.source, i.target) for i in c) for c in cycles] == [
        [("dit_sparse.patterns", "dit_sparse.tiling"), ("dit_sparse.tiling", "dit_sparse.patterns")]]
    assert core_cycles(imports[1:]) == []


def test_scanner_reports_a_research_script_import():
    source = "import torch\n\ndef f():\n    import train_tiny\n    from tiny_clips import render\n"
    imports = scan_one(source, "dit_sparse.pipelines.api")
    assert [(i.target, i.line) for i in script_imports(imports)] == [("train_tiny", 4), ("tiny_clips", 5)]
