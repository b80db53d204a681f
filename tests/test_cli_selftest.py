"""``dit-sparse selftest``: counts and exit codes from real runs at tiny sizes, a broken backend
that must be caught, skips with the backend's reason, one-line errors for bad arguments, and
FlexAttention's block tables against the pattern's dense mask."""

import dataclasses
import json
import re

import pytest
import torch

import dit_sparse as ds
from dit_sparse import ops
from dit_sparse.cli import main
from dit_sparse.cli import selftest

TINY = ["selftest", "--threads", "1", "--quiet"]


def _counts(out):
    """(runs, passed, failed, skipped) from the summary's correctness line."""
    m = re.search(r"correctness: (\d+) runs .*: (\d+) passed, (\d+) failed, (\d+) skipped", out)
    assert m, out
    return tuple(int(x) for x in m.groups())


def _fails(capsys, argv, message):
    """Exit code 2 and exactly ``dit-sparse selftest: error: <message>`` (or argparse's line)."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert message in err, err


def test_cases_cover_every_pattern_kind_and_layout():
    specs = [c.pattern for c in selftest.CASES]
    kinds = {ds.parse_pattern(s).kind for s in specs}
    assert kinds == {"full", "neighborhood", "sliding_tile", "block_sparse"}
    patterns = [ds.parse_pattern(s) for s in specs]
    assert any(isinstance(p, ds.Neighborhood) and max(p.dilation) > 1 for p in patterns)
    assert any(type(p) is ds.Neighborhood and max(p.stride) > 1 for p in patterns)
    assert any(isinstance(p, ds.BlockSparse) and p.topk for p in patterns)
    assert any(isinstance(p, ds.BlockSparse) and p.threshold for p in patterns)
    for cls in (ds.Neighborhood, ds.SlidingTile):  # with and without a far field, with sinks
        mine = [p for p in patterns if type(p) is cls]
        assert {p.far is None for p in mine} == {True, False}
        assert any(p.far is not None and p.far.sinks for p in mine)
    assert {(c.text_len > 0, c.text_position) for c in selftest.CASES} >= {(False, "first"), (True, "first"),
                                                                         (True, "last")}
    assert any(c.key_mask and c.text_len for c in selftest.CASES)
    # grids that no power-of-two block divides
    assert any(all(n % 2 for n in c.grid) for c in selftest.CASES)


def test_tiny_run_passes_and_prints_the_speed_table(capsys):
    assert main(TINY + ["--grids", "4x8x8", "--repeat", "1"]) == 0
    out, _ = capsys.readouterr()
    runs, passed, failed, skipped = _counts(out)
    assert runs == 3 * len(selftest.CASES)  # float32, bfloat16 and float16 on CPU
    assert (passed, failed, skipped) == (runs, 0, 0)
    assert f"torch {torch.__version__}" in out and "dit-sparse " in out and "python " in out
    assert "device: cpu (" in out and "backend: auto (ran: cpu)" in out
    for dtype in ("float32", "bfloat16", "float16"):
        m = re.search(rf"worst error {dtype}: (\S+) \(tolerance (\S+)\) in (.+)", out)
        assert m and float(m.group(1)) <= float(m.group(2)), out
    rows = [line.split() for line in out.splitlines() if line.startswith("4x8x8 ")]
    assert [r[1].split(":")[0] for r in rows] == ["sliding-tile", "neighborhood", "block-sparse"]
    for grid, pattern, density, dense_ms, sparse_ms, speedup, flex_ms in rows:
        assert 0 < float(density) <= 1 and float(dense_ms) > 0 and float(sparse_ms) > 0
        assert speedup.endswith("x") and flex_ms == "-"  # flex is opt-in on CPU


def test_json_is_written_with_every_result(tmp_path, capsys):
    path = tmp_path / "selftest.json"
    assert main(TINY + ["--no-speed", "--dtypes", "float32", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert [r["status"] for r in data["results"]] == ["pass"] * len(selftest.CASES)
    assert all(0 <= r["error"] <= r["tolerance"] == 1e-4 for r in data["results"])
    assert data["speed"] is None and data["exit_code"] == 0
    assert data["environment"]["torch"] == torch.__version__
    assert [p.name for p in tmp_path.iterdir()] == ["selftest.json"]  # no temporary left


def _patch_cpu_run(monkeypatch, run):
    entry = ops._BY_NAME["cpu"]
    monkeypatch.setitem(ops._BY_NAME, "cpu", dataclasses.replace(entry, run=run(entry.run)))


def test_a_wrong_kernel_output_fails_with_exit_code_1(monkeypatch, capsys):
    def perturbed(real):
        def run(q, k, v, prepared, key_mask, scale):
            out = real(q, k, v, prepared, key_mask, scale).clone()
            out[:, -1] += 0.01  # one query row off by 1% of the inputs' scale
            return out
        return run

    _patch_cpu_run(monkeypatch, perturbed)
    assert main(TINY + ["--no-speed", "--dtypes", "float32"]) == 1
    out, _ = capsys.readouterr()
    runs, passed, failed, skipped = _counts(out)
    assert (runs, passed, failed, skipped) == (len(selftest.CASES), 0, len(selftest.CASES), 0)
    assert len(re.findall(r"^  FAILED float32 .*: error \S+ > tolerance 0.0001$", out, re.M)) == len(selftest.CASES)


def test_a_kernel_that_raises_is_a_failure_not_a_crash(monkeypatch, capsys):
    def broken(real):
        def run(q, k, v, prepared, key_mask, scale):
            pattern, _ = prepared
            if isinstance(pattern, ds.BlockSparse):
                raise RuntimeError("boom")
            return real(q, k, v, prepared, key_mask, scale)
        return run

    _patch_cpu_run(monkeypatch, broken)
    assert main(TINY + ["--no-speed", "--dtypes", "float32"]) == 1
    out, _ = capsys.readouterr()
    n_block = sum(c.pattern.startswith("block-sparse") for c in selftest.CASES)
    runs, passed, failed, skipped = _counts(out)
    assert (passed, failed, skipped) == (runs - n_block, n_block, 0)
    assert out.count("raised RuntimeError: boom") == n_block


def test_a_backend_that_cannot_run_skips_with_its_reason(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(TINY + ["--no-speed", "--dtypes", "float32", "--backend", "triton"]) == 1
    out, _ = capsys.readouterr()
    assert _counts(out) == (len(selftest.CASES), 0, 0, len(selftest.CASES))
    assert "needs the Triton interpreter" in out and "no case ran: nothing was checked" in out


def test_xformers_on_cpu_skips_every_case_and_every_speed_row(capsys):
    assert main(TINY + ["--dtypes", "float32", "--backend", "xformers", "--grids", "3x8x8"]) == 1
    out, _ = capsys.readouterr()
    assert _counts(out)[1:] == (0, 0, len(selftest.CASES))
    assert "it runs on CUDA tensors only" in out
    assert len(re.findall(r"^  3x8x8 .*: skipped: backend='xformers' cannot run", out, re.M)) == 3


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "--device 'gpu' is not a device selftest runs on; allowed: cpu, cuda, cuda:N"),
    (["--backend", "cuda"], "--backend 'cuda' is unknown; allowed: auto, cpu, triton, xformers"),
    (["--dtypes", "float64"], "--dtypes 'float64' is unknown; allowed: float32, bfloat16, float16"),
    (["--no-speed", "--flex"], "--flex has no effect with --no-speed"),
    (["--grids", "4x8"], "argument --grids: '4x8' is not a grid: give TxHxW, three positive ints"),
    (["--grids", "0x8x8"], "argument --grids: '0x8x8' is not a grid"),
    (["--heads", "0"], "argument --heads: '0' must be an integer >= 1"),
    (["--head-dim", "512"], "argument --head-dim: '512' must be an integer from 1 to 256"),
])
def test_bad_arguments_are_one_line(capsys, argv, message):
    _fails(capsys, TINY + argv, message)


def test_json_into_a_missing_folder_fails_before_any_work(tmp_path, capsys):
    path = str(tmp_path / "nowhere" / "s.json")
    _fails(capsys, TINY + ["--json", path], f"--json={path!r}: its folder")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(capsys):
    _fails(capsys, TINY + ["--device", "cuda"], "--device 'cuda': CUDA is not available")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("pattern", [ds.Neighborhood((3, 5, 7), dilation=(1, 2, 1)),
                                     ds.SlidingTile((2, 4, 8), (1, 3, 1)),
                                     ds.BlockSparse((2, 8, 8), topk=0.3)], ids=lambda p: p.kind)
def test_flex_block_mask_is_the_pattern(pattern):
    from torch.nn.attention.flex_attention import flex_attention

    layout = ds.TokenLayout((3, 10, 19))  # 570 tokens: a ragged last flex block
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, layout.seq_len, 2, 16, generator=g) for _ in range(3))
    perm = selftest.Flex.permutation(layout.grid)
    assert sorted(perm.tolist()) == list(range(layout.seq_len))
    bm = selftest.Flex.block_mask(pattern, layout, q, k, perm, torch.device("cpu"))
    dense = pattern.mask(layout, q, k)  # the pattern's own S x S mask: [S, S] or [1, H, S, S]
    dense = dense.view((1,) * (4 - dense.dim()) + tuple(dense.shape))[0][:, perm][:, :, perm]
    n, b = bm.kv_num_blocks.shape[-1], selftest.FLEX_BLOCK
    padded = torch.nn.functional.pad(dense, (0, n * b - dense.shape[-1], 0, n * b - dense.shape[-1]))
    tiles = padded.view(dense.shape[0], n, b, n, b).sum((2, 4))
    counts = bm.to_dense()[0]  # [H or 1, n, n]: 1 where a tile is computed (partial or full)
    assert torch.equal(counts.bool(), (tiles > 0).expand_as(counts))
    # full tiles (no mask_mod in the compiled kernel) are those where every pair is attended
    sizes = torch.full((n,), b)
    sizes[-1] = layout.seq_len - (n - 1) * b
    full = torch.zeros_like(counts, dtype=torch.bool)
    for h in range(full.shape[0]):
        for i in range(n):
            full[h, i, bm.full_kv_indices[0, h, i, :bm.full_kv_num_blocks[0, h, i]].long()] = True
    assert torch.equal(full, (tiles == sizes[:, None] * sizes[None, :]).expand_as(full))
    assert (counts.bool() & ~full).any()  # partial tiles occur, and full ones where the pattern has them
    assert full.any() == (not isinstance(pattern, ds.Neighborhood) or max(pattern.dilation) == 1)
    # eager flex (no compile) with this block mask is the pattern's attention
    out = flex_attention(*(t[:, perm].transpose(1, 2) for t in (q, k, v)), block_mask=bm)
    ref = ds.reference_attention(q, k, v, pattern, layout)[:, perm].transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
