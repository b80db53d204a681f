"""apply/remove on a tiny model of every supported family (fp32, CPU, batch 2).

The sparse-vs-reference test routes the core call through a recording function that
checks the layout and key mask the runtime built against the layout the test expects
from the fixture (grid, text length and side, padded text keys) and then computes
``dit_sparse.reference_attention`` with the *expected* layout: so a wrong grid, text
position or mask fails it, independently of the code under test.
"""

from __future__ import annotations

import pytest
import torch

import dit_sparse as ds
from dit_sparse.pipelines.api import apply, applied, remove

from pipelines_fixtures import FAMILIES, HEADS, build, run

ATOL = 1e-5

# (text position, text length per batch element or None, key mask of the padded text or None)
TEXT = {
    "wan": ("first", [0, 0]),
    "ltx": ("first", [0, 0]),
    "hunyuan_video": ("last", [7, 7]),
    "cogvideox": ("first", [6, 6]),
    "mochi": ("last", [5, 8]),  # the processor drops padded tokens, one call per element
    "flux": ("first", [6, 6]),
    "sd3": ("last", [6, 6]),
    "wan_vace": ("first", [0, 0]),  # vace_blocks attend over the same grid
    "wan_animate": ("first", [0, 0]),  # grid includes the reference frame
    "skyreels_v2": ("first", [0, 0]),
    "chronoedit": ("first", [0, 0]),
    "consisid": ("first", [6, 6]),
    "allegro": ("first", [0, 0]),
    "cosmos": ("first", [0, 0]),
    "easyanimate": ("first", [10, 10]),  # 6 text + 4 T5 tokens
    "qwenimage": ("first", [6, 6]),
    "lumina2": ("first", [6, 6]),  # 6 valid of 8 caption tokens (the model drops the padding)
    "flux2": ("first", [6, 6]),
    "hunyuan_video15": ("last", [15, 15]),  # 3 image + 5 ByT5 + 7 MLLM tokens, padding last
    "ltx2": ("first", [0, 0]),  # attn1: video tokens only (audio attention stays dense)
    "anyflow": ("first", [0, 0]),
    "joyimage_edit": ("last", [6, 6]),  # 3 items stacked as frames, then the text
    "motif_video": ("last", [10, 10]),  # 3 image-embedding + 7 text tokens, padded text masked
    "kandinsky6": ("first", [0, 0]),
}


def _sparse_pattern(grid):
    return ds.Neighborhood(kernel=(3, 3, 3) if grid[0] > 1 else (1, 3, 3))


def _covering_pattern(grid):
    return ds.Neighborhood(kernel=tuple(2 * n + 1 for n in grid))


def _expected_key_mask(family, inputs, grid, batch):
    n = grid[0] * grid[1] * grid[2]
    if family == "hunyuan_video":
        text = inputs["encoder_attention_mask"].bool()
        return torch.cat([torch.ones(batch, n, dtype=torch.bool), text], dim=1)
    if family == "motif_video":
        text = inputs["encoder_attention_mask"].bool()
        image = torch.ones(batch, inputs["image_embeds"].shape[1], dtype=torch.bool)
        return torch.cat([torch.ones(batch, n, dtype=torch.bool), image, text], dim=1)
    if family == "hunyuan_video15":
        # The model packs [valid image, valid ByT5, valid MLLM, padding...] after the video;
        # all-zero image embeddings (text-to-video) count as padding.
        image = inputs["image_embeds"]
        valid = (inputs["encoder_attention_mask"].sum(dim=1) + inputs["encoder_attention_mask_2"].sum(dim=1)
                 + (0 if bool((image == 0).all()) else image.shape[1]))
        total = inputs["encoder_hidden_states"].shape[1] + inputs["encoder_hidden_states_2"].shape[1] + image.shape[1]
        text = torch.arange(total)[None, :] < valid[:, None]
        return torch.cat([torch.ones(batch, n, dtype=torch.bool), text], dim=1)
    return None


class _Recorder:
    """Reference attention with the layout the test expects; records what the runtime passed."""

    def __init__(self, family, inputs, grid):
        self.family, self.inputs, self.grid = family, inputs, grid
        self.calls = 0

    def __call__(self, q, k, v, pattern, layout, *, key_mask=None, scale=None, backend=None):
        position, text_lens = TEXT[self.family]
        b = q.shape[0]
        # Mochi runs one batch element per call; its text length identifies the element.
        allowed = sorted(set(text_lens)) if self.family == "mochi" else [text_lens[0]]
        if self.family == "sd3":
            allowed = [0, text_lens[0]]  # SD3.5's attn2 is image-only
        text_len = q.shape[1] - self.grid[0] * self.grid[1] * self.grid[2]
        assert text_len in allowed, f"{self.family}: {q.shape[1]} tokens, expected text in {allowed}"
        expected = ds.TokenLayout(grid=self.grid, text_len=text_len, text_position=position)
        assert layout == expected, f"{self.family}: runtime layout {layout} != expected {expected}"
        mask = _expected_key_mask(self.family, self.inputs, self.grid, b)
        if mask is None:
            assert key_mask is None or bool(key_mask.all())
        else:
            assert key_mask is not None and torch.equal(key_mask, mask), f"{self.family}: wrong key mask"
        self.calls += 1
        return ds.reference_attention(q, k, v, pattern, expected, key_mask=mask, scale=scale)


