"""A tiny ``WanPipeline`` end to end (text encoder, tokenizer, scheduler, VAE, transformer
built from small configs, offline) with dense warm-up steps.

Independent check: the latents after every step are recorded with ``callback_on_step_end``
for an untouched run and for a run with ``apply(..., dense_steps=k)``; the first ``k``
steps must be bit-identical to the untouched run and every later step must differ. With
CFG the pipeline calls the transformer twice per step (cond, uncond), which must count as
one step.
"""

from __future__ import annotations

import os

import pytest
import torch

import dit_sparse as ds
from dit_sparse.pipelines.api import apply, applied, remove
from pipelines_fixtures import tiny_wan_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS = 4


def _through(fn):
    """An observer that runs a sparse call's per-head patterns through ``fn`` (a function with
    ``sparse_attention``'s signature) and leaves every other call as it was."""
    return lambda call, proceed: call.run(fn) if call.sparse else proceed()


REFERENCE = _through(ds.reference_attention)


def _tiny_pipeline():
    return tiny_wan_pipeline(heads=2)


def _run(pipe):
    """Latents after each step, recorded by the pipeline's own callback."""
    seen = []

    def record(pipeline, step, timestep, kwargs):
        seen.append(kwargs["latents"].clone())
        return {}

    pipe("a red circle moving left", negative_prompt="blue background", num_frames=5, height=16, width=32,
         num_inference_steps=STEPS, guidance_scale=4.0, max_sequence_length=8, output_type="latent",
         generator=torch.Generator().manual_seed(0), callback_on_step_end=record)
    return seen


@pytest.fixture(scope="module")
def pipe_and_dense():
    pipe = _tiny_pipeline()
    return pipe, _run(pipe)


@pytest.mark.parametrize("dense_steps, expected_dense", [(2, 2), (0.5, 2), (0.3, 2), (0, 0)])
def test_dense_warmup_then_sparse(pipe_and_dense, dense_steps, expected_dense):
    pipe, dense = pipe_and_dense
    assert len(dense) == STEPS
    with applied(pipe, ds.Neighborhood(kernel=(1, 3, 3)), dense_steps=dense_steps) as handle:
        sparse = _run(pipe)
    ran_sparse = [s for _, _, s in handle.step_log]
    assert ran_sparse == [i >= expected_dense for i in range(STEPS)]
    for i in range(STEPS):
        if i < expected_dense:
            assert torch.equal(sparse[i], dense[i]), f"step {i} should be dense"
        else:
            assert not torch.equal(sparse[i], dense[i]), f"step {i} should be sparse"
    assert torch.equal(_run(pipe)[-1], dense[-1])  # removed: the untouched pipeline again


def test_repeated_calls_restart_the_step_count(pipe_and_dense):
    pipe, dense = pipe_and_dense
    handle = apply(pipe, ds.Neighborhood(kernel=(1, 3, 3)), dense_steps=1)
    try:
        first = _run(pipe)
        second = _run(pipe)
    finally:
        remove(pipe)
    assert torch.equal(first[-1], second[-1])
    assert torch.equal(second[0], dense[0])
    assert [s for _, _, s in handle.step_log] == [False, True, True, True]


def test_second_expert_is_sparsified_with_a_prefixed_name():
    from diffusers import WanTransformer3DModel

    from dit_sparse.pipelines.hooks import SparseProcessor

    pipe = _tiny_pipeline()
    torch.manual_seed(1)
    pipe.transformer_2 = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                               in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                                               num_layers=2, rope_max_seq_len=32).eval()
    with applied(pipe, {r"^transformer_2\.blocks\.1\.": ds.Neighborhood(kernel=(1, 3, 3))}) as handle:
        assert list(handle.layers) == ["transformer_2.blocks.1.attn1"]
        assert isinstance(pipe.transformer_2.blocks[1].attn1.processor, SparseProcessor)
        assert type(pipe.transformer.blocks[1].attn1.processor).__name__ == "WanAttnProcessor"
    assert type(pipe.transformer_2.blocks[1].attn1.processor).__name__ == "WanAttnProcessor"


