"""End to end: profile a tiny random Wan pipeline on CPU, then ``ds.apply(pipe, plan)``.

The errors the plan records are checked against an independent computation: the q, k, v
of one layer are captured through ``apply``'s attention seam and every head's error is
recomputed with the float64 ``reference_attention``. Plans transfer across grids (warning,
clamped windows) and refuse other models.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import dit_sparse as ds
from pipelines_fixtures import tiny_wan_pipeline
from dit_sparse.pipelines.api import apply, applied
from dit_sparse.plan import PlanGridWarning

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["a red circle moving left", "a green square moving right"]
#: 5 frames at 32 x 32 pixels -> a 3 x 8 x 8 token grid for the tiny pipeline
CALL = dict(num_frames=5, height=32, width=32)
EXTRA = dict(max_sequence_length=8)


def _latents(pipe, prompt="a yellow triangle moving up", **size):
    kw = dict(CALL, **size)
    out = pipe(prompt, num_inference_steps=3, guidance_scale=1.0, output_type="latent",
               generator=torch.Generator().manual_seed(7), **kw, **EXTRA)
    return out.frames


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_pipeline()


@pytest.fixture(scope="module")
def plan(pipe):
    return ds.profile(pipe, PROMPTS, budget=0.5, num_inference_steps=3, seeds=(0,), progress=False,
                      call_kwargs=dict(EXTRA, guidance_scale=1.0), **CALL)


def test_profile_builds_a_plan_that_applies(pipe, plan, tmp_path):
    assert isinstance(plan, ds.Plan)
    assert plan.model.cls == "WanTransformer3DModel"
    assert list(plan.layers) == ["blocks.0.attn1", "blocks.1.attn1"]
    assert plan.model.heads == 4 and plan.model.head_dim == 8
    assert plan.grid == (3, 8, 8)
    assert plan.profile["sampled_steps"] == [0, 1, 2]
    assert plan.mean_density <= 0.5 + 1e-6
    # the candidates: the default set on this grid, Full with error 0
    kinds = {c["pattern"]["kind"] for c in plan.profile["candidates"]}
    assert kinds == {"neighborhood", "sliding_tile", "block_sparse", "full"}
    full = [c for c in plan.profile["candidates"] if c["pattern"]["kind"] == "full"]
    assert full[0]["error"] == 0.0 and full[0]["density"] == 1.0
    # the plan is never worse than a uniform candidate at most as dense (measured errors)
    for c in plan.profile["candidates"]:
        if c["density"] <= plan.mean_density:
            assert plan.mean_error <= c["error"] + 1e-6
    path = plan.save(tmp_path / "plan.json")
    again = ds.Plan.load(path)
    assert again.to_dict() == plan.to_dict()

    dense = _latents(pipe)
    handle = apply(pipe, again)
    try:
        assert set(handle.layers) <= set(again.layers)
        for name, patterns in handle.layers.items():
            assert list(patterns) == list(again.layers[name].patterns)
        with warnings.catch_warnings():
            warnings.simplefilter("error", PlanGridWarning)  # same grid: no warning
            sparse = _latents(pipe)
        ran_sparse = [s for _, _, s in handle.step_log]
        assert ran_sparse == [i >= again.dense_steps for i in range(3)]
    finally:
        ds.remove(pipe)
    assert sparse.shape == dense.shape
    assert not torch.equal(sparse, dense)
    assert torch.equal(_latents(pipe), dense)  # removed: exactly dense again


def test_recorded_errors_match_an_independent_computation(pipe):
    """Profile one prompt, one step, no CFG: one call per layer, so the plan's per-head
    errors are exactly ||candidate - dense|| / ||dense|| of that call."""
    cands = [ds.Neighborhood((1, 3, 3)), ds.Neighborhood((3, 5, 5)), ds.BlockSparse((1, 4, 4), topk=0.25)]
    plan = ds.profile(pipe, PROMPTS[:1], candidates=cands, max_error=1e9, num_inference_steps=2,
                      sample_steps=[1], progress=False, call_kwargs=dict(EXTRA, guidance_scale=1.0), **CALL)
    captured = {}

    def capture(call, proceed):
        if call.step == 1:
            captured[call.layer] = (call.query.clone(), call.key.clone(), call.value.clone(), call.layout, call.scale)
        return call.run(ds.reference_attention)

    with applied(pipe, ds.Full()), ds.observe(pipe, capture):
        pipe(PROMPTS[0], num_inference_steps=2, guidance_scale=1.0, output_type="latent",
             generator=torch.Generator().manual_seed(0), **CALL, **EXTRA)
    for name in plan.layers:
        q, k, v, layout, scale = captured[name]
        dense = ds.reference_attention(q, k, v, ds.Full(), layout, scale=scale).double()
        for h, choice in enumerate(plan.layers[name].heads):
            # max_error is huge: every head takes the cheapest candidate
            cheapest = min(cands + [ds.Full()], key=lambda p: p.density(layout, q=q[:, :, h:h + 1],
                                                                          k=k[:, :, h:h + 1])
                           if isinstance(p, ds.BlockSparse) else p.density(layout))
            assert choice.pattern == cheapest
            out = ds.reference_attention(q, k, v, choice.pattern, layout, scale=scale).double()
            want = ((out[:, :, h] - dense[:, :, h]).norm() / dense[:, :, h].norm()).item()
            assert choice.error == pytest.approx(want, rel=2e-3, abs=1e-6)
            if isinstance(choice.pattern, ds.BlockSparse):
                mask = choice.pattern.mask(layout, q, k)[:, h].double()
                assert choice.density == pytest.approx(mask.mean().item(), rel=1e-4)
            else:
                assert choice.density == pytest.approx(choice.pattern.density(layout), rel=1e-4)


def test_plan_transfers_to_another_grid(pipe):
    """A plan profiled at 3 x 8 x 8 runs at 3 x 4 x 12: warning, windows clamp to the axes."""
    from test_plan import plan_dict

    doc = plan_dict()
    doc["model"] = {"class": "WanTransformer3DModel", "name_or_path": None, "heads": 4, "head_dim": 8,
                    "layers": ["blocks.0.attn1", "blocks.1.attn1"]}
    doc["dense_steps"] = 0
    wide = {"kind": "neighborhood", "kernel": [3, 7, 7], "dilation": [1, 1, 1], "stride": [1, 1, 1]}
    doc["layers"] = [{"name": "blocks.0.attn1", "pattern": wide, "error": 0.1, "density": 0.5},
                     {"name": "blocks.1.attn1", "pattern": wide, "error": 0.1, "density": 0.5}]
    plan = ds.Plan.from_dict(doc)
    size = dict(height=16, width=48)  # latent 8 x 24 -> grid (3, 4, 12): H is smaller than the window
    with applied(pipe, ds.Neighborhood((3, 4, 7))):  # the same window clamped by hand
        expected = _latents(pipe, **size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with applied(pipe, plan):
            got = _latents(pipe, **size)
    grid_warnings = [w for w in caught if issubclass(w.category, PlanGridWarning)]
    assert len(grid_warnings) == 1 and "(3, 4, 12)" in str(grid_warnings[0].message)
    assert torch.equal(got, expected)
    with applied(pipe, ds.Neighborhood((3, 3, 7))):
        assert not torch.equal(_latents(pipe, **size), got)  # the clamp keeps the whole 4-token axis


def test_plan_for_another_model_is_refused(pipe, plan):
    doc = plan.to_dict()
    doc["model"]["class"] = "FluxTransformer2DModel"
    with pytest.raises(ValueError, match="the plan's header says class='FluxTransformer2DModel' but the model's "
                                         "class is 'WanTransformer3DModel'"):
        apply(pipe, ds.Plan.from_dict(doc))
    doc = plan.to_dict()
    doc["model"]["layers"].append("blocks.2.attn1")
    doc["layers"].append(dict(doc["layers"][-1], name="blocks.2.attn1"))
    with pytest.raises(ValueError, match=r"the plan's header lists 3 self-attention layers but the model has 2"):
        apply(pipe, ds.Plan.from_dict(doc))
    assert not ds.remove(pipe)  # nothing was left applied


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(prompts=[]), ValueError, "prompts is empty"),
    (dict(prompts=["ok", ""]), ValueError, r"prompts\[1\] is empty"),
    (dict(prompts=["ok", 3]), TypeError, r"prompts\[1\]=3 must be a string"),
    (dict(budget=None), ValueError, "exactly one of max_error and budget"),
    (dict(max_error=0.1), ValueError, "exactly one of max_error and budget"),
    (dict(budget=-0.2), ValueError, "must be >= 0"),
    (dict(budget=1.2), ValueError, r"budget=1.2 must be a mean density in \(0, 1\]"),
    (dict(candidates=["spiral:size=3"]), ValueError, r"candidates\[0\]: unknown pattern spec"),
    (dict(sample_steps=[5]), ValueError, r"sample_steps=\[5\] must be steps in \[0, 3\)"),
])
def test_profile_argument_errors_before_running(pipe, kwargs, exc, match):
    args = dict(prompts=PROMPTS, budget=0.5)
    args.update(kwargs)
    prompts = args.pop("prompts")
    with pytest.raises(exc, match=match):
        ds.profile(pipe, prompts, num_inference_steps=3, progress=False, **args)


def test_impossible_budget_after_profiling(pipe):
    with pytest.raises(ValueError, match="budget=0.01 is impossible"):
        ds.profile(pipe, PROMPTS[:1], candidates=["neighborhood:kernel=1x3x3"], budget=0.01, num_inference_steps=1,
                   progress=False, call_kwargs=dict(EXTRA, guidance_scale=1.0), **CALL)


def test_time_cost_profiles_kernel_times_and_records_them(pipe, tmp_path):
    cands = ["neighborhood:kernel=1x3x3", "neighborhood:kernel=3x7x7"]
    plan = ds.profile(pipe, PROMPTS[:1], candidates=cands, max_error=0.5, num_inference_steps=2, progress=False,
                      cost="time", call_kwargs=dict(EXTRA, guidance_scale=1.0), **CALL)
    assert plan.profile["cost"] == "time"
    times = {c["pattern"]["kind"] + str(c["pattern"].get("kernel")): c["time"] for c in plan.profile["candidates"]}
    assert times["full" + "None"] == 1.0
    assert all(t > 0 for t in times.values())
    assert "cost=time" in plan.summary()
    path = tmp_path / "p.json"
    plan.save(path)
    assert ds.Plan.load(path).profile["cost"] == "time"
    with pytest.raises(ValueError, match="cost='speed' must be 'density' or 'time'"):
        ds.profile(pipe, PROMPTS, budget=0.5, num_inference_steps=3, progress=False, cost="speed")


def test_time_candidates_is_relative_to_dense():
    from dit_sparse.pipelines.profiling import time_candidates

    layout = ds.TokenLayout(grid=(4, 32, 32), text_len=0)
    rel = time_candidates([ds.Full(), ds.SlidingTile(tile=(1, 8, 8), window=(1, 1, 1)), ds.Full()], layout, 2, 16)
    assert rel[0] == 1.0 and rel[2] == 1.0
    # one 8x8 tile of one frame keeps 64 of 4096 keys: far cheaper than dense (on tiny grids
    # the sparse path's fixed costs can make it slower, which is why kernels are timed)
    assert 0 < float(rel[1]) < 0.9
