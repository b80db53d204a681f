"""What the commands do before (and instead of) loading a model: every argument checked in
one line before the load, ``--threads``, the one-line note when sparsity cannot pay, the
loading line, one flag vocabulary across commands, a ``--help`` that does not import torch,
and ``--frames 1`` on the embedded model.

The "before the load" tests replace the loader with one that fails the test: an argument
error found only after loading (as the CLI did before) fails them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dit_sparse.cli import build_parser, main
from dit_sparse.cli import generate as gen
from dit_sparse.cli import preflight

PROMPT = "a red circle moving left on a blue background"
SMALL = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "-q"]


@pytest.fixture
def no_load(monkeypatch):
    """Loading a model fails the test: these errors must come before it."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(gen, "load_pipeline", load)


def one_error(capsys, argv, command):
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith(f"dit-sparse {command}: error: "), captured.err
    return lines[0]


BEFORE_LOAD = {
    "height beyond positions": (["generate", PROMPT, "-o", "{tmp}/a.png", "--height", "100000", "--width", "64"],
                                ["--height 100000", "at most 1024 for this model", "rotary position table"]),
    "frames beyond positions": (["generate", PROMPT, "-o", "{tmp}/a.png", "--frames", "1001"],
                                ["--frames 1001", "at most 511"]),
    "fps zero": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--fps", "0"], ["--fps 0", "> 0"]),
    "dense steps": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--steps", "20", "--dense-steps", "100",
                     "--pattern", "full"], ["--dense-steps 100 with --steps 20", "0 to 19"]),
    "dense steps, model default": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--dense-steps", "20",
                                    "--pattern", "full"], ["--dense-steps 20 with --steps 20"]),
    "seed overflow": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--seed", str(2 ** 70)],
                      [f"--seed {2 ** 70}", "0 to 9223372036854775807"]),
    "steps zero": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--steps", "0"], ["--steps 0", "1 to 1000"]),
    "steps huge": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--steps", "5000"], ["--steps 5000", "1 to 1000"]),
    "guidance nan": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--guidance", "nan"], ["--guidance nan", "finite"]),
    "width multiple": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--width", "24"],
                       ["--width 24 is not a multiple of 16", "nearest valid: 16 or 32"]),
    "frames": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--frames", "4"], ["--frames 4", "nearest valid: 3 or 5"]),
    "device": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--device", "gpu"], ["--device 'gpu'", "cpu, cuda"]),
    "threads zero": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--threads", "0"], ["--threads 0", "from 1 to"]),
    "threads too many": (["generate", PROMPT, "-o", "{tmp}/a.gif", "--threads", "4096"],
                         ["--threads 4096", "this machine has"]),
    "bench repeat": (["bench", "--pattern", "full", "--repeat", "0"], ["--repeat 0", "1 to 1000"]),
    "bench seeds": (["bench", "--pattern", "full", "--seeds", "0", "-1"], ["--seeds -1", "0 to"]),
    "bench prompts file": (["bench", "--pattern", "full", "--prompts", "{tmp}/none.txt"],
                           ["prompts file", "none.txt", "does not exist"]),
    "profile size": (["profile", "--prompts", PROMPT, "-o", "{tmp}/p.json", "--budget", "0.5", "--height", "100000",
                      "--width", "100000"], ["--height 100000", "at most 1024"]),
    "profile output": (["profile", "--prompts", PROMPT, "-o", "{tmp}/p.txt", "--budget", "0.5"],
                       ["-o/--output", "p.txt", "must end in .json"]),
    "profile steps": (["profile", "--prompts", PROMPT, "-o", "{tmp}/p.json", "--budget", "0.5", "--steps", "-3"],
                      ["--steps -3"]),
}


@pytest.mark.parametrize("case", list(BEFORE_LOAD))
def test_arguments_are_checked_before_the_model_loads(case, tmp_path, capsys, no_load):
    argv, fragments = BEFORE_LOAD[case]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    line = one_error(capsys, argv, argv[0])
    for fragment in fragments:
        assert fragment in line, line
    assert [p for p in tmp_path.iterdir()] == []


def test_memory_bound_names_the_limit():
    with pytest.raises(Exception, match=r"more than the 1\.0 GiB of memory available here"):
        preflight.check_memory(9, 4096, 4096, 16, available=2 ** 30)
    preflight.check_memory(9, 128, 128, 16, available=2 ** 30)  # fits: no error


# --------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------


