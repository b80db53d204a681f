"""The adapters' shared helpers: layer-name predicates, patch sizes from a config, patchified grids."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dit_sparse.pipelines.adapters import config_patch, hidden_states_grid, layer_names, patchified_grid


def _model(**config):
    return SimpleNamespace(config=SimpleNamespace(**config))


def test_layer_names_match_whole_names_only():
    pick = layer_names(r"blocks\.\d+\.attn1", r"vace_blocks\.\d+\.attn1")
    assert [n for n in ("blocks.0.attn1", "blocks.11.attn1", "vace_blocks.2.attn1") if pick(n, None)] == [
        "blocks.0.attn1", "blocks.11.attn1", "vace_blocks.2.attn1"]
    for name in ("blocks.0.attn2", "blocks.0.attn1.to_q", "x.blocks.0.attn1", "blocks.a.attn1", "blocks.0.attn1\n", ""):
        assert not pick(name, None), name
    with pytest.raises(ValueError, match="at least one pattern"):
        layer_names()


@pytest.mark.parametrize("config, patch", [
    (dict(patch_size=(1, 2, 2)), (1, 2, 2)),
    (dict(patch_size=[2, 4, 3]), (2, 4, 3)),                 # a config read back from JSON holds lists
    (dict(patch_size=2, patch_size_t=3), (3, 2, 2)),
    (dict(patch_size=2, patch_size_t=None), (1, 2, 2)),      # CogVideoX 1.0
    (dict(patch_size=4), (1, 4, 4)),                         # spatial patch only (Mochi, SD3)
])
def test_config_patch(config, patch):
    assert config_patch(_model(**config)) == patch


def test_patchified_grid_rounds_down_and_optionally_up_in_time():
    assert patchified_grid((7, 11, 15), (2, 2, 4)) == (3, 5, 3)
    assert patchified_grid((7, 11, 15), (2, 2, 4), ceil_frames=True) == (4, 5, 3)
    assert patchified_grid((8, 10, 16), (2, 2, 4), ceil_frames=True) == (4, 5, 4)


@pytest.mark.parametrize("layout, shape, config, grid", [
    ("BCFHW", (2, 4, 5, 10, 14), dict(patch_size=(1, 2, 2)), (5, 5, 7)),
    ("BCFHW", (2, 4, 5, 10, 14), dict(patch_size=2, patch_size_t=2), (2, 5, 7)),
    ("BFCHW", (2, 5, 4, 10, 14), dict(patch_size=2, patch_size_t=None), (5, 5, 7)),
    ("BCHW", (2, 4, 10, 14), dict(patch_size=2), (1, 5, 7)),
])
def test_hidden_states_grid(layout, shape, config, grid):
    assert hidden_states_grid(layout)(_model(**config), {"hidden_states": torch.zeros(shape)}) == grid


def test_hidden_states_grid_ceil_frames():
    grid = hidden_states_grid("BFCHW", ceil_frames=True)
    assert grid(_model(patch_size=2, patch_size_t=2), {"hidden_states": torch.zeros(1, 5, 4, 10, 14)}) == (3, 5, 7)


def test_hidden_states_grid_errors_name_the_problem():
    with pytest.raises(ValueError, match="layout='BHWC'"):
        hidden_states_grid("BHWC")
    grid = hidden_states_grid("BCFHW")
    with pytest.raises(ValueError, match=r"hidden_states has shape \(2, 4, 10, 14\).*5 dimensions \(BCFHW\)"):
        grid(_model(patch_size=(1, 2, 2)), {"hidden_states": torch.zeros(2, 4, 10, 14)})
    with pytest.raises(ValueError, match="without 'hidden_states'"):
        grid(_model(patch_size=(1, 2, 2)), {})