def _through(fn):
    """An observer that runs a sparse call's per-head patterns through ``fn``."""
    return lambda call, proceed: call.run(fn) if call.sparse else proceed()


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    model, inputs, grid = build(request.param)
    dense = run(model, inputs)
    return request.param, model, inputs, grid, dense


def test_full_equals_untouched(family_model):
    family, model, inputs, grid, dense = family_model
    with applied(model, ds.Full()) as handle:
        out = run(model, inputs)
    assert handle.layers, family
    torch.testing.assert_close(out, dense, atol=ATOL, rtol=0)


def test_covering_window_equals_untouched(family_model):
    family, model, inputs, grid, dense = family_model
    with applied(model, _covering_pattern(grid)):
        out = run(model, inputs)
    torch.testing.assert_close(out, dense, atol=ATOL, rtol=0)


def test_sparse_matches_reference_and_differs_from_dense(family_model):
    family, model, inputs, grid, dense = family_model
    pattern = _sparse_pattern(grid)
    recorder = _Recorder(family, inputs, grid)
    with applied(model, pattern) as handle, ds.observe(model, _through(recorder)):
        expected = run(model, inputs)
    assert recorder.calls >= len(handle.layers)
    with applied(model, pattern):
        out = run(model, inputs)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-4)
    assert (out - dense).abs().max() > 1e-3, f"{family}: sparse output equals dense; nothing was sparsified"


def test_per_head_patterns_match_reference(family_model):
    family, model, inputs, grid, dense = family_model
    heads = [_sparse_pattern(grid), _sparse_pattern(grid), ds.Full(), ds.Neighborhood(kernel=(1, 1, 3))]
    assert len(heads) == HEADS
    recorder = _Recorder(family, inputs, grid)
    with applied(model, {r".": heads}), ds.observe(model, _through(recorder)):
        expected = run(model, inputs)
    with applied(model, {r".": heads}):
        out = run(model, inputs)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-4)


def test_remove_restores_bit_identical(family_model):
    family, model, inputs, grid, dense = family_model
    processors = {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")}
    had_forward = "forward" in model.__dict__
    apply(model, _sparse_pattern(grid))
    apply(model, _sparse_pattern(grid))  # replaces, never stacks
    assert remove(model)
    assert not remove(model)
    assert {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")} == processors
    assert ("forward" in model.__dict__) == had_forward and not hasattr(model, "_diffusers_hook")
    assert torch.equal(run(model, inputs), dense)


def test_unmatched_regex_is_an_error(family_model):
    family, model, inputs, grid, dense = family_model
    with pytest.raises(ValueError, match="matched no self-attention layer"):
        apply(model, {r"^no_such_layer": ds.Full()})
    with pytest.raises(ValueError, match="selects none"):
        apply(model, _NoLayers())
    assert not remove(model)


class _NoLayers:
    dense_steps = 0

    def patterns_for(self, layer_name, num_heads):
        return None


def test_stacked_apply_and_layer_selection():
    model, inputs, grid = build("wan")
    dense = run(model, inputs)
    pattern = _sparse_pattern(grid)
    handle = apply(model, {r"^blocks\.1\.": pattern})
    assert list(handle.layers) == ["blocks.1.attn1"]
    first_only = run(model, inputs)
    second = apply(model, {r"^blocks\.0\.": pattern})
    assert handle.removed and list(second.layers) == ["blocks.0.attn1"]
    assert not torch.equal(run(model, inputs), first_only)
    second.remove()
    assert torch.equal(run(model, inputs), dense)


def test_unsupported_model_lists_supported_classes():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8,),
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), norm_num_groups=4)
    with pytest.raises(TypeError, match="WanTransformer3DModel.*SD3Transformer2DModel"):
        apply(unet, ds.Full())


def test_bad_specs():
    model, inputs, grid = build("wan")
    with pytest.raises(ValueError, match="2 heads|4 heads"):
        apply(model, {r".": [ds.Full(), ds.Full()]})
    with pytest.raises(ValueError, match="fraction"):
        apply(model, ds.Full(), dense_steps=0.5)
    with pytest.raises(TypeError):
        apply(model, 3)
    assert "forward" not in model.__dict__


def test_dense_steps_on_a_transformer():
    model, inputs, grid = build("wan")
    dense = run(model, inputs)
    with applied(model, _sparse_pattern(grid), dense_steps=1) as handle:
        step0 = run(model, inputs)
        cond_again = run(model, inputs)  # same timestep: same step (separate cond/uncond forwards)
        later = run(model, {**inputs, "timestep": torch.tensor([500, 500])})
    assert torch.equal(step0, dense) and torch.equal(cond_again, dense)
    assert not torch.equal(later, dense)
    assert [(s, sparse) for s, _, sparse in handle.step_log] == [(0, False), (1, True)]


def test_torch_compile_without_graph_break_errors():
    torch._dynamo.reset()
    model, inputs, grid = build("wan")
    pattern = _sparse_pattern(grid)
    with applied(model, pattern):
        eager = run(model, inputs)
        compiled = torch.compile(model, backend="eager")
        out = run(compiled, inputs)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(**inputs)
    torch.testing.assert_close(out, eager, atol=ATOL, rtol=0)
    # The sparse op is one opaque custom op: the whole forward stays one graph.
    assert explained.graph_break_count == 0, [str(r.reason)[:200] for r in explained.break_reasons]