def test_threads_default_leaves_busy_cpus_alone(monkeypatch):
    import torch

    from dit_sparse import env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(env, "cpu_count", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(env, "busy_cpus", lambda interval=0.25: 2.9)
    threads, note = preflight.choose_threads(None)
    assert threads == 1 and "2.9 of 4 CPUs are busy" in note and "--threads N" in note
    monkeypatch.setattr(env, "busy_cpus", lambda interval=0.25: 0.2)
    assert preflight.choose_threads(None) == (4, None)
    assert preflight.choose_threads(3) == (3, None)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's own choice stands
    monkeypatch.setattr(env, "busy_cpus", lambda interval=0.25: 3.5)
    assert preflight.choose_threads(None) == (4, None)


def test_busy_cpus_sees_a_busy_process():
    from dit_sparse import env

    if env.busy_cpus(0.05) is None:
        pytest.skip("no /proc/stat or load average on this system")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        busy = env.busy_cpus(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy >= 0.6, busy


def test_threads_option_sets_torch_threads(monkeypatch, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        plan = Path(__file__).resolve().parents[1] / "docs" / "plans" / "plan128_e10p.json"
        assert main(["inspect", str(plan), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()


# --------------------------------------------------------------------------------------
# Whether sparsity pays
# --------------------------------------------------------------------------------------


def _fake_pipe(heads=2, head_dim=32):
    return SimpleNamespace(transformer=SimpleNamespace(config={"num_attention_heads": heads,
                                                               "attention_head_dim": head_dim,
                                                               "patch_size": [1, 2, 2]}))


def test_pay_note_at_a_tiny_grid_and_not_at_a_large_one(monkeypatch):
    """The decision, given the kernel's measured time relative to dense (stubbed: a timing
    would make the test depend on the machine's load)."""
    import torch

    import dit_sparse as ds
    from dit_sparse.pipelines import profiling

    measured = {"ratio": 0.3}
    asked = []

    def fake_times(patterns, layout, heads, head_dim, device="cpu"):
        asked.append((layout.grid, heads, head_dim))
        return torch.full((len(patterns),), measured["ratio"], dtype=torch.float64)

    monkeypatch.setattr(profiling, "time_candidates", fake_times)
    tile = ds.SlidingTile(tile=(1, 4, 4), window=(1, 3, 3))
    note = preflight.pay_note(_fake_pipe(), tile, 0.0, (5, 16, 16), "cpu", embedded=True)
    assert note and "cannot pay" in note and "1,280 tokens (grid 5x16x16)" in note
    assert "--height 128 --width 128" in note
    assert asked == []  # below the device's token count: said without measuring
    assert preflight.pay_note(_fake_pipe(), tile, 0.0, (4, 32, 64), "cpu", embedded=True) is None
    assert asked == [((4, 32, 64), 2, 32)]
    dense = preflight.pay_note(_fake_pipe(), ds.Full(), 0.0, (4, 32, 64), "cpu", embedded=False)
    assert dense and "dense" in dense
    # every step dense: nothing to gain whatever the kernel does
    assert "every step runs dense" in preflight.pay_note(_fake_pipe(), tile, 1.0, (4, 32, 64), "cpu", embedded=False)
    # a kernel no faster than dense: said, with the measured ratio
    measured["ratio"] = 1.02
    note = preflight.pay_note(_fake_pipe(), tile, 0.0, (4, 32, 64), "cpu", embedded=False)
    assert note and "takes 1.02x the time of dense (measured on one layer here)" in note
    # half the steps dense at a ratio of 0.9: 0.5 + 0.5 * 0.9 = 0.95, not faster enough
    measured["ratio"] = 0.9
    assert "0.95x" in preflight.pay_note(_fake_pipe(), tile, 0.5, (4, 32, 64), "cpu", embedded=False)


def test_token_grid_of_the_embedded_pipeline():
    """64 x 64 pixels, 9 frames: VAE factors 2 (space) and 2 (time), patch 1 x 2 x 2."""
    from dit_sparse.pipelines.tiny import load_embedded_pipeline

    pipe = load_embedded_pipeline()
    assert preflight.token_grid(9, 64, 64, gen.size_rules(pipe)) == (5, 16, 16)
    assert preflight.token_grid(9, 128, 96, gen.size_rules(pipe)) == (5, 32, 24)


def test_generate_says_when_sparsity_cannot_pay(tmp_path, capsys):
    out = tmp_path / "a.png"
    code = main(["generate", PROMPT, "-o", str(out), *SMALL, "--pattern", "sliding-tile:tile=1x4x4,window=1x3x3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    notes = [line for line in captured.err.splitlines() if "cannot pay" in line]
    assert len(notes) == 1 and notes[0].startswith("dit-sparse generate: note: sparsity cannot pay at this size")


# --------------------------------------------------------------------------------------
# Loading line, vocabulary, help
# --------------------------------------------------------------------------------------


def test_loading_line_before_the_load(tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["generate", PROMPT, "-o", str(out), *[a for a in SMALL if a != "-q"]]) == 0
    err = capsys.readouterr().err
    assert "dit-sparse: loading the embedded tiny-wan model on cpu (float32) ..." in err


@pytest.mark.parametrize("argv, dest, value", [
    (["profile", "--prompts", "p.txt", "--out", "x.json", "--budget", "0.5"], "out", "x.json"),
    (["profile", "--prompts", "p.txt", "-o", "x.json", "--budget", "0.5"], "out", "x.json"),
    (["profile", "--prompts", "p.txt", "-o", "x.json", "--budget", "0.5", "--guidance-scale", "3"], "guidance", 3.0),
    (["profile", "--prompts", "p.txt", "-o", "x.json", "--budget", "0.5", "--guidance", "3"], "guidance", 3.0),
    (["profile", "--prompts", "p.txt", "-o", "x.json", "--budget", "0.5", "--seed", "1", "--seed", "2"], "seeds",
     [1, 2]),
    (["profile", "--prompts", "p.txt", "-o", "x.json", "--budget", "0.5", "--seeds", "1", "2"], "seeds", [1, 2]),
    (["profile", "--prompts", "a cat", "a dog", "-o", "x.json", "--budget", "0.5"], "prompts", ["a cat", "a dog"]),
    (["bench", "--pattern", "full", "--out", "s.gif"], "out", "s.gif"),
    (["bench", "--pattern", "full", "-o", "s.gif"], "out", "s.gif"),
    (["bench", "--pattern", "full", "--guidance-scale", "2"], "guidance", 2.0),
    (["bench", "--pattern", "full", "--seed", "3"], "seeds", [3]),
    (["generate", "x", "--out", "a.png"], "output", "a.png"),
    (["generate", "x", "-o", "a.png", "--guidance-scale", "5"], "guidance", 5.0),
    (["inspect", "p.json", "--threads", "1"], "threads", 1),
])
def test_one_vocabulary_with_the_old_spellings(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


def test_profile_and_bench_read_prompts_files(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# calibration\na red circle moving left on a blue background\n\na cat\n")
    args = build_parser().parse_args(["bench", "--pattern", "full", "--prompts", str(path), "a dog"])
    assert gen.prompts_from_args(args) == ["a red circle moving left on a blue background", "a cat", "a dog"]


@pytest.mark.parametrize("command", ["generate", "bench", "profile", "inspect"])
def test_help_is_plain_and_does_not_import_torch(command):
    code = ("import sys\nfrom dit_sparse.cli import main\ntry:\n    main([%r, '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')" % command)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "``" not in proc.stdout
    assert "--threads N" in proc.stdout
    if command in ("generate", "bench", "profile"):
        assert "sliding-tile:tile=4x8x8,window=3x3x3" in proc.stdout  # the spec syntax
    else:
        assert proc.stdout.strip().endswith("NO-TORCH"), proc.stdout


def test_top_level_help_does_not_import_torch():
    code = ("import sys\nfrom dit_sparse.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().endswith("NO-TORCH"), proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------
# --frames 1 on the embedded model
# --------------------------------------------------------------------------------------


def test_frames_1_on_the_embedded_model_keeps_the_middle_frame(tmp_path, capsys, monkeypatch):
    from dit_sparse import video_io
    from dit_sparse.pipelines.tiny import IMAGE_CLIP_FRAMES

    asked = {}

    def fake_run(pipe, prompt, seed, kwargs):
        asked.update(kwargs)
        n = kwargs["num_frames"]
        return np.stack([np.full((kwargs["height"], kwargs["width"], 3), i / 10, np.float32) for i in range(n)])

    monkeypatch.setattr(gen, "run_pipeline", fake_run)
    out = tmp_path / "image.png"
    assert main(["generate", PROMPT, "-o", str(out), "--frames", "1", "--height", "32", "--width", "32",
                 "--steps", "1"]) == 0
    err = capsys.readouterr().err
    assert asked["num_frames"] == IMAGE_CLIP_FRAMES
    frames = video_io.read_frames(out)
    assert frames.shape == (1, 32, 32, 3)
    assert abs(int(frames[0, 0, 0, 0]) - round(IMAGE_CLIP_FRAMES // 2 / 10 * 255)) <= 1
    assert "keeps the middle one" in err
