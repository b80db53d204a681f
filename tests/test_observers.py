"""The observer seam (``ds.observe``): what an observer sees, nesting, replacement, removal.

Tiny models of two families built from configs: Wan, whose processor calls
``dispatch_attention_fn`` with ``[B, S, heads, D]``, and CogVideoX, whose processor calls
``F.scaled_dot_product_attention`` with ``[B, heads, S, D]`` (observers see both as
``[B, S, heads, D]``).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch

import dit_sparse as ds
from dit_sparse.pipelines.adapters import adapter_for
from dit_sparse.pipelines.api import applied

from pipelines_fixtures import HEADS, build, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["wan", "cogvideox"])
def family(request):
    model, inputs, grid = build(request.param)
    return request.param, model, inputs, grid, run(model, inputs)


def _core_global(model):
    adapter = adapter_for(model)
    module = importlib.import_module(adapter.core_module)
    attr = "dispatch_attention_fn" if adapter.core == "dispatch" else "F"
    return module, attr


def _self_attention_layers(model):
    adapter = adapter_for(model)
    return [name for name, m in model.named_modules() if adapter.is_self_attention(name, m)]


def test_watching_changes_nothing_and_sees_every_self_attention_call(family):
    name, model, inputs, grid, dense = family
    module, attr = _core_global(model)
    before = getattr(module, attr)
    calls = []

    def watch(call, proceed):
        calls.append(call)
        out = proceed()
        assert out.shape == call.query.shape
        return out

    with ds.observe(model, watch) as handle:
        out = run(model, inputs)
    assert getattr(module, attr) is before and handle.removed
    assert torch.equal(out, dense)
    n_tokens = grid[0] * grid[1] * grid[2]
    assert len(calls) == len(_self_attention_layers(model))
    for call in calls:  # no layer applied: untagged, dense, [B, S, heads, D]
        assert call.layer is None and not call.sparse and call.patterns is None and call.density() == 1.0
        assert call.query.shape[0] == 2 and call.query.shape[1] >= n_tokens and call.query.shape[2] == HEADS
    with pytest.raises(RuntimeError, match="needs a layer that dit_sparse.apply sparsified"):
        calls[0].run()


def test_tagged_calls_carry_layer_step_layout_and_run_patterns(family):
    name, model, inputs, grid, dense = family
    pattern = ds.Neighborhood(kernel=(1, 3, 3))
    seen = {}

    def watch(call, proceed):
        assert call.sparse and call.patterns == (pattern,) * HEADS
        assert call.layout.grid == grid
        # the default path, a given pattern through the reference, the dense path
        out = proceed()
        ref = call.run(ds.reference_attention)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
        full = call.run(patterns=ds.Full())
        assert (full - out).abs().max() > 1e-4
        seen[call.layer] = call.density()
        return out

    with applied(model, pattern) as handle, ds.observe(model, watch):
        out = run(model, inputs)
    assert set(seen) == set(handle.layers)
    assert all(d == pytest.approx(pattern.density(ds.TokenLayout(grid=grid))) or d < 1 for d in seen.values())
    with applied(model, pattern):
        plain = run(model, inputs)
    assert torch.equal(out, plain)


def test_observers_nest_in_registration_order_and_can_replace(family):
    name, model, inputs, grid, dense = family
    order = []

    def outer(call, proceed):
        order.append("outer in")
        out = proceed()
        order.append("outer out")
        return out

    def inner(call, proceed):
        order.append("inner")
        return torch.zeros_like(call.query)  # replaces the attention output

    with ds.observe(model, outer), ds.observe(model, inner):
        replaced = run(model, inputs)
    layers = len(_self_attention_layers(model))
    assert order == ["outer in", "inner", "outer out"] * layers
    assert not torch.equal(replaced, dense)
    assert torch.equal(run(model, inputs), dense)  # both removed


def test_per_head_patterns_through_run(family):
    name, model, inputs, grid, dense = family
    heads = [ds.Neighborhood(kernel=(1, 3, 3)), ds.Full(), ds.Neighborhood(kernel=(1, 1, 3)), ds.Full()]
    assert len(heads) == HEADS

    def swap(call, proceed):  # the applied pattern is Full; the observer runs per-head patterns
        return call.run(patterns=heads)

    with applied(model, ds.Full()), ds.observe(model, swap):
        swapped = run(model, inputs)
    with applied(model, {r".": heads}):
        direct = run(model, inputs)
    torch.testing.assert_close(swapped, direct, atol=1e-6, rtol=0)

    def wrong(call, proceed):
        return call.run(patterns=heads[:2])

    with applied(model, ds.Full()), ds.observe(model, wrong):
        with pytest.raises(ValueError, match="patterns: 2 given for layer .* which has 4 heads"):
            run(model, inputs)


def test_apply_and_observe_removed_in_either_order_restore_the_module(family):
    name, model, inputs, grid, dense = family
    module, attr = _core_global(model)
    before = getattr(module, attr)
    for first_apply in (True, False):
        for remove_apply_first in (True, False):
            handles = []
            steps = [lambda: ds.apply(model, ds.Neighborhood(kernel=(1, 3, 3))),
                     lambda: ds.observe(model, lambda call, proceed: proceed())]
            for make in (steps if first_apply else steps[::-1]):
                handles.append(make())
            sparse_handle = handles[0] if first_apply else handles[1]
            watch = handles[1] if first_apply else handles[0]
            for h in ((sparse_handle, watch) if remove_apply_first else (watch, sparse_handle)):
                h.remove()
                h.remove()  # idempotent
            assert getattr(module, attr) is before
            assert torch.equal(run(model, inputs), dense)


def test_observer_must_be_callable():
    model, _, _ = build("wan")
    with pytest.raises(TypeError, match="observer=3 must be callable"):
        ds.observe(model, 3)
    with pytest.raises(TypeError, match="target must be a diffusers pipeline"):
        ds.observe(torch.nn.Linear(2, 2), lambda call, proceed: proceed())


def _patches_a_core_global(node) -> bool:
    names = ("dispatch_attention_fn", "F", "scaled_dot_product_attention")
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Attribute) and t.attr in names for t in node.targets)
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and len(node.args) >= 2:
        arg = node.args[1]
        return isinstance(arg, ast.Constant) and arg.value in names or isinstance(arg, ast.Name)
    return False


def test_only_the_runtime_patches_the_attention_core_names():
    """No module global holding an attention core is assigned anywhere but pipelines/hooks.py."""
    offenders = []
    files = [p for folder in ("dit_sparse", "pipelines", "kernels", "scripts") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 20
    for path in files:
        if path == ROOT / "pipelines" / "hooks.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        offenders += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree) if _patches_a_core_global(n)]
    assert not offenders, offenders
    hooks_tree = ast.parse((ROOT / "pipelines" / "hooks.py").read_text())
    assert any(_patches_a_core_global(n) for n in ast.walk(hooks_tree))  # the check can see a patch
