"""``dit-sparse bench`` at a CI size: the table, the JSON, the side-by-side picture, the
frontier picture, errors, and the default prompts of the embedded model.

Same model as ``test_cli_generate`` (the embedded tiny Wan, or a tiny random stand-in). A
plan made by ``dit_sparse.profile`` on one calibration prompt is compared with a uniform
pattern against dense.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from dit_sparse import video_io
from dit_sparse.cli import main
from test_cli_generate import FRAMES, HEIGHT, PROMPT, STEPS, WIDTH, model_args, size_args, stderr_lines  # noqa: F401

PATTERN = "sliding-tile:tile=1x4x4,window=3x1x1"
COLUMNS = ["config", "density", "time_s", "attn_s", "speedup", "attn_speedup", "psnr_db", "psnr_min", "frame_min",
           "ssim"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plan_path(model_args, tmp_path_factory):
    import dit_sparse as ds
    from dit_sparse.cli.generate import load_pipeline

    pipe, _ = load_pipeline(model_args[1] if model_args else None, "cpu", "float32")
    plan = ds.profile(pipe, ["a blue square moving up on a red background"], budget=0.5, num_inference_steps=STEPS,
                      num_frames=FRAMES, height=HEIGHT, width=WIDTH, progress=False,
                      candidates=["neighborhood:kernel=1x3x3", "neighborhood:kernel=3x3x3", PATTERN])
    return plan.save(tmp_path_factory.mktemp("plan") / "tiny.plan.json")


def parse_table(out: str):
    lines = out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["config"])
    assert lines[start].split() == COLUMNS
    rows = {}
    for line in lines[start + 2:]:
        if line.startswith(("side by side:", "frontier:")):
            break
        *name, density, t, a, speedup, attn_speedup, psnr, psnr_min, frame_min, ssim = line.split()
        rows[" ".join(name)] = dict(density=float(density), time=float(t), attn=float(a),
                                    speedup=float(speedup.rstrip("x")), attn_speedup=float(attn_speedup.rstrip("x")),
                                    psnr=float(psnr), psnr_min=float(psnr_min), frame_min=float(frame_min),
                                    ssim=float(ssim))
    return rows


def clip_db(frame_db):
    """Clip PSNR from its frames' PSNRs, by hand: frames of equal size, so the clip's MSE is the
    mean of the frame MSEs ``10^(-dB/10)`` (data range 1)."""
    mses = [0.0 if db is None else 10 ** (-db / 10) for db in frame_db]  # None: an identical frame
    return 10 * math.log10(len(mses) / sum(mses))


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_bench_table_json_and_side_by_side(tmp_path, capsys, model_args, plan_path, suffix):
    from PIL import Image

    from dit_sparse.cli.bench import FRONTIER_WIDTH, frontier_height

    out, js, frontier = tmp_path / f"side{suffix}", tmp_path / "bench.json", tmp_path / "frontier.png"
    seeds = ["0", "1"] if suffix == ".gif" else ["0"]
    code = main(["bench", *model_args, *size_args(), "--plan", str(plan_path), "--pattern", PATTERN,
                 "--prompts", PROMPT, "--seeds", *seeds, "--out", str(out), "--json", str(js), "--no-warmup",
                 "--frontier", str(frontier)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = parse_table(captured.out)
    assert list(rows) == ["dense", "plan tiny.plan.json", PATTERN]
    dense, plan, pattern = rows.values()
    assert dense["density"] == 1.0 and dense["speedup"] == 1.0 and math.isinf(dense["psnr"]) and dense["ssim"] == 1.0
    assert math.isinf(dense["psnr_min"]) and math.isinf(dense["frame_min"])
    doc = json.loads(js.read_text())
    for row, full in zip((plan, pattern), doc["rows"][1:]):  # times from the JSON: the table rounds to 10 ms
        assert 0 < row["density"] < 1 and full["seconds"] > 0 and full["attention_seconds"] > 0 and row["speedup"] > 0
        assert 5 < row["psnr"] < math.inf and -1 <= row["ssim"] <= 1
    assert [r["config"] for r in doc["rows"]] == list(rows)
    assert doc["rows"][0]["psnr"] is None  # inf is not JSON
    assert doc["rows"][2]["runs"] == len(seeds) and len(doc["rows"][2]["run_seconds"]) == len(seeds)
    assert doc["rows"][0]["run_psnr"] == [None] * len(seeds)  # dense against itself
    assert doc["rows"][0]["run_frame_psnr"] == [[None] * FRAMES] * len(seeds)
    assert doc["rows"][0]["frame_min"] is None
    assert sum(doc["rows"][2]["run_psnr"]) / len(seeds) == pytest.approx(doc["rows"][2]["psnr"], abs=1e-2)
    assert doc["rows"][2]["psnr"] == pytest.approx(pattern["psnr"], abs=0.01)
    for i, row in ((1, plan), (2, pattern)):
        full = doc["rows"][i]
        # every run's PSNR is the clip's (MSE over all its frames), not the mean of its frames' dB
        assert len(full["run_frame_psnr"]) == len(seeds)
        for clip, frames in zip(full["run_psnr"], full["run_frame_psnr"]):
            assert len(frames) == FRAMES
            assert clip == pytest.approx(clip_db(frames), abs=2e-3)
            finite = [db for db in frames if db is not None]
            if len(set(round(db, 1) for db in finite)) > 1:  # frames that differ: the mean of dB is higher
                assert clip < sum(finite) / len(finite)
        # the worst run and the worst frame, not the mean
        assert full["psnr_min"] == pytest.approx(min(full["run_psnr"]), abs=1e-3)
        assert row["psnr_min"] == pytest.approx(full["psnr_min"], abs=0.01)
        assert row["psnr_min"] <= row["psnr"] + 0.01
        worst_frame = min(db for frames in full["run_frame_psnr"] for db in frames if db is not None)
        assert full["frame_min"] == pytest.approx(worst_frame, abs=1e-3)
        assert row["frame_min"] == pytest.approx(full["frame_min"], abs=0.01) and row["frame_min"] <= row["psnr_min"]
    picture = video_io.read_frames(out)
    gap = 2
    if suffix == ".gif":  # rows = seeds, columns = configurations
        assert picture.shape == (FRAMES, 2 * HEIGHT + gap, 3 * WIDTH + 2 * gap, 3)
    else:  # rows = configurations (one run), each a strip of the frames
        assert picture.shape == (1, 3 * HEIGHT + 2 * gap, FRAMES * WIDTH, 3)
    with Image.open(frontier) as img:
        assert img.format == "PNG" and img.size == (FRONTIER_WIDTH, frontier_height(3))
    assert f"frontier: {frontier}" in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, js.name, frontier.name])


BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # rows 1 and 2 of the frontier's palette


def _frontier_probe(img):
    """``(colours, x_of, y_of)`` for a frontier picture of a plan at 1.25x / 30 (22) dB and a
    tile at 1.6x / 25 dB beside dense: x spans 1.0 - pad .. 1.6 + pad with pad 0.06; y spans
    20 .. 32 dB below a 28-pixel band under the top edge. ``colours(x0, x1, y0, y1)``: the set
    of pixel colours in that box."""
    from dit_sparse.cli.bench import _PLOT

    left, top, right, bottom = _PLOT
    pixels = img.load()

    def colours(x0, x1, y0, y1):
        return {pixels[x, y] for x in range(x0, x1) for y in range(y0, y1)}

    def x_of(speed):
        return round(left + (speed - 0.94) / (1.66 - 0.94) * (right - left))

    def y_of(db):
        return round(bottom - (db - 20.0) / 12.0 * (bottom - top - 28))

    return colours, x_of, y_of


def test_frontier_picture_places_points_and_dense_on_the_top_edge():
    from dit_sparse.cli.bench import _PLOT, FRONTIER_WIDTH, Row, frontier_height, frontier_picture

    rows = [Row("dense", 1.0, 10.0, 8.0),
            Row("plan a.json", 0.4, 8.0, 6.0, speedup=1.25, psnr=30.0, psnr_min=22.0, frame_min=18.0),
            Row("full", 1.0, 10.0, 8.0, speedup=1.0, psnr=math.inf, psnr_min=math.inf, frame_min=math.inf),
            Row("tile", 0.3, 6.0, 4.0, speedup=1.6, psnr=25.0, psnr_min=25.0, frame_min=20.0)]
    img = frontier_picture(rows, "title")
    assert img.size == (FRONTIER_WIDTH, frontier_height(4)) and img.mode == "RGB"
    colours, x_of, y_of = _frontier_probe(img)
    top = _PLOT[1]
    white = (255, 255, 255)
    assert BLUE in colours(x_of(1.25) - 2, x_of(1.25) + 3, y_of(30.0) - 2, y_of(30.0) + 3)  # the mean
    assert BLUE in colours(x_of(1.25) - 1, x_of(1.25) + 2, y_of(26.0) - 1, y_of(26.0) + 2)  # the whisker
    assert BLUE in colours(x_of(1.25) - 5, x_of(1.25) - 3, y_of(22.0) - 1, y_of(22.0) + 2)  # its end tick
    assert ORANGE in colours(x_of(1.0) - 2, x_of(1.0) + 3, top - 2, top + 3)  # equal to dense: the top edge
    assert (0, 0, 0) in colours(x_of(1.0) - 7, x_of(1.0) - 5, top - 2, top + 3)  # dense: a square on that edge
    assert colours(x_of(1.45) - 3, x_of(1.45) + 4, y_of(24.0) - 3, y_of(24.0) + 4) <= {white, (200, 200, 200)}


def test_frontier_draws_equal_up_to_rounding_on_the_top_edge():
    """A configuration at FRONTIER_SAME_DB or more (merged text alone: ~144 dB) sits on the top
    edge with dense and leaves the axis to the sparse ones, which stay where they would be
    without it."""
    from dit_sparse.cli.bench import _PLOT, FRONTIER_SAME_DB, Row, frontier_picture

    rows = [Row("dense", 1.0, 10.0, 8.0),
            Row("plan a.json", 0.4, 8.0, 6.0, speedup=1.25, psnr=30.0, psnr_min=22.0, frame_min=18.0),
            Row("dense + merged text", 1.0, 9.6, 8.0, speedup=1.04, psnr=FRONTIER_SAME_DB + 64.5,
                psnr_min=FRONTIER_SAME_DB + 60.0, frame_min=130.0),
            Row("tile", 0.3, 6.0, 4.0, speedup=1.6, psnr=25.0, psnr_min=25.0, frame_min=20.0)]
    colours, x_of, y_of = _frontier_probe(frontier_picture(rows, "title"))
    top, bottom = _PLOT[1], _PLOT[3]
    assert BLUE in colours(x_of(1.25) - 2, x_of(1.25) + 3, y_of(30.0) - 2, y_of(30.0) + 3)  # as without row 3
    assert ORANGE in colours(x_of(1.04) - 2, x_of(1.04) + 3, top - 2, top + 3)  # on the top edge
    assert ORANGE not in colours(x_of(1.04) - 1, x_of(1.04) + 2, top + 8, bottom)  # and no whisker


def test_embedded_prompts_are_held_out():
    """The default bench prompts: at least 8, a red circle among them, none a caption of the
    shipped model's training clips (scripts/tiny_wan/README.md's record) nor a profiling prompt of
    the shipped plans."""
    from dit_sparse.cli.bench import EMBEDDED_PROMPTS

    sys.path.insert(0, str(ROOT / "scripts" / "tiny_wan"))
    import tiny_clips

    training = {tiny_clips.sample_spec(0, i).caption for i in range(1200)}
    training |= {tiny_clips.sample_spec(0, 10_000_000 + i).caption for i in range(160)}
    profiling = [line for line in (ROOT / "docs" / "plans" / "calib.txt").read_text().splitlines() if line.strip()]
    assert len(profiling) == 2 and set(profiling) <= training
    assert len(EMBEDDED_PROMPTS) >= 8 and len(set(EMBEDDED_PROMPTS)) == len(EMBEDDED_PROMPTS)
    assert not set(EMBEDDED_PROMPTS) & training and not set(EMBEDDED_PROMPTS) & set(profiling)
    assert any(p.startswith("a red circle ") for p in EMBEDDED_PROMPTS)
    for prompt in EMBEDDED_PROMPTS:  # captions the model's vocabulary can say
        assert set(prompt.split()) <= set(tiny_clips.vocabulary()), prompt


def test_bench_repeat_keeps_the_fastest_call(tmp_path, capsys, model_args, monkeypatch):
    from dit_sparse.cli import bench

    real, calls = bench._run_config, []

    def slow_first(pipe, config, prompt, seed, kwargs):
        frames, seconds, attention, density = real(pipe, config, prompt, seed, kwargs)
        calls.append(config.label)
        extra = 100.0 if len(calls) <= 2 else 0.0  # the first round is slowed down by 100 s
        return frames, seconds + extra, attention + extra, density

    monkeypatch.setattr(bench, "_run_config", slow_first)
    out = tmp_path / "r.json"
    code = main(["bench", *model_args, *size_args(frames=3, height=16, width=16), "--pattern", PATTERN,
                 "--prompts", PROMPT, "--repeat", "2", "--no-warmup", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    assert calls == ["dense", PATTERN, "dense", PATTERN]  # round-robin
    doc = json.loads(out.read_text())
    assert doc["repeat"] == 2
    for row in doc["rows"]:
        assert row["runs"] == 1 and row["seconds"] < 100 and row["attention_seconds"] < 100
    assert "fastest of 2 calls" in capsys.readouterr().out


@pytest.mark.parametrize("native", [False, True])
def test_bench_says_which_conv3d_kernel_ran(tmp_path, capsys, model_args, native):
    out = tmp_path / "c.json"
    code = main(["bench", *model_args, *size_args(frames=3, height=16, width=16, steps=1), "--pattern", PATTERN,
                 "--prompts", PROMPT, "--no-warmup", "--json", str(out)] + (["--native-conv3d"] if native else []))
    assert code == 0, capsys.readouterr().err
    want = "native" if native else "oneDNN"
    assert json.loads(out.read_text())["conv3d"] == want
    assert f"threads, conv3d {want}" in capsys.readouterr().out


def test_bench_warmup_runs_default(tmp_path, capsys, model_args):
    code = main(["bench", *model_args, *size_args(frames=3, height=16, width=16), "--pattern", PATTERN,
                 "--prompts", PROMPT])
    assert code == 0, capsys.readouterr().err
    assert list(parse_table(capsys.readouterr().out)) == ["dense", PATTERN]


@pytest.mark.parametrize("case, expected", [
    ("no config", "give at least one --plan or --pattern"),
    ("empty prompt", "--prompts[1] is empty"),
    ("bad pattern", "unknown pattern spec"),
    ("plan for another model", "plan does not fit this model"),
    ("size", "--width 24 is not a multiple of 16"),
    ("out folder missing", "does not exist"),
    ("repeat", "--repeat 0: must be an integer from 1 to 1000"),
    ("frontier suffix", "--frontier 'FOLDER/front.jpg' must end in .png"),
    ("frontier folder missing", "--frontier: folder 'FOLDER/sub' does not exist"),
    ("frontier is a folder", "is a folder; give a file name ending in .png"),
    ("frontier is the out file", "is also the --out file"),
    ("same pattern twice", "given twice"),
])
def test_bench_errors(tmp_path, capsys, model_args, plan_path, case, expected):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["bench", *model_args, *size_args(), "--out", str(out_dir / "side.gif"), "--prompts", PROMPT]
    if case == "empty prompt":
        argv += ["--pattern", PATTERN, "--prompts", PROMPT, ""]
    elif case == "bad pattern":
        argv += ["--pattern", "tiles:4"]
    elif case == "plan for another model":
        doc = json.loads(plan_path.read_text())
        doc["model"]["class"] = "FluxTransformer2DModel"
        other = tmp_path / "other.plan.json"
        other.write_text(json.dumps(doc))
        argv += ["--plan", str(other)]
    elif case == "size":
        argv += ["--pattern", PATTERN, "--width", "24"]
    elif case == "repeat":
        argv += ["--pattern", PATTERN, "--repeat", "0"]
    elif case == "out folder missing":
        argv += ["--pattern", PATTERN, "--out", str(out_dir / "sub" / "side.gif")]
    elif case == "frontier suffix":
        argv += ["--pattern", PATTERN, "--frontier", str(out_dir / "front.jpg")]
    elif case == "frontier folder missing":
        argv += ["--pattern", PATTERN, "--frontier", str(out_dir / "sub" / "front.png")]
    elif case == "frontier is a folder":
        (tmp_path / "x.png").mkdir()
        argv += ["--pattern", PATTERN, "--frontier", str(tmp_path / "x.png")]
    elif case == "frontier is the out file":
        argv += ["--pattern", PATTERN, "--out", str(out_dir / "side.png"), "--frontier", str(out_dir / "side.png")]
    elif case == "same pattern twice":  # the far field is part of the label: these differ
        argv += ["--pattern", "block-sparse:block=1x4x4,topk=0.5", "--pattern", "block-sparse:block=1x4x4,topk=0.5",
                 "--pattern", "block-sparse:block=1x4x4,topk=0.5,far=1x4x4"]
    expected = expected.replace("FOLDER", str(out_dir))
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = stderr_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("dit-sparse bench: error: ") and expected in lines[0], captured.err
    assert list(out_dir.iterdir()) == []


def test_bench_checks_the_frontier_path_before_loading(tmp_path, capsys, model_args, monkeypatch):
    from dit_sparse.cli import bench

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --frontier was checked")

    monkeypatch.setattr(bench.gen, "load_pipeline", no_loading)
    for frontier in (tmp_path / "f.svg", tmp_path / "missing" / "f.png"):
        code = main(["bench", *model_args, *size_args(), "--pattern", PATTERN, "--frontier", str(frontier)])
        err = capsys.readouterr().err
        assert code == 2 and "--frontier" in err and len(stderr_lines(err)) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_bench_warmup_is_quiet_about_a_phased_plan_run_for_one_step(tmp_path, capsys, model_args):
    """The untimed 1-step warm-up runs a phased plan on a schedule it was not profiled for;
    that must not warn (the timed runs use the plan's own length, so nothing warns at all)."""
    import warnings

    import dit_sparse as ds
    from dit_sparse.cli.generate import load_pipeline

    pipe, _ = load_pipeline(model_args[1] if model_args else None, "cpu", "float32")
    plan = ds.profile(pipe, ["a blue square moving up on a red background"], budget=0.6, num_inference_steps=3,
                      num_frames=FRAMES, height=HEIGHT, width=WIDTH, progress=False, phases=[(2, 0.4)],
                      candidates=["neighborhood:kernel=1x3x3", "neighborhood:kernel=3x3x3", PATTERN])
    assert plan.phase_starts
    path = plan.save(tmp_path / "phased.plan.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["bench", *model_args, *size_args(steps=3), "--plan", str(path), "--prompts", PROMPT])
    assert code == 0, capsys.readouterr().err
    assert not [w for w in caught if issubclass(w.category, ds.PlanStepsWarning)]
    assert list(parse_table(capsys.readouterr().out)) == ["dense", "plan phased.plan.json"]
