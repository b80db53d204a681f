"""scripts/error_sensitivity.py: the scaled-error attention, the line fit and a run at a CI size."""

import math
import sys
from pathlib import Path

import pytest
import torch

import dit_sparse as ds
from pipelines_fixtures import build

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import error_sensitivity as es  # noqa: E402

PATTERN = "neighborhood:kernel=3x3x3"


def test_fit_line_recovers_a_known_line():
    points = [(e, 12.0 - 20.0 * math.log10(e)) for e in (0.5, 0.2, 0.05, 0.01)]
    a, b = es.fit_line(points)
    assert a == pytest.approx(12.0) and b == pytest.approx(20.0)
    with pytest.raises(ValueError, match="two or more"):
        es.fit_line([(0.1, 20.0), (0.1, 21.0)])


def test_scaled_error_interpolates_between_dense_and_sparse():
    model, inputs, _ = build("wan")
    with torch.no_grad():
        dense = model(**inputs, return_dict=False)[0]
        with ds.applied(model, PATTERN):
            sparse = model(**inputs, return_dict=False)[0]
        outputs = {}
        for alpha in (0.0, 0.5, 1.0):
            fn = es.ScaledError(alpha)
            with ds.applied(model, PATTERN), ds.observe(model, fn):
                outputs[alpha] = model(**inputs, return_dict=False)[0]
            assert sorted(fn.errors()) == ["blocks.0.attn1", "blocks.1.attn1"]
            if alpha == 0.0:
                assert all(e == 0.0 for e in fn.errors().values())
            else:
                assert all(e > 0.0 for e in fn.errors().values())
    assert not torch.allclose(dense, sparse, atol=1e-4)
    torch.testing.assert_close(outputs[0.0], dense, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outputs[1.0], sparse, atol=1e-5, rtol=1e-4)
    middle = (outputs[0.5] - dense).norm() / (sparse - dense).norm()
    assert 0.2 < float(middle) < 0.8


def _rows(out: str):
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["alpha"])
    header = lines[start].split()
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = line.split()
        rows[float(cells[0])] = dict(zip(header[1:], map(float, cells[1:])))
    return rows


def test_main_at_ci_size(capsys):
    code = es.main(["--pattern", PATTERN, "--alphas", "1", "0.1", "0", "--frames", "5", "--height", "32",
                    "--width", "32", "--steps", "3", "--dense-steps", "1", "--prompts", es.PROMPTS[0]])
    assert code == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert set(rows) == {1.0, 0.1, 0.0}
    layers = [c for c in rows[1.0] if c.startswith("err:")]
    assert layers
    for c in layers:
        assert rows[0.0][c] == 0.0 and rows[1.0][c] > rows[0.1][c] > 0.0
    assert 0.03 < rows[0.1]["mean_err"] / rows[1.0]["mean_err"] < 0.3
    assert rows[0.0]["psnr_db"] > 40.0 and rows[0.0]["psnr_db"] > rows[1.0]["psnr_db"]
    assert rows[0.1]["psnr_db"] > rows[1.0]["psnr_db"]
    assert "fit: PSNR =" in out
