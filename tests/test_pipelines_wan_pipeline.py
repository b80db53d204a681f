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
