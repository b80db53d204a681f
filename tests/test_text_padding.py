"""Exact merge of padded text keys in Wan's cross-attention (:mod:`dit_sparse.pipelines.text_padding`).

Tiny Wan-family transformers from small configs (``pipelines_fixtures``): with text rows
zero-padded (another count per batch row) the merged output equals the untouched one within
float32 rounding while the keys reaching ``F.scaled_dot_product_attention`` in cross-attention
are really fewer; calls it must not merge (no padding, one padded row, a mask given, a backend
without masks) run bit-identically; ``remove`` puts back the very processor objects; it
composes with sparse self-attention and a diffusers cache in either order; modules with an
image branch and other families are refused with the classes found; and the CLI flag.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dit_sparse as ds
from dit_sparse import video_io
from dit_sparse.cli import main
from dit_sparse.pipelines.caching import cache_config, cached
from dit_sparse.pipelines.text_padding import TextPaddingProcessor, merge_text_padding
import test_cli_generate
from pipelines_fixtures import build, tiny_wan_pipeline
from test_cli_generate import PROMPT, size_args

model_args = test_cli_generate.model_args  # the CLI tests' model fixture

TEXT_LEN = 12
REAL = (3, 7)  # real text rows per batch row; the rest is zero padding


class KeyLengths:
    """Wraps ``F.scaled_dot_product_attention`` (which diffusers' native backend calls) and
    records the key length of every cross-attention call (queries and keys of other lengths)."""

    def __init__(self, monkeypatch):
        self.seen = []
        original = F.scaled_dot_product_attention

        def sdpa(query, key, value, *args, **kwargs):
            if query.shape[-2] != key.shape[-2]:
                self.seen.append(key.shape[-2])
            return original(query, key, value, *args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)


def padded_text(real=REAL, length=TEXT_LEN, dim=16, seed=5):
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(len(real), length, dim)
    for b, n in enumerate(real):
        text[b, :n] = torch.randn(n, dim, generator=g)
    return text


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def cross_modules(model):
    return {name: m for name, m in model.named_modules() if name.endswith("attn2")}


def assert_close(out, ref, rel=1e-5):
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err <= rel, f"relative error {err:.3g} > {rel}"


@pytest.mark.parametrize("family", ["wan", "wan_vace", "wan_animate", "chronoedit"])
def test_merged_output_equals_dense_with_fewer_keys(family, monkeypatch):
    model, inputs, _ = build(family)
    inputs["encoder_hidden_states"] = padded_text()
    ref = forward(model, inputs)
    keys = KeyLengths(monkeypatch)
    forward(model, inputs)
    untouched = list(keys.seen)
    calls = len(cross_modules(model))  # WanVACE: vace_blocks.0.attn2 too, on the same text
    assert untouched.count(TEXT_LEN) == calls  # the untouched model sees every padded row
    keys.seen.clear()
    with merge_text_padding(model) as handle:
        out = forward(model, inputs)
    # the padding of the longest prompt starts at row 7: rows 0..7 are kept (WanAnimate's face
    # adapter, cross-attention to face tokens, is another processor and keeps its length)
    assert keys.seen == [1 + max(REAL) if n == TEXT_LEN else n for n in untouched]
    assert handle.merged_calls == calls and handle.unchanged_calls == 0
    assert_close(out, ref)


def test_padding_weight_matters():
    """Without the log(count) bias the merged call would differ: the padding carries weight."""
    model, inputs, _ = build("wan")
    inputs["encoder_hidden_states"] = padded_text()
    ref = forward(model, inputs)
    truncated = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, :1 + max(REAL)])
    assert (forward(model, truncated) - ref).abs().max().item() > 1e-3 * ref.abs().max().item()


def test_batch_rows_of_one_length_and_a_lone_real_row(monkeypatch):
    model, inputs, _ = build("wan")
    for real in ((4, 4), (1, 5)):
        inputs["encoder_hidden_states"] = padded_text(real)
        ref = forward(model, inputs)
        keys = KeyLengths(monkeypatch)
        with merge_text_padding(model):
            out = forward(model, inputs)
        assert keys.seen == [1 + max(real)] * 2
        assert_close(out, ref)


@pytest.mark.parametrize("case", ["no padding", "one padded row", "one batch row unpadded"])
def test_calls_it_cannot_merge_run_unchanged(case, monkeypatch):
    model, inputs, _ = build("wan")
    text = padded_text()
    if case == "no padding":
        text = torch.randn(2, TEXT_LEN, 16)
    elif case == "one padded row":
        text[:, :-1] = torch.randn(2, TEXT_LEN - 1, 16)  # only the last row is zero
    else:
        text[1] = torch.randn(TEXT_LEN, 16)
    inputs["encoder_hidden_states"] = text
    ref = forward(model, inputs)
    keys = KeyLengths(monkeypatch)
    with merge_text_padding(model) as handle:
        out = forward(model, inputs)
    assert torch.equal(out, ref)
    assert keys.seen == [TEXT_LEN] * 2 and handle.merged_calls == 0 and handle.unchanged_calls == 2


def test_a_given_mask_and_a_backend_without_masks_run_unchanged(monkeypatch):
    model, _, _ = build("wan")
    attn = model.blocks[0].attn2
    hidden = torch.randn(2, 9, attn.inner_dim)
    text = model.condition_embedder.text_embedder(padded_text())
    mask = torch.zeros(2, 1, 1, TEXT_LEN)
    mask[0, ..., -2:] = -math.inf
    with torch.no_grad():
        ref_masked = attn(hidden, text, mask)
        ref = attn(hidden, text)
        keys = KeyLengths(monkeypatch)
        with merge_text_padding(model) as handle:
            assert torch.equal(attn(hidden, text, mask), ref_masked)
            assert keys.seen == [TEXT_LEN] and handle.unchanged_calls == 1
            attn.processor._attention_backend = "_native_math"  # takes masks: merges
            assert_close(attn(hidden, text), ref)
            assert keys.seen[-1] == 1 + max(REAL) and handle.merged_calls == 1
            attn.processor._attention_backend = "_native_flash"  # drops masks: unchanged
            flash = attn(hidden, text)
            assert keys.seen[-1] == TEXT_LEN and handle.merged_calls == 1
            assert_close(flash, ref)
            attn.processor._attention_backend = None
        assert attn.processor._attention_backend is None  # written through to the original


def test_remove_restores_the_processors_and_the_output():
    model, inputs, _ = build("wan")
    inputs["encoder_hidden_states"] = padded_text()
    originals = {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")}
    ref = forward(model, inputs)
    first = merge_text_padding(model)
    assert sorted(first.modules) == sorted(cross_modules(model))
    assert all(isinstance(m.processor, TextPaddingProcessor) for m in cross_modules(model).values())
    assert all(not isinstance(model.get_submodule(n).processor, TextPaddingProcessor) for n in originals
               if not n.endswith("attn2"))
    second = merge_text_padding(model)  # replaces the first
    assert first.removed and all(m.processor.original is originals[n] for n, m in cross_modules(model).items())
    first.remove()  # a no-op now
    assert all(isinstance(m.processor, TextPaddingProcessor) for m in cross_modules(model).values())
    second.remove()
    second.remove()
    assert {name: m.processor for name, m in model.named_modules() if hasattr(m, "processor")} == originals
    assert all(model.get_submodule(n).processor is p for n, p in originals.items())
    assert torch.equal(forward(model, inputs), ref)


def test_wrapper_keeps_the_signature_modules_filter_by():
    import inspect

    model, _, _ = build("wan")
    attn = model.blocks[0].attn2
    original = attn.processor
    with merge_text_padding(model):
        assert inspect.signature(attn.processor.__call__) == inspect.signature(original.__call__)


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_pipeline()


CALL = dict(prompt="a red circle moving left", negative_prompt="", num_frames=5, height=16, width=32,
            guidance_scale=2.0, max_sequence_length=16, output_type="latent", num_inference_steps=4)


def run(pipe):
    return pipe(generator=torch.Generator().manual_seed(0), **CALL).frames


def test_composes_with_sparse_attention_and_a_cache_in_either_order(pipe):
    pattern = ds.Neighborhood(kernel=(1, 3, 3))
    config = cache_config("taylorseer", pipe, cache_interval=2, disable_cache_before_step=2)  # predicts attn2 too
    dense = run(pipe)
    with merge_text_padding(pipe) as handle:
        merged = run(pipe)
    assert handle.merged_calls > 0
    assert_close(merged, dense)
    with ds.applied(pipe, pattern):
        sparse = run(pipe)
    with cached(pipe, config):
        cache_only = run(pipe)
    assert not torch.equal(sparse, dense) and not torch.equal(cache_only, dense)

    # merge, then sparse; remove the merge first: exactly sparse; then exactly dense
    merging = merge_text_padding(pipe)
    with ds.applied(pipe, pattern):
        assert_close(run(pipe), sparse, 1e-4)
        assert merging.merged_calls > 0
        merging.remove()
        assert torch.equal(run(pipe), sparse)
    assert torch.equal(run(pipe), dense)
    # sparse, then merge; remove sparse first: exactly the merged output
    sparsing = ds.apply(pipe, pattern)
    first = merge_text_padding(pipe)
    merging = merge_text_padding(pipe)  # applying again replaces the first
    assert_close(run(pipe), sparse, 1e-4)
    assert first.merged_calls == 0 and merging.merged_calls > 0
    sparsing.remove()
    assert torch.equal(run(pipe), merged)
    merging.remove()
    # cache, then merge, and merge, then cache
    with cached(pipe, config):
        with merge_text_padding(pipe) as merging:
            assert_close(run(pipe), cache_only, 1e-4)
        assert merging.merged_calls > 0
        assert torch.equal(run(pipe), cache_only)
    with merge_text_padding(pipe) as merging:
        with cached(pipe, config):
            assert_close(run(pipe), cache_only, 1e-4)
        assert merging.merged_calls > 0
        assert torch.equal(run(pipe), merged)
    assert torch.equal(run(pipe), dense)


def test_image_branch_and_other_families_are_refused():
    from diffusers import WanTransformer3DModel

    i2v = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, image_dim=8,
                                added_kv_proj_dim=16, rope_max_seq_len=32)
    assert i2v.blocks[0].attn2.add_k_proj is not None
    before = i2v.blocks[0].attn2.processor
    with pytest.raises(ValueError, match=r"transformer_wan\.WanAttnProcessor \(image branch, left alone\) x1"):
        merge_text_padding(i2v)
    assert i2v.blocks[0].attn2.processor is before
    skyreels, _, _ = build("skyreels_v2")
    with pytest.raises(ValueError, match=r"SkyReelsV2AttnProcessor x4"):
        merge_text_padding(skyreels)
    flux, _, _ = build("flux")
    with pytest.raises(ValueError, match=r"FluxAttnProcessor"):
        merge_text_padding(flux)
    with pytest.raises(TypeError, match="target must be"):
        merge_text_padding(object())


def test_exported():
    assert ds.merge_text_padding is merge_text_padding


def test_generate_flag_gives_the_same_image(tmp_path, capsys, model_args):
    sizes = size_args(frames=1, height=64, width=64, steps=2)
    images = []
    for flag in ([], ["--merge-text-padding"]):
        out = tmp_path / f"image{len(flag)}.png"
        code = main(["generate", PROMPT, "-o", str(out), *model_args, *sizes, *flag])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        merged = re.search(r"merged text padding in (\d+) of (\d+) cross-attention calls", captured.out)
        assert (merged is not None) == bool(flag)
        if flag:  # every cross-attention call of the run: 2 steps x (cond, uncond) x the model's blocks
            assert 0 < int(merged[1]) == int(merged[2]) and int(merged[2]) % 4 == 0
        images.append(video_io.read_frames(out).astype(np.float64) / 255)
    mse = float(np.mean((images[0] - images[1]) ** 2))
    assert mse == 0 or 10 * math.log10(1 / mse) > 50


def test_bench_flag_adds_the_merged_rows(tmp_path, capsys, model_args):
    from test_cli_bench import parse_table

    pattern = "sliding-tile:tile=1x4x4,window=3x1x1"
    code = main(["bench", *model_args, *size_args(frames=3, height=16, width=16, steps=1), "--pattern", pattern,
                 "--prompts", PROMPT, "--no-warmup", "--merge-text-padding"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = parse_table(captured.out)
    assert list(rows) == ["dense", "dense + merged text", pattern, f"{pattern} + merged text"]
    assert rows["dense + merged text"]["psnr"] > 50 and rows["dense + merged text"]["density"] == 1.0
