"""The ``dit-sparse`` command line: profile and inspect in-process (exit codes, one-line
errors on stderr), one full profile run on a tiny saved pipeline, and ``python -m dit_sparse``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import dit_sparse as ds
from dit_sparse.cli import SUBCOMMANDS, main

from test_plan import plan_dict


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def plan_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan_dict()))
    return path


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# calibration\na red circle moving left\n\na green square moving right\n")
    return path


def _one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_inspect_prints_the_summary_and_draws_a_heatmap(capsys, plan_file, tmp_path):
    png = tmp_path / "plan.png"
    code, out, err = _run(capsys, "inspect", str(plan_file), "--png", str(png))
    assert code == 0, err
    assert "blocks.1.attn1" in out and "block-sparse:block=1x4x4,topk=0.25" in out
    from PIL import Image

    img = Image.open(png).convert("RGB")
    assert img.size[0] > 3 * 18 and img.size[1] > 3 * 18
    # the dense head (layer 1, head 0) and the sparse head (layer 1, head 1) differ in colour
    colours = {c for _, c in img.getcolors(1 << 16)}
    from dit_sparse.cli.inspect import colour

    assert colour(1.0) in colours and colour(0.2) in colours and colour(0.2) != colour(1.0)


def test_inspect_draws_one_block_of_rows_per_phase(capsys, tmp_path):
    doc = plan_dict(version=2)
    dense = [{"name": layer["name"], "pattern": {"kind": "full"}, "error": 0.0, "density": 1.0}
             for layer in doc["layers"]]
    doc["phases"] = [{"start_step": 2, "layers": dense}]
    path, png = tmp_path / "phased.json", tmp_path / "phased.png"
    path.write_text(json.dumps(doc))
    code, out, err = _run(capsys, "inspect", str(path), "--png", str(png))
    assert code == 0, err
    assert "phases from steps 2" in out
    single_png = tmp_path / "single.png"
    _run(capsys, "inspect", str(_write(tmp_path / "single.json", plan_dict())), "--png", str(single_png))
    from PIL import Image

    from dit_sparse.cli.inspect import colour

    def full_pixels(path):
        return dict((c, n) for n, c in Image.open(path).convert("RGB").getcolors(1 << 16))[colour(1.0)]

    # the later phase adds 3 layers x 2 heads of dense cells (17 x 17 pixels each)
    assert full_pixels(png) - full_pixels(single_png) == 6 * 17 * 17


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("content, fragment", [
    ('{"format": "dit-sparse-plan",', "malformed JSON"),
    (json.dumps(plan_dict(version=7)), "version"),
    (json.dumps(plan_dict(format="x")), "not a dit-sparse plan"),
    (json.dumps(plan_dict(**{"layers/0/pattern": {"kind": "spiral"}})), "unknown pattern kind='spiral'"),
])
def test_inspect_bad_plans(capsys, tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, _, err = _run(capsys, "inspect", str(path))
    _one_line_error(code, err, "dit-sparse inspect: error:", fragment)


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="malformed JSON"):
        main(["--debug", "inspect", str(path)])
    with pytest.raises(ValueError, match="malformed JSON"):
        main(["inspect", str(path), "--debug"])


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "-0.5"], "must be >= 0"),
    (["--budget", "1.5"], "must be a mean density in (0, 1]"),
    (["--budget", "0.3", "--max-error", "0.1"], "not allowed with argument"),
    ([], "one of the arguments --max-error --budget is required"),
    (["--budget", "0.3", "--candidate", "spiral:size=2"], "--candidate 'spiral:size=2': unknown pattern spec"),
    (["--budget", "abc"], "invalid float value"),
    (["--budget", "0.3", "--cost", "flops"], "argument --cost: invalid choice: 'flops'"),
    (["--budget", "0.3", "--phase", "10"], "--phase '10' must be STEP=VALUE"),
    (["--budget", "0.3", "--phase", "x=0.5"], "--phase 'x=0.5' must be STEP=VALUE"),
    (["--budget", "0.3", "--phase", "10=1.5"], "must be a mean density in (0, 1]"),
    (["--max-error", "0.1", "--phase", "10=0.2", "--phase", "5=0.3"], "must be larger than the previous one (10)"),
])
def test_profile_bad_arguments(capsys, tmp_path, prompts_file, args, fragment):
    out = tmp_path / "plan.json"
    code, _, err = _run(capsys, "profile", "--model", str(tmp_path / "nowhere"), "--prompts", str(prompts_file),
                        "--out", str(out), *args)
    _one_line_error(code, err, fragment)
    assert not out.exists()


def test_profile_empty_prompts_and_missing_model(capsys, tmp_path, prompts_file, plan_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    code, _, err = _run(capsys, "profile", "--prompts", str(empty), "--out", str(plan_file), "--budget", "0.3")
    _one_line_error(code, err, "has no prompts")
    before = plan_file.read_bytes()
    code, _, err = _run(capsys, "profile", "--model", str(tmp_path / "nowhere"), "--prompts", str(prompts_file),
                        "--out", str(plan_file), "--budget", "0.3")
    _one_line_error(code, err, "does not exist")
    assert plan_file.read_bytes() == before  # an existing plan is never touched by a failed run


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    from pipelines_fixtures import tiny_wan_pipeline

    path = tmp_path_factory.mktemp("tiny-wan")
    tiny_wan_pipeline(heads=2).save_pretrained(path)
    return path


def test_profile_end_to_end_from_a_saved_pipeline(capsys, tmp_path, prompts_file, saved_pipeline, plan_file):
    code, out, err = _run(capsys, "profile", "--model", str(saved_pipeline), "--prompts", str(prompts_file),
                          "--out", str(plan_file), "--budget", "0.6", "--steps", "2", "--height", "32", "--width", "32",
                          "--frames", "5", "--seed", "0", "--quiet", "--guidance-scale", "1.0",
                          "--candidate", "neighborhood:kernel=1x3x3", "--candidate", "sliding-tile:tile=1x4x4,window=1x1x3")
    assert code == 0, err
    plan = ds.Plan.load(plan_file)
    assert plan.model.name_or_path == str(saved_pipeline)
    assert plan.profile["num_prompts"] == 2 and plan.profile["num_inference_steps"] == 2
    assert plan.profile["height"] == 32 and plan.grid == (3, 8, 8)
    assert plan.mean_density <= 0.6 + 1e-6
    assert "blocks.0.attn1" in out and f"wrote {plan_file}" in out
    code, out, _ = _run(capsys, "inspect", str(plan_file))
    assert code == 0 and "WanTransformer3DModel" in out


def test_profile_with_a_later_phase(capsys, tmp_path, prompts_file, saved_pipeline, plan_file):
    code, out, err = _run(capsys, "profile", "--model", str(saved_pipeline), "--prompts", str(prompts_file),
                          "--out", str(plan_file), "--max-error", "0.0", "--phase", "2=10", "--steps", "3",
                          "--height", "32", "--width", "32", "--frames", "5", "--quiet", "--guidance-scale", "1.0",
                          "--dense-bound", "100", "--candidate", "neighborhood:kernel=1x3x3")
    assert code == 0, err
    plan = ds.Plan.load(plan_file)
    assert plan.phase_starts == (2,) and plan.profile["phase_values"] == [10.0]
    # error bound 0 keeps steps 0-1 dense; any error is within 10 from step 2 on: the cheapest
    assert {p for layer in plan.layers.values() for p in layer.patterns} == {ds.Full()}
    later = plan.phases[0][1]
    assert {p for layer in later.values() for p in layer.patterns} == {ds.Neighborhood(kernel=(1, 3, 3))}
    assert "phases from steps 2 (max_error=10.0)" in out and "2-2" in out


def test_default_model_is_the_embedded_one(capsys, tmp_path, prompts_file):
    try:
        from dit_sparse.pipelines.tiny import embedded_model_path

        embedded_model_path()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"embedded model not available yet: {exc}")
    out = tmp_path / "plan.json"
    code, stdout, err = _run(capsys, "profile", "--prompts", str(prompts_file), "--out", str(out), "--budget", "0.5",
                             "--steps", "1", "--quiet", "--candidate", "neighborhood:kernel=1x5x5",
                             "--candidate", "neighborhood:kernel=3x9x9", "--per-layer")
    assert code == 0, err
    plan = ds.Plan.load(out)
    assert plan.model.name_or_path == "embedded:tiny-wan"
    # --per-layer: all heads of a layer share one pattern
    assert all(layer.uniform for layer in plan.layers.values())


def test_subcommand_registry_and_python_dash_m():
    assert SUBCOMMANDS[0] == "profile" and "inspect" in SUBCOMMANDS
    proc = subprocess.run([sys.executable, "-m", "dit_sparse", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert name in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "dit_sparse", "profile"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
