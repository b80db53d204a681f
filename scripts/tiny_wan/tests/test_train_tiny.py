"""The sparse steps of scripts/tiny_wan/train_tiny.py: random local patterns per layer, trained under autograd."""

import re
from types import SimpleNamespace

import pytest
import torch

import dit_sparse as ds
import train_tiny
from pipelines_fixtures import build


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_default_sparse_patterns_parse_and_fit_the_training_grid():
    for spec in train_tiny.SPARSE_PATTERNS:
        pattern = ds.parse_pattern(spec)
        if type(pattern) is ds.Neighborhood:  # 9 x 64 x 64 pixels -> 5 x 16 x 16 tokens
            assert all(k <= n for k, n in zip(pattern.kernel, (5, 16, 16))), spec
    assert any(isinstance(ds.parse_pattern(s), ds.Full) for s in train_tiny.SPARSE_PATTERNS)


def test_sparse_table_one_pattern_per_self_attention_layer():
    patterns = ["neighborhood:kernel=3x3x3", "sliding-tile:tile=1x2x2,window=3x1x3", "full"]
    table = train_tiny.sparse_table(patterns, 12, _gen(0))
    assert len(table) == 12 and set(table.values()) <= set(patterns)
    assert table == train_tiny.sparse_table(patterns, 12, _gen(0))  # deterministic from the generator
    names = [f"blocks.{i}.attn1" for i in range(12)] + ["blocks.1.attn2", "blocks.10.attn1.to_q"]
    for i, regex in enumerate(table):
        # each key picks out its own layer only (blocks.1 must not also catch blocks.10)
        assert [n for n in names if re.search(regex, n)] == [f"blocks.{i}.attn1"]
    tables = [train_tiny.sparse_table(patterns, 12, _gen(s)) for s in range(5)]
    assert len({tuple(t.values()) for t in tables}) > 1


def test_sparse_training_step_has_gradients_and_remove_restores_dense():
    model, inputs, _ = build("wan")
    model.train()
    table = train_tiny.sparse_table(["neighborhood:kernel=3x3x3"], len(model.blocks), _gen(0))
    with torch.no_grad():
        dense = model(**inputs, return_dict=False)[0]
    handle = ds.apply(model, table)
    out = model(**inputs, return_dict=False)[0]
    assert (out - dense).abs().max() > 1e-4  # the local window is in effect
    out.square().mean().backward()
    handle.remove()
    for block in model.blocks:
        grad = block.attn1.to_q.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0
    with torch.no_grad():
        assert torch.equal(model(**inputs, return_dict=False)[0], dense)


def test_sample_sigmas_high_band_share():
    g = torch.Generator().manual_seed(0)
    base = train_tiny.sample_sigmas(20000, g, shift=3.0)
    g = torch.Generator().manual_seed(0)
    mixed = train_tiny.sample_sigmas(20000, g, shift=3.0, high_frac=0.3, high_min=0.9)
    for s in (base, mixed):
        assert float(s.min()) > 0.0 and float(s.max()) <= 1.0
    above = lambda s: float((s > 0.97).float().mean())  # noqa: E731
    assert above(base) < 0.02  # the shifted logit-normal alone barely visits the caption band
    # 30% uniform on [0.9, 1] puts 0.3 * 0.3 = 9% of the samples above 0.97, plus the rest's share
    assert 0.08 < above(mixed) < 0.12



class _StubVAE:
    """Codes pixel frame 0 alone and later frames in pairs, like the causal Wan encoder;
    ``first_gain`` scales the code of frame 0 only (1.0: one code for all frames), ``scale``
    the whole code."""

    def __init__(self, first_gain, scale=1.0):
        self.first_gain, self.scale = first_gain, scale

    def encode(self, x):
        first = x[:, :, :1] * self.first_gain
        pairs = (x[:, :, 1::2] + x[:, :, 2::2]) / 2
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=torch.cat([first, pairs], dim=2) * self.scale))


