"""Attention masks the runtime turns into key masks, and the ones it refuses."""

from __future__ import annotations

import pytest
import torch

from dit_sparse.pipelines.hooks import key_mask_from

KEEP = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)


@pytest.mark.parametrize("shape", [(2, 5), (2, 1, 5), (2, 1, 1, 5)])
def test_key_padding_masks(shape):
    assert torch.equal(key_mask_from(KEEP.view(shape), 2, 5), KEEP)
    additive = torch.zeros(shape).masked_fill(~KEEP.view(shape), float("-inf"))
    assert torch.equal(key_mask_from(additive, 2, 5), KEEP)


@pytest.mark.parametrize("heads_dim", [True, False])
def test_padding_on_both_sides_reduces_to_the_key_mask(heads_dim):
    both = KEEP[:, :, None] & KEEP[:, None, :]  # keep[q] & keep[k], as HunyuanVideo 1.5 builds it
    assert torch.equal(key_mask_from(both[:, None] if heads_dim else both, 2, 5), KEEP)


@pytest.mark.parametrize("mask", [
    torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 1, 5, 5),        # causal
    torch.block_diag(torch.ones(2, 2), torch.ones(3, 3)).bool().expand(2, 1, 5, 5),  # block-diagonal
    torch.ones(2, 1, 5, 4, dtype=torch.bool),                          # not square
])
def test_other_masks_are_refused(mask):
    with pytest.raises(ValueError, match="not a key padding mask for batch=2, seq=5"):
        key_mask_from(mask, 2, 5)