def _phased_plan(pipe):
    """A plan written by hand: 1 dense step, NA 1x3x3 in both layers, and from step 2 on a
    1x1x1 window in layer 0 while layer 1 runs dense."""
    from dit_sparse.plan import HeadChoice, LayerPlan, ModelInfo, Plan
    from dit_sparse.pipelines.profiling import describe_model

    desc = describe_model(pipe)
    heads = desc["heads"]

    def layer(name, pattern):
        return LayerPlan(name, (HeadChoice(pattern, 0.1, 0.5),) * heads)

    names = list(desc["layers"])
    profile = {"grid": [3, 4, 8], "text_len": 0, "num_inference_steps": STEPS, "sampled_steps": [0],
               "seeds": [0], "num_prompts": 1, "prompts_sha256": "0" * 64, "mode": "max_error", "max_error": 0.1,
               "versions": {"dit_sparse": ds.__version__}}
    model = ModelInfo(desc["class"], None, tuple(names), heads, desc["head_dim"])
    first = [layer(n, ds.Neighborhood(kernel=(1, 3, 3))) for n in names]
    later = [layer(names[0], ds.Neighborhood(kernel=(1, 1, 1))), layer(names[1], ds.Full())]
    return Plan(model, profile, 1, first, [(2, later)])


def test_plan_phases_switch_patterns_at_their_start_step(pipe_and_dense):
    pipe, dense = pipe_and_dense
    plan = _round_trip(_phased_plan(pipe))
    calls = []

    def recorder(q, k, v, pattern, layout, **kw):
        calls.append((handle.steps.step, pattern))
        return ds.reference_attention(q, k, v, pattern, layout, key_mask=kw.get("key_mask"), scale=kw.get("scale"))

    handle = apply(pipe, plan)
    watch = ds.observe(pipe, _through(recorder))
    try:
        phased = _run(pipe)
        layer_patterns = dict(handle.layers)
        later_patterns = dict(handle.phases[0][1])
    finally:
        watch.remove()
        remove(pipe)
    with applied(pipe, ds.Neighborhood(kernel=(1, 3, 3)), dense_steps=1), ds.observe(pipe, REFERENCE):
        first_only = _run(pipe)
    # CFG as two forwards per step: each layer is called twice per sparse step
    steps = {}
    for step, pattern in calls:
        steps.setdefault(step, []).append(pattern)
    assert sorted(steps) == [1, 2, 3]
    assert steps[1] == [ds.Neighborhood(kernel=(1, 3, 3))] * len(steps[1]) and len(steps[1]) in (2, 4)
    for step in (2, 3):  # layer 1 is dense in the later phase: only layer 0 reaches the sparse core
        assert steps[step] == [ds.Neighborhood(kernel=(1, 1, 1))] * (len(steps[1]) // 2)
    assert torch.equal(phased[0], dense[0])
    assert torch.equal(phased[1], first_only[1])  # steps before the phase: the first phase's patterns
    assert not torch.equal(phased[2], first_only[2]) and not torch.equal(phased[2], dense[2])
    assert layer_patterns["blocks.1.attn1"] == (ds.Neighborhood(kernel=(1, 3, 3)),) * 2
    assert later_patterns["blocks.1.attn1"] == (ds.Full(),) * 2
    assert handle.phases[0][0] == 2


def _round_trip(plan):
    """Through JSON, as a user's plan file would come."""
    return type(plan).from_dict(plan.to_dict())


def test_phased_plan_warns_on_another_schedule_length(pipe_and_dense):
    pipe, _ = pipe_and_dense
    with applied(pipe, _phased_plan(pipe)), ds.observe(pipe, REFERENCE):
        with pytest.warns(ds.PlanStepsWarning, match="profiled for 4 steps and runs 3"):
            pipe("a red circle", num_frames=5, height=16, width=32, num_inference_steps=3, guidance_scale=1.0,
                 max_sequence_length=8, output_type="latent", generator=torch.Generator().manual_seed(0))


def test_apply_checks_a_plan_against_the_models_description(pipe_and_dense):
    """``apply`` describes the target (the pipelines layer) and hands the plan only the
    description (the core); the plan of another model class is refused before any hook."""
    from dit_sparse.pipelines.api import describe_model

    pipe, _ = pipe_and_dense
    plan = _phased_plan(pipe)
    plan.validate_for(describe_model(pipe))
    doc = plan.to_dict()
    doc["model"]["class"] = "CogVideoXTransformer3DModel"
    other = ds.Plan.from_dict(doc)
    message = "plan does not fit this model: the plan's header says class='CogVideoXTransformer3DModel'"
    with pytest.raises(ValueError, match=message):
        apply(pipe, other)
    assert type(pipe.transformer.blocks[0].attn1.processor).__name__ == "WanAttnProcessor"
    with pytest.raises(TypeError, match="must be a description dict"):  # the core never imports pipelines
        other.validate_for(pipe)