def test_static_spread_is_zero_for_a_time_homogeneous_code_and_grows_with_the_frame0_gap():
    x = torch.randn(2, 3, 9, 4, 4)
    assert train_tiny.static_spread(_StubVAE(1.0), x).item() < 1e-10
    gap = train_tiny.static_spread(_StubVAE(0.2), x).item()
    wider = train_tiny.static_spread(_StubVAE(-1.0), x).item()
    assert 0.0 < gap < wider
    # relative to the code's own variance: scaling the whole code leaves it unchanged
    assert abs(train_tiny.static_spread(_StubVAE(0.2, scale=7.0), x).item() - gap) < 1e-5
    # only the first frame of x matters (the clip is held still on it)
    y = x.clone()
    y[:, :, 1:] = torch.randn_like(y[:, :, 1:])
    assert abs(train_tiny.static_spread(_StubVAE(0.2), y).item() - gap) < 1e-6


def test_frame_noise_makes_one_frame_per_clip_less_noisy():
    sigma = torch.tensor([0.9, 0.5, 1.0, 0.7])
    s, timestep = train_tiny.frame_noise(sigma, (4, 8, 5, 6, 4), _gen(0), 0.1, 0.8)
    assert s.shape == (4, 1, 5, 1, 1) and timestep.shape == (4, 5 * 3 * 2)
    per_frame = s.view(4, 5)
    for i in range(4):
        lower = per_frame[i] < sigma[i]
        assert int(lower.sum()) == 1  # one reference frame, the rest at the clip's sigma
        assert torch.equal(per_frame[i][~lower], sigma[i].expand(4))
        r = float(per_frame[i][lower] / sigma[i])
        assert 0.1 <= r <= 0.8
        # the timesteps run frame by frame (Wan flattens tokens frame-major), 6 tokens a frame
        assert torch.allclose(timestep[i].view(5, 6), (per_frame[i] * 1000)[:, None].expand(5, 6))
    refs = [int(train_tiny.frame_noise(sigma, (4, 8, 5, 6, 4), _gen(k), 0.1, 0.8)[0].view(4, 5)[0].argmin())
            for k in range(12)]
    assert len(set(refs)) > 2  # the reference frame varies
    # tokens per frame follow the transformer's spatial patch; a temporal patch is refused
    _, per_pixel = train_tiny.frame_noise(sigma, (4, 8, 5, 6, 4), _gen(0), 0.1, 0.8, patch=(1, 1, 1))
    assert per_pixel.shape == (4, 5 * 6 * 4)
    with pytest.raises(ValueError, match="temporal patch"):
        train_tiny.frame_noise(sigma, (4, 8, 5, 6, 4), _gen(0), 0.1, 0.8, patch=(2, 2, 2))


def test_equal_per_token_timesteps_match_the_global_timestep():
    # the frame-noise steps embed a timestep per token; the pipeline passes one per clip
    model, inputs, _ = build("wan")
    model.eval()
    x = inputs["hidden_states"]
    p = model.config.patch_size
    tokens = (x.shape[2] // p[0]) * (x.shape[3] // p[1]) * (x.shape[4] // p[2])
    t = torch.full((x.shape[0],), 730.0)
    with torch.no_grad():
        glob = model(**{**inputs, "timestep": t}, return_dict=False)[0]
        per_token = model(**{**inputs, "timestep": t[:, None].expand(-1, tokens).contiguous()}, return_dict=False)[0]
        other = model(**{**inputs, "timestep": torch.full_like(t, 200.0)}, return_dict=False)[0]
    assert torch.allclose(per_token, glob, atol=1e-5)
    assert (other - glob).abs().max() > 1e-3  # the timestep matters, so the match means something


def test_dit_arch_from_flags_then_from_the_checkpoint(tmp_path):
    def args(heads=None, head_dim=None):
        return SimpleNamespace(ckpt=tmp_path, dit_heads=heads, dit_head_dim=head_dim)

    assert train_tiny.dit_arch(args()) == train_tiny.DIT_ARCH  # a new run: the shipped shape
    assert train_tiny.dit_arch(args(2, 64)) == {"heads": 2, "head_dim": 64}
    model = train_tiny.build_transformer(2, 64)
    assert (model.config.num_attention_heads, model.config.attention_head_dim) == (2, 64)
    # 2 x 64 and 4 x 32 have the same weight shapes: only the saved state can tell them apart
    shapes = {n: p.shape for n, p in model.state_dict().items()}
    assert shapes == {n: p.shape for n, p in train_tiny.build_transformer().state_dict().items()}
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "state.json").write_text('{"step": 3}')  # written before the flags
    assert train_tiny.dit_arch(args()) == train_tiny.DIT_ARCH
    (tmp_path / "dit" / "state.json").write_text('{"step": 3, "arch": {"heads": 2, "head_dim": 64}}')
    assert train_tiny.dit_arch(args()) == {"heads": 2, "head_dim": 64}  # resumed as saved
    assert train_tiny.dit_arch(args(2)) == {"heads": 2, "head_dim": 64}
    with pytest.raises(SystemExit, match="--dit-heads 4: the checkpoint .* has 2"):
        train_tiny.dit_arch(args(4))


