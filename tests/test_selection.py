"""Selection on synthetic error tables: max-error and budget modes, ties, impossible budgets,
dense warm-up steps, default candidates, and measured errors against the float64 reference."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dit_sparse as ds
from dit_sparse.selection import (ErrorTable, candidate_errors, check_mode, choose_dense_steps, default_candidates,
                                  head_density, select, select_budget, select_max_error)

T = torch.tensor


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# candidates:            0     1     2     3 (dense)
DENSITY = _t([[[0.10, 0.25, 0.50, 1.0]] * 2] * 2)          # [L=2, H=2, C=4]
ERRORS = _t([[[0.30, 0.08, 0.02, 0.0], [0.04, 0.03, 0.01, 0.0]],
             [[0.50, 0.20, 0.06, 0.0], [0.09, 0.02, 0.00, 0.0]]])


def test_max_error_picks_cheapest_under_the_bound():
    choice = select_max_error(ERRORS, DENSITY, 0.05)
    assert choice.tolist() == [[2, 0], [3, 1]]
    assert select_max_error(ERRORS, DENSITY, 1.0).tolist() == [[0, 0], [0, 0]]
    assert select_max_error(ERRORS, DENSITY, 0.0).tolist() == [[3, 3], [3, 2]]  # error 0 at density 0.5 wins


def test_max_error_ties_and_no_qualifying_candidate():
    density = _t([[[0.2, 0.2, 0.2, 0.5]]])
    errors = _t([[[0.03, 0.01, 0.01, 0.0]]])
    # equal density: the lower error; equal density and error: the earlier candidate
    assert select_max_error(errors, density, 0.05).tolist() == [[1]]
    # nothing under the bound: the lowest error (then lower density, then earlier)
    errors = _t([[[0.3, 0.2, 0.2, 0.25]]])
    assert select_max_error(errors, density, 0.1).tolist() == [[1]]


def test_budget_spends_density_where_it_saves_most():
    # mean density <= 0.25 over 4 cells = 1.0 in total; cheapest everywhere costs 0.4
    choice = select_budget(ERRORS, DENSITY, 0.25)
    spent = DENSITY.gather(-1, choice[..., None]).mean().item()
    assert spent <= 0.25 + 1e-12
    # layer 0 head 0 and layer 1 head 0 have the steep error curves: they get the density
    assert choice[0, 0] > 0 and choice[1, 0] > 0
    assert choice[0, 1] == 0 and choice[1, 1] == 0
    # budget 1: everything may be dense; the summed error must then be 0
    assert ERRORS.gather(-1, select_budget(ERRORS, DENSITY, 1.0)[..., None]).sum().item() == 0.0


def _brute_force(errors, density, budget):
    l, h, c = errors.shape
    cells = list(itertools.product(range(l), range(h)))
    best = None
    for combo in itertools.product(range(c), repeat=len(cells)):
        d = sum(density[i, j, x].item() for (i, j), x in zip(cells, combo))
        if d > budget * len(cells) + 1e-9:
            continue
        e = sum(errors[i, j, x].item() for (i, j), x in zip(cells, combo))
        best = e if best is None else min(best, e)
    return best


def test_budget_matches_brute_force_on_a_hand_made_table():
    for budget in (0.1, 0.2, 0.3, 0.45, 0.6, 0.8):
        choice = select_budget(ERRORS, DENSITY, budget)
        got = ERRORS.gather(-1, choice[..., None]).sum().item()
        assert got == pytest.approx(_brute_force(ERRORS, DENSITY, budget), abs=1e-12), budget


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 1.0))
def test_budget_is_feasible_and_beats_every_uniform_choice(seed, budget):
    g = torch.Generator().manual_seed(seed)
    l, h, c = 3, 2, 5
    density = torch.sort(torch.rand(c, generator=g, dtype=torch.float64)).values.expand(l, h, c).clone()
    errors = torch.rand(l, h, c, generator=g, dtype=torch.float64)
    if density[..., 0].mean() > budget:
        with pytest.raises(ValueError, match="impossible"):
            select_budget(errors, density, budget)
        return
    choice = select_budget(errors, density, budget)
    assert density.gather(-1, choice[..., None]).mean().item() <= budget + 1e-9
    total = errors.gather(-1, choice[..., None]).sum().item()
    for x in range(c):
        if density[..., x].mean().item() <= budget:
            assert total <= errors[..., x].sum().item() + 1e-12
    assert torch.equal(choice, select_budget(errors, density, budget))  # deterministic


def test_budget_ties_are_deterministic():
    density = _t([[[0.2, 0.2, 0.6]], [[0.2, 0.2, 0.6]]])
    errors = _t([[[0.1, 0.1, 0.0]], [[0.1, 0.1, 0.0]]])
    # room for one upgrade; both layers save the same: the first layer gets it, earlier candidates win
    assert select_budget(errors, density, 0.4).tolist() == [[2], [0]]


def test_impossible_budget_is_a_clear_error():
    with pytest.raises(ValueError, match=r"budget=0.05 is impossible.*0\.1000"):
        select_budget(ERRORS, DENSITY, 0.05)


@pytest.mark.parametrize("max_error, budget, exc, match", [
    (None, None, ValueError, "exactly one"),
    (0.1, 0.5, ValueError, "exactly one"),
    (None, -0.1, ValueError, "must be >= 0"),
    (None, 1.5, ValueError, r"in \(0, 1\]"),
    (None, 0.0, ValueError, r"in \(0, 1\]"),
    (-1.0, None, ValueError, ">= 0"),
    ("0.1", None, TypeError, "number"),
])
def test_mode_arguments(max_error, budget, exc, match):
    with pytest.raises(exc, match=match):
        check_mode(max_error, budget)


def _table(step_errors):
    """2 layers x 1 head x 3 candidates (densities 0.1, 0.3, 1.0), errors per step."""
    errors = _t(step_errors)
    n = errors.shape[0]
    density = _t([[[0.1, 0.3, 1.0]]] * 2)
    return ErrorTable(("a", "b"), 1, (ds.Neighborhood(1), ds.Neighborhood(3), ds.Full()), tuple(range(n)),
                      errors, density)


def test_dense_warmup_from_per_step_errors():
    early = [[[0.9, 0.5, 0.0]], [[0.9, 0.5, 0.0]]]
    late = [[[0.02, 0.01, 0.0]], [[0.02, 0.01, 0.0]]]
    table = _table([early, early, late, late, late, late])
    sel = select(table, max_error=0.05, num_steps=6)
    assert sel.dense_steps == 2
    # re-selected on the sparse steps only: the cheapest candidate is within 0.05 there
    assert sel.choice.tolist() == [[0], [0]]
    assert sel.errors.max().item() == pytest.approx(0.02)
    # capped at max_dense_fraction of the schedule; step 1 then runs sparse and needs Full
    capped = select(table, max_error=0.05, num_steps=6, max_dense_fraction=0.2)
    assert capped.dense_steps == 1 and capped.choice.tolist() == [[2], [2]]
    # budget mode: the default bound is twice the median per-step error
    sel = select(_table([early, late, late, late]), budget=0.1, num_steps=4)
    assert sel.dense_steps == 1 and sel.choice.tolist() == [[0], [0]]
    assert select(_table([late] * 4), budget=0.1).dense_steps == 0


def test_phases_select_on_their_own_steps_under_their_own_bound():
    early = [[[0.9, 0.5, 0.0]], [[0.9, 0.5, 0.0]]]
    mid = [[[0.2, 0.04, 0.0]], [[0.2, 0.04, 0.0]]]
    late = [[[0.2, 0.1, 0.0]], [[0.3, 0.1, 0.0]]]
    table = _table([early, mid, mid, late, late, late])
    sel = select(table, max_error=0.05, num_steps=6, phases=[(3, 0.25)])
    assert sel.dense_steps == 1
    assert sel.choice.tolist() == [[1], [1]]  # steps 1-2 only: 0.04 <= 0.05 (steps 3-5 would need Full)
    assert sel.errors.flatten().tolist() == pytest.approx([0.04, 0.04])
    (phase,) = sel.phases
    assert phase.start == 3 and phase.value == 0.25
    assert phase.choice.tolist() == [[0], [1]]  # layer a: 0.2 <= 0.25; layer b: 0.3 > 0.25 -> 0.1
    assert phase.errors.flatten().tolist() == pytest.approx([0.2, 0.1])
    assert phase.density.flatten().tolist() == pytest.approx([0.1, 0.3])
    # without phases the same bound over steps 1-5 needs Full
    assert select(table, max_error=0.05, num_steps=6).choice.tolist() == [[2], [2]]
    # budget mode: a phase value is a budget
    sel = select(table, budget=0.3, num_steps=6, phases=[(3, 0.1)])
    assert sel.phases[0].choice.tolist() == [[0], [0]]


@pytest.mark.parametrize("phases, match", [
    ([(0, 0.1)], r"start step 0 must be an int >= 1"),
    ([(3, 0.1), (3, 0.2)], r"phases\[1\] start step 3 must be larger than the previous one \(3\)"),
    ([(3, -0.1)], r"max_error"),
    ([3], r"must be a \(start_step, max_error\) pair"),
    ([(9, 0.1)], r"phase start step 9 is after the last sampled step \(5\)"),
])
def test_bad_phases(phases, match):
    early = [[[0.9, 0.5, 0.0]], [[0.9, 0.5, 0.0]]]
    with pytest.raises(ValueError, match=match):
        select(_table([early] * 6), max_error=0.05, phases=phases)


def test_choose_dense_steps_counts_unsampled_steps_with_the_next_sample():
    assert choose_dense_steps([0.5, 0.5, 0.01], [0, 4, 9], 0.1, max_dense=20) == 9
    assert choose_dense_steps([0.01, 0.5], [0, 4], 0.1, max_dense=20) == 0
    assert choose_dense_steps([0.5, 0.5], [0, 4], 0.1, max_dense=20) == 5
    assert choose_dense_steps([0.5, 0.5], [0, 4], 0.1, max_dense=3) == 3


def test_error_table_validation_and_weighted_combination():
    with pytest.raises(ValueError, match="errors shape"):
        ErrorTable(("a",), 1, (ds.Full(),), (0,), torch.zeros(2, 1, 1, 1), torch.ones(1, 1, 1))
    with pytest.raises(ValueError, match="densities"):
        ErrorTable(("a",), 1, (ds.Full(),), (0,), torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1), 2.0))
    errors = _t([[[[0.3]]], [[[0.1]]]])
    weights = _t([[[1.0]], [[3.0]]])
    table = ErrorTable(("a",), 1, (ds.Full(),), (0, 1), errors, torch.ones(1, 1, 1), weights)
    assert table.combined().item() == pytest.approx(math.sqrt((0.09 * 1 + 0.01 * 3) / 4))
    assert table.combined(1).item() == pytest.approx(0.1)


def test_default_candidates_cover_the_shapes_in_tokens():
    grid = (5, 16, 24)
    cands = default_candidates(grid)
    kernels = [p.kernel for p in cands if type(p) is ds.Neighborhood]
    assert any(k[0] == 1 and k[1] < 16 for k in kernels)                 # spatial only
    assert any(k[0] < 5 and k[1:] == (16, 24) for k in kernels)          # temporal only
    assert any(1 < k[0] < 5 and k[1] < 16 and k[2] < 24 for k in kernels)  # 3D
    assert all(k[i] <= grid[i] for k in kernels for i in range(3))
    assert (5, 16, 24) not in kernels
    assert any(isinstance(p, ds.SlidingTile) for p in cands)
    assert sorted(p.topk for p in cands if isinstance(p, ds.BlockSparse) and p.far is None) == [0.125, 0.25, 0.5]
    assert isinstance(cands[-1], ds.Full) and len(set(cands)) == len(cands)
    # relative to the grid: a larger grid has larger windows (in tokens)
    big = [p.kernel for p in default_candidates((5, 32, 48)) if type(p) is ds.Neighborhood]
    assert max(k[1] for k in big) > max(k[1] for k in kernels if k[1] < 16)


def test_candidate_errors_against_the_float64_reference():
    layout = ds.TokenLayout(grid=(3, 5, 6), text_len=4, text_position="last")
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, layout.seq_len, 3, 8, generator=g) for _ in range(3))
    key_mask = torch.ones(2, layout.seq_len, dtype=torch.bool)
    key_mask[1, -2:] = False
    cands = [ds.Neighborhood((1, 3, 3)), ds.BlockSparse((1, 4, 4), topk=0.5), ds.Full()]
    dense, diff_sq, dense_sq, density = candidate_errors(q, k, v, cands, layout, key_mask=key_mask)
    ref_dense = ds.reference_attention(q, k, v, ds.Full(), layout, key_mask=key_mask).double()
    assert torch.allclose(dense.double(), ref_dense, atol=1e-5)
    for c, p in enumerate(cands):
        ref = ds.reference_attention(q, k, v, p, layout, key_mask=key_mask).double()
        for h in range(3):
            want = ((ref[:, :, h] - ref_dense[:, :, h]) ** 2).sum()
            assert diff_sq[h, c].item() == pytest.approx(want.item(), rel=1e-3, abs=1e-8)
    assert diff_sq[:, 2].abs().max() == 0 and (diff_sq[:, 0] > 0).all()
    assert torch.allclose(dense_sq, (ref_dense ** 2).sum((0, 1, 3)), rtol=1e-4)
    # per-head density of BlockSparse: from its mask; static patterns: pattern.density
    mask = cands[1].mask(layout, q, k).double()  # [B, H, S, S]
    assert torch.allclose(density[:, 1], mask.mean((-1, -2)).mean(0), atol=1e-9)
    assert torch.allclose(density[:, 0], torch.full((3,), cands[0].density(layout), dtype=torch.float64))
    assert torch.allclose(head_density(cands[1], layout, q, k).mean(), torch.tensor(cands[1].density(layout, q=q, k=k),
                                                                                   dtype=torch.float64))


def test_per_layer_selection_shares_one_pattern_and_uses_the_heads_rms_error():
    table = ErrorTable(("a", "b"), 2, (ds.Full(),) * 4, (0,), ERRORS[None], DENSITY)
    per_head = select(table, max_error=0.05)
    per_layer = select(table, max_error=0.05, per_head=False)
    # per head the heads of layer 0 differ (0.08 > 0.05 for head 0, 0.04 <= 0.05 for head 1)
    assert per_head.choice.tolist() == [[2, 0], [3, 1]]
    # per layer: RMS over heads; layer 0 candidate 1 = sqrt((0.08^2+0.03^2)/2) = 0.0604 > 0.05,
    # candidate 2 = 0.0158 -> 2; layer 1 candidate 2 = sqrt((0.06^2+0)/2) = 0.0424 -> 2
    assert per_layer.choice.tolist() == [[2, 2], [2, 2]]
    # budget mode: one pattern per layer, inside the budget
    sel = select(table, budget=0.3, per_head=False)
    assert all(len(set(row)) == 1 for row in sel.choice.tolist())
    assert sel.density.mean().item() <= 0.3 + 1e-9


def test_time_cost_ranks_candidates_by_measured_kernel_time():
    # candidate 1 is sparser than 2 but its kernel is slower: by time, 2 is the cheaper one
    time = _t([0.15, 0.60, 0.55, 1.0])
    table = ErrorTable(("a", "b"), 2, (ds.Full(),) * 4, (0,), ERRORS[None], DENSITY, time=time)
    by_density = select(table, max_error=0.05)
    by_time = select(table, max_error=0.05, cost="time")
    assert by_density.choice.tolist() == [[2, 0], [3, 1]]
    assert by_time.choice.tolist() == [[2, 0], [3, 2]]  # layer 1 head 1: 0.02 ok at 1 and 2; 2 is faster
    # the reported density stays the chosen candidates' density
    assert by_time.density.tolist() == [[0.5, 0.1], [1.0, 0.5]]
    # budget mode: the budget is a mean relative time
    sel = select(table, budget=0.5, cost="time")
    assert float(time[sel.choice].mean()) <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="cost='time' needs measured kernel times"):
        select(ErrorTable(("a", "b"), 2, (ds.Full(),) * 4, (0,), ERRORS[None], DENSITY), max_error=0.05, cost="time")
    with pytest.raises(ValueError, match="cost='flops' must be 'density' or 'time'"):
        select(table, max_error=0.05, cost="flops")
    with pytest.raises(ValueError, match="time must be"):
        ErrorTable(("a", "b"), 2, (ds.Full(),) * 4, (0,), ERRORS[None], DENSITY, time=_t([0.1, 0.0, 0.5, 1.0]))


def test_default_candidates_offer_far_fields_on_local_patterns():
    from dit_sparse.selection import default_candidates

    cands = default_candidates((5, 32, 32))
    far = [p for p in cands if p.far is not None]
    plain = {p.spec for p in cands if p.far is None}
    assert far and all(p.far.pool == (1, 8, 8) for p in far)
    for p in far:  # each is a local candidate of the list, or a block-sparse one, again with a far field
        assert p.exact_part().spec in plain
        if isinstance(p, ds.BlockSparse):
            assert p.far.pool == p.block and p.topk in (0.125, 0.25)
        else:
            assert p.exact_part().kernel[1] < 32 and p.exact_part().kernel[2] < 32
    assert sum(isinstance(p, ds.BlockSparse) and p.far is not None for p in cands) == 2
    assert isinstance(cands[-1], ds.Full)


def test_measurement_error_summary_lists_every_candidate_with_its_layer_errors():
    from dit_sparse.pipelines.profiling import Measurement

    # errors [steps, layers, heads, candidates]: step means 0.2 / 0.4 (layer a, b) for the
    # neighborhood, heads averaged; the table must show those, not another reduction
    errors = _t([[[[0.1, 0.0], [0.3, 0.0]], [[0.3, 0.0], [0.5, 0.0]]],
                 [[[0.1, 0.0], [0.3, 0.0]], [[0.3, 0.0], [0.5, 0.0]]]])
    density = _t([[[0.25, 1.0], [0.75, 1.0]], [[0.5, 1.0], [0.5, 1.0]]])
    cands = (ds.Neighborhood((1, 3, 3)), ds.Full())
    table = ErrorTable(("blocks.0", "blocks.1"), 2, cands, (0, 4), errors, density, time=_t([0.3, 1.0]))
    lines = Measurement(table, {}, {}).error_summary().splitlines()
    assert "blocks.0" in lines[0] and "blocks.1" in lines[0]
    assert len(lines) == 3
    cells = lines[1].split()
    assert cells[0] == cands[0].spec
    assert [float(x) for x in cells[1:]] == [0.5, 0.3, 0.2, 0.4]  # density, time, layer errors
    assert [float(x) for x in lines[2].split()[1:]] == [1.0, 1.0, 0.0, 0.0]
