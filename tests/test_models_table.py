"""docs/models.md matches the adapters; unsupported classes and shapes fail with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dit_sparse as ds
from dit_sparse.pipelines.adapters import REFUSED, adapter_for, supported_classes
from dit_sparse.pipelines.adapters.models_table import render, rows
from dit_sparse.pipelines.api import apply, remove

from pipelines_fixtures import build, run


DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def _doc_rows(text):
    return {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `")}


def test_models_doc_is_up_to_date():
    """The whole file under the diffusers it was generated with; under another release (CI
    installs what the index serves) every class both know must still read the same."""
    import diffusers

    doc, now = DOC.read_text(), render()
    stale = "docs/models.md is stale: run python -m dit_sparse.pipelines.adapters"
    if f"diffusers {diffusers.__version__} (" in doc:
        assert doc == now, stale
    else:
        old, new = _doc_rows(doc), _doc_rows(now)
        common = set(old) & set(new)
        assert len(common) >= 20, f"docs/models.md and diffusers {diffusers.__version__} share {len(common)} classes"
        assert {c: old[c] for c in common} == {c: new[c] for c in common}, stale


def test_table_covers_supported_and_refused_classes():
    table = {name: (ok, why) for name, ok, why in rows()}
    for name in supported_classes():
        assert table[name][0] == "yes", name
    for name in ("SanaTransformer2DModel", "SanaVideoTransformer3DModel", "Kandinsky5Transformer3DModel",
                 "WanVACETransformer3DModel", "QwenImageTransformer2DModel"):
        assert name in table, name  # the diffusers walk finds the classes the issue names
    assert table["SanaVideoTransformer3DModel"] == ("no", REFUSED["SanaVideoTransformer3DModel"])
    assert "linear attention" in table["SanaTransformer2DModel"][1]
    assert not set(REFUSED) & set(supported_classes())


def test_refused_class_error_says_why():
    latte = type("LatteTransformer3DModel", (torch.nn.Module,), {})()
    with pytest.raises(TypeError, match=r"LatteTransformer3DModel \(factorized attention.*supported transformer"):
        adapter_for(latte)


def _forward_error(family, **changes):
    model, inputs, grid = build(family)
    apply(model, ds.Full())
    try:
        with pytest.raises(ValueError) as info:
            run(model, {**inputs, **changes})
    finally:
        assert remove(model)
    return str(info.value)


def test_skyreels_block_causal_forward_is_refused():
    model, inputs, grid = build("skyreels_v2")
    model.register_to_config(num_frame_per_block=3)
    apply(model, ds.Full())
    try:
        with pytest.raises(ValueError, match="num_frame_per_block=3"):
            run(model, inputs)
    finally:
        assert remove(model)


def test_qwenimage_edit_reference_images_are_refused():
    message = _forward_error("qwenimage", img_shapes=[[(1, 5, 7), (1, 5, 7)]] * 2)
    assert "img_shapes" in message and "several images" in message


def test_lumina2_unequal_caption_lengths_are_refused():
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 5:] = 0
    message = _forward_error("lumina2", encoder_attention_mask=mask)
    assert "[5, 8]" in message and "separate forwards" in message


def test_allegro_self_attention_mask_is_refused():
    message = _forward_error("allegro", attention_mask=torch.ones(2, 3, 10, 14))
    assert "attention_mask" in message


def test_flux2_reference_images_are_refused():
    model, inputs, grid = build("flux2")
    ids = inputs["img_ids"]
    ref = ids.clone()
    ref[:, 0] = 10  # a reference image: its own t coordinate, appended after the target
    message = _forward_error("flux2", hidden_states=torch.cat([inputs["hidden_states"]] * 2, dim=1),
                             img_ids=torch.cat([ids, ref]))
    assert "2 image(s)" in message


def test_ltx2_appended_reference_tokens_are_refused():
    model, inputs, grid = build("ltx2")
    x = inputs["hidden_states"]
    message = _forward_error("ltx2", hidden_states=torch.cat([x, x[:, :35]], dim=1))
    assert "140 video tokens" in message and "(3, 5, 7)" in message
    message = _forward_error("ltx2", video_self_attention_mask=torch.ones(2, 105, 105))
    assert "video_self_attention_mask" in message


def test_motif_video_decoder_layers_are_refused():
    model, inputs, grid = build("motif_video")
    model.register_to_config(num_decoder_layers=1)
    apply(model, ds.Full())
    try:
        with pytest.raises(ValueError, match="num_decoder_layers=1"):
            run(model, inputs)
    finally:
        assert remove(model)


def test_joyimage_edit_grid_of_single_and_multi_item_inputs():
    model, inputs, grid = build("joyimage_edit")
    adapter = adapter_for(model)
    assert adapter.grid(model, {"hidden_states": torch.zeros(2, 4, 3, 10, 14)}) == (3, 5, 7)
    assert adapter.grid(model, {"hidden_states": torch.zeros(2, 2, 4, 2, 10, 14)}) == (4, 5, 7)  # 2 items x 2 frames
    with pytest.raises(ValueError, match=r"shape \(2, 4, 10, 14\)"):
        adapter.grid(model, {"hidden_states": torch.zeros(2, 4, 10, 14)})
    single = {**inputs, "hidden_states": torch.randn(2, 4, 3, 10, 14, generator=torch.Generator().manual_seed(5))}
    dense = run(model, single)
    apply(model, ds.Neighborhood(kernel=(3, 3, 3)))
    try:
        sparse = run(model, single)
    finally:
        assert remove(model)
    assert sparse.shape == dense.shape and (sparse - dense).abs().max() > 1e-3