def test_frame_noise_every_frame_its_own_level():
    sigma = torch.tensor([0.99, 0.6])
    s, timestep = train_tiny.frame_noise(sigma, (2, 8, 5, 4, 4), _gen(0), 0.3, 1.0, every=True)
    per_frame = s.view(2, 5)
    assert (per_frame >= 0.3 * sigma[:, None] - 1e-6).all() and (per_frame <= sigma[:, None] + 1e-6).all()
    assert len(set(per_frame[0].tolist())) == 5  # independent draws, not one reference frame
    assert torch.allclose(timestep.view(2, 5, 4), (per_frame * 1000)[..., None].expand(2, 5, 4))
    one, _ = train_tiny.frame_noise(sigma, (2, 8, 5, 4, 4), _gen(0), 0.3, 1.0)
    assert int((one.view(2, 5) < sigma[:, None]).sum(1).max()) == 1  # the default is unchanged


def test_frame_noise_hidden_tells_every_token_the_clip_sigma():
    sigma = torch.tensor([0.97, 0.5])
    s, timestep = train_tiny.frame_noise(sigma, (2, 8, 5, 4, 4), _gen(0), 0.7, 0.95, hidden=True)
    shown, _ = train_tiny.frame_noise(sigma, (2, 8, 5, 4, 4), _gen(0), 0.7, 0.95)
    assert torch.equal(s, shown)  # the same noise levels as without it...
    assert int((s.view(2, 5) < sigma[:, None]).sum(1).min()) == 1
    assert torch.allclose(timestep, (sigma * 1000)[:, None].expand(2, 20))  # ...but not told which frame


def test_bf16_autocast_is_refused_on_a_cpu_without_bf16_instructions(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(train_tiny, "cpu_half_matmul_is_native", lambda name: name != "bfloat16")
    with pytest.raises(SystemExit) as exc:
        train_tiny.main(["--stage", "dit", "--ckpt", str(tmp_path), "--autocast", "bf16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--autocast bf16" in err and "use --autocast none" in err
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def _budget_args(steps=None, minutes=20.0, extend=False):
    return SimpleNamespace(steps=steps, minutes=minutes, extend=extend)


def test_step_budget_sets_the_schedule_and_extends_from_the_current_step():
    state = {"step": 0, "elapsed": 0.0}
    train_tiny.set_budget(state, _budget_args(steps=400), resumed=False)
    state.update(step=100, elapsed=1e6)  # wall time does not count against a step budget
    assert train_tiny.progress(state, 1e6) == pytest.approx(0.25)
    train_tiny.set_budget(state, _budget_args(), resumed=True)  # a plain resume keeps it
    assert state["step_budget"] == 400
    train_tiny.set_budget(state, _budget_args(steps=300, extend=True), resumed=True)
    assert state["step_budget"] == 400 and train_tiny.progress(state, 0.0) == pytest.approx(0.25)
    state["step"] = 400
    train_tiny.set_budget(state, _budget_args(steps=600, extend=True), resumed=True)
    assert state["step_budget"] == 1000 and train_tiny.progress(state, 0.0) == pytest.approx(0.4)
    # a later phase by wall time: the step budget goes, minutes add to the elapsed time
    state["elapsed"] = 600.0
    train_tiny.set_budget(state, _budget_args(minutes=10.0, extend=True), resumed=True)
    assert "step_budget" not in state and state["budget"] == 1200.0
    assert train_tiny.progress(state, 900.0) == pytest.approx(0.75)
    fresh = {"step": 0, "elapsed": 0.0}
    train_tiny.set_budget(fresh, _budget_args(minutes=2.0), resumed=False)
    assert fresh["budget"] == 120.0 and train_tiny.progress(fresh, 60.0) == pytest.approx(0.5)


def test_vae_stage_stops_at_its_step_budget_and_extends(tmp_path):
    import json

    small = ["--stage", "vae", "--ckpt", str(tmp_path), "--vae-batch", "1", "--vae-frames", "1", "--vae-crop", "16"]
    train_tiny.main([*small, "--steps", "2", "--minutes", "0.001"])  # minutes ignored under --steps
    state = json.loads((tmp_path / "vae" / "state.json").read_text())
    assert state["step"] == 2 and state["step_budget"] == 2
    train_tiny.main([*small, "--steps", "1", "--extend"])
    assert json.loads((tmp_path / "vae" / "state.json").read_text())["step"] == 3


@pytest.mark.parametrize("argv, expected", [
    (["--stage", "vae", "--steps", "0"], "--steps 0 must be >= 1"),
    (["--stage", "export", "--steps", "5"], "--steps 5 with --stage export"),
    (["--stage", "dit", "--direction-contrast", "-1"], "--direction-contrast -1.0 / --contrast-margin 0.05: both must be >= 0"),
    (["--stage", "dit", "--contrast-margin", "-0.1"], "both must be >= 0"),
    (["--stage", "dit", "--contrast-band", "0.9", "0.5"], "--contrast-band 0.9 0.5: needs 0 <= LO <= HI <= 1"),
    (["--stage", "dit", "--contrast-band", "0.9", "1.5"], "--contrast-band 0.9 1.5"),
])
def test_bad_step_budgets_and_contrast_flags_are_refused(argv, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        train_tiny.main([*argv, "--ckpt", str(tmp_path)])
    assert exc.value.code == 2 and expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_direction_contrast_is_zero_once_the_reversed_caption_costs_the_margin_more():
    torch.manual_seed(0)
    err = torch.randn(3, 4, 5, 2, 2)
    w = torch.ones_like(err)
    e = err.square().mean(dim=(1, 2, 3, 4))
    # reversed errors 10% above the true ones: the 5% margin is met, nothing to learn
    loss, gap = train_tiny.direction_contrast(err, err * 1.1 ** 0.5, w, margin=0.05)
    assert loss.item() == 0.0 and gap == pytest.approx(0.1, rel=1e-5)
    # reversed = true: the hinge asks for the margin, and pushes the two predictions apart
    a = err.clone().requires_grad_(True)
    b = err.clone().requires_grad_(True)
    loss, gap = train_tiny.direction_contrast(a, b, w, margin=0.05)
    assert loss.item() == pytest.approx(0.05 * e.mean().item(), rel=1e-5) and gap == 0.0
    loss.backward()
    assert torch.allclose(a.grad, -b.grad)
    assert (a.grad * err).sum() > 0 and (b.grad * err).sum() < 0  # lower the true error, raise the reversed


def test_reverse_direction_lives_with_the_clip_vocabulary():
    import tiny_clips

    for direction, (dx, dy) in tiny_clips.DIRECTIONS.items():
        assert tiny_clips.DIRECTIONS[tiny_clips.OPPOSITE[direction]] == (-dx, -dy)
    spec = tiny_clips.sample_spec(0, 3)
    flipped = tiny_clips.reverse_direction(spec.caption)
    assert flipped.split()[4] == tiny_clips.OPPOSITE[spec.direction]
    assert flipped.replace(tiny_clips.OPPOSITE[spec.direction], spec.direction) == spec.caption


def test_export_and_import_default_to_the_folder_the_cli_loads():
    """``--out`` / ``--from`` default to the checkout's embedded model folder, the one the package ships.

    The installed copy may live elsewhere (a non-editable install puts it in site-packages), so the
    check is on content: the same relative files with the same bytes.
    """
    from dit_sparse.pipelines.tiny import embedded_model_path

    installed = embedded_model_path()
    assert train_tiny.SHIPPED.parts[-3:] == ("pipelines", "embedded", "tiny-wan")
    assert (train_tiny.SHIPPED / "model_index.json").is_file()
    ours = {f.relative_to(train_tiny.SHIPPED): f for f in train_tiny.SHIPPED.rglob("*") if f.is_file()}
    theirs = {f.relative_to(installed): f for f in installed.rglob("*") if f.is_file()}
    assert set(ours) == set(theirs)
    for rel, f in ours.items():
        assert f.read_bytes() == theirs[rel].read_bytes(), rel
