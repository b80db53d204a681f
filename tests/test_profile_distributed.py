"""Profiling over two CPU processes (gloo): the runs dealt over ranks, and Ulysses context parallelism.

The references are single-process profiles of the same prompts and seeds, run in this process
with one thread as the ranks are (a matmul may round differently with another thread count).
Over runs dealt to ranks, the error table must be equal to the bit and the plan documents equal
field by field (under ``cost="time"`` the measured ``profile.candidates[*].time`` is the one
field that differs from run to run: equal across ranks, dropped against the reference). Under
Ulysses the q, k, v of a rank's heads come from projections of sequence shards, so the errors
are compared within a tolerance, and the chosen patterns must be equal.

Each spawned process is a fresh interpreter (``spawn``); the gloo group is torn down after a
barrier and the interpreter left with ``os._exit`` (see tests/test_pipelines_parallel.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))

PROMPTS = ["a red circle moving left", "a green square moving right", "a yellow triangle moving up"]
#: 5 frames at 32 x 32 pixels -> a 3 x 8 x 8 token grid for the tiny pipeline; 2 steps
CALL = dict(num_frames=5, height=32, width=32, num_inference_steps=2, progress=False,
            call_kwargs=dict(max_sequence_length=8, guidance_scale=1.0))


def _gloo_or_skip():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, out_dir, *args):
    mp.start_processes(worker, args=(2, _free_port(), str(out_dir), *args), nprocs=2, join=True,
                       start_method="spawn")
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


def _start(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    sys.path.insert(0, HERE)
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)


def _finish(out_dir, rank, result):
    import torch.distributed as dist

    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _dump(measured, **plans):
    """A measurement's table (exact: float64 through JSON round-trips) and plan documents."""
    t = measured.table
    out = {"errors": t.errors.tolist(), "density": t.density.tolist(), "weights": t.weights.tolist(),
           "steps": list(t.steps), "candidates": [p.to_dict() for p in t.candidates],
           "time": None if t.time is None else t.time.tolist()}
    out.update({name: plan.to_dict() for name, plan in plans.items()})
    return out


def _error_of(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test compares what each rank raised
        return f"{type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------------------
# Two ranks: the runs dealt over them; the recorder's Ulysses heads gathered
# --------------------------------------------------------------------------------------


class _UlyssesCall:
    """What the recorder reads of an ``AttentionCall`` under Ulysses: a rank's heads of one call."""

    sparse = True

    def __init__(self, layer, step, q, k, v, layout, head_offset):
        self.layer, self.step, self.head_offset = layer, step, head_offset
        self.q, self.k, self.v, self.layout = q, k, v, layout

    def run(self, fn):
        from dit_sparse import Full

        return fn(self.q, self.k, self.v, Full(), self.layout)


def _harness_calls():
    """``(run, layer, step, q, k, v)`` of a small recorded profile: 2 runs, 2 layers, 2 steps, 4 heads."""
    g = torch.Generator().manual_seed(5)
    for run in range(2):
        for step in range(2):
            for layer in ("a", "b"):
                q, k, v = (torch.randn(1, 3 * 4 * 4, 4, 8, generator=g) for _ in range(3))
                yield run, layer, step, q, k, v


def _harness_table(rank=0, world=1):
    """The recorder's table of :func:`_harness_calls`, fed whole (``world`` 1) or as Ulysses
    rank ``rank`` of ``world`` would see it (its heads only), then reduced over the ranks."""
    from dit_sparse import Full, Neighborhood, TokenLayout
    from dit_sparse.pipelines.profiling import _Processes, _Recorder, _reduced_table

    layout = TokenLayout(grid=(3, 4, 4))
    cands = [Neighborhood(kernel=(1, 3, 3)), Neighborhood(kernel=(3, 3, 3)), Full()]
    rec = _Recorder(["a", "b"], 4, cands, [0, 1], head_split=world > 1)
    share = 4 // world
    h0 = rank * share
    for run, layer, step, q, k, v in _harness_calls():
        rec.run = run
        part = [t[:, :, h0:h0 + share] for t in (q, k, v)]
        rec.observe(_UlyssesCall(layer, step, *part, layout, h0), None)
    procs = _Processes("heads", rank, world) if world > 1 else _Processes()
    return _reduced_table(procs, rec, 2, ["a", "b"], 4, cands, [0, 1])


def _runs_worker(rank, world, port, out_dir):
    _start(rank, world, port)
    from pipelines_fixtures import tiny_wan_pipeline

    from dit_sparse.pipelines.profiling import measure

    pipe = tiny_wan_pipeline()
    measured = measure(pipe, PROMPTS, time_kernels=True, **CALL)
    result = _dump(measured, plan=measured.plan(budget=0.5), timed=measured.plan(max_error=0.3, cost="time"))
    # one run, two ranks: rank 1 runs nothing and takes the grid and candidates of rank 0
    result["one_run"] = _dump(measure(pipe, PROMPTS[:1], **CALL))
    # distributed=False: each rank profiles alone, all of its runs
    result["alone"] = _dump(measure(pipe, PROMPTS[:1], distributed=False, **CALL))
    # arguments that differ between ranks: every rank refuses before running anything
    result["other_seeds"] = _error_of(lambda: measure(pipe, PROMPTS, seeds=(rank,), **CALL))
    # a failure inside one rank's run reaches every rank
    if rank == 1:
        def broken(*args, **kwargs):
            raise ValueError("broken transformer on rank 1")

        pipe.transformer.forward = broken
    result["failure"] = _error_of(lambda: measure(pipe, PROMPTS[:2], **CALL))
    # the recorder's placement of Ulysses heads, reduced over the two ranks
    harness = _harness_table(rank, world)
    result["harness"] = {"errors": harness.errors.tolist(), "density": harness.density.tolist(),
                         "weights": harness.weights.tolist()}
    _finish(out_dir, rank, result)


@pytest.fixture(scope="module")
def single():
    """Single-process measurements of the references, with the ranks' thread count."""
    from pipelines_fixtures import tiny_wan_pipeline

    from dit_sparse.pipelines.profiling import measure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = tiny_wan_pipeline()
        return {"all": measure(pipe, PROMPTS, **CALL), "one_run": measure(pipe, PROMPTS[:1], **CALL),
                "first_two": measure(pipe, PROMPTS[:2], **CALL)}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    _gloo_or_skip()
    return _spawn(_runs_worker, tmp_path_factory.mktemp("runs"))


def _without_times(doc):
    doc = json.loads(json.dumps(doc))
    for entry in doc["profile"]["candidates"]:
        entry.pop("time", None)
    return doc


def _choices(doc):
    """Per layer, the chosen pattern of each head (a uniform layer lists one)."""
    return [[h["pattern"] for h in layer.get("heads", [layer])] for layer in doc["layers"]]


def _assert_same_table(got, measured):
    t = measured.table
    for name, ref in (("errors", t.errors), ("density", t.density), ("weights", t.weights)):
        assert torch.equal(torch.tensor(got[name], dtype=torch.float64), ref), name
    assert got["steps"] == list(t.steps)
    assert got["candidates"] == [p.to_dict() for p in t.candidates]


def test_two_ranks_build_the_single_process_plan(ranks, single):
    ref = single["all"]
    for rank, got in enumerate(ranks):
        _assert_same_table(got, ref)
        assert _without_times(got["plan"]) == ref.plan(budget=0.5).to_dict(), f"rank {rank}"
    # the plan is not trivial: some head is sparse
    assert any(p["kind"] != "full" for layer in _choices(ranks[0]["plan"]) for p in layer)


def test_kernel_times_are_rank_0s_on_every_rank(ranks, single):
    assert ranks[0]["time"] == ranks[1]["time"]
    assert len(ranks[0]["time"]) == len(ranks[0]["candidates"]) and all(t > 0 for t in ranks[0]["time"])
    assert ranks[0]["timed"] == ranks[1]["timed"]
    assert ranks[0]["timed"]["profile"]["cost"] == "time"


def test_a_rank_without_runs_takes_part(ranks, single):
    for got in ranks:
        _assert_same_table(got["one_run"], single["one_run"])


def test_distributed_false_profiles_each_rank_alone(ranks, single):
    for got in ranks:
        _assert_same_table(got["alone"], single["one_run"])


def test_distributed_argument_errors():
    import dit_sparse as ds
    from pipelines_fixtures import tiny_wan_pipeline

    pipe = tiny_wan_pipeline(heads=2, layers=1)
    with pytest.raises(TypeError, match="distributed='yes' must be None"):
        ds.profile(pipe, PROMPTS, budget=0.5, distributed="yes", **CALL)
    with pytest.raises(RuntimeError, match="distributed=True but torch.distributed is not initialised"):
        ds.profile(pipe, PROMPTS, budget=0.5, distributed=True, **CALL)


def test_ranks_given_other_arguments_all_refuse(ranks):
    for rank, got in enumerate(ranks):
        assert got["other_seeds"] is not None and got["other_seeds"].startswith("ValueError"), got["other_seeds"]
        assert "rank(s) [1] were given other arguments unlike rank 0" in got["other_seeds"]
    assert "'seeds'" in ranks[1]["other_seeds"]


def test_a_failure_on_one_rank_reaches_every_rank(ranks):
    assert ranks[1]["failure"] == "ValueError: broken transformer on rank 1"
    assert ranks[0]["failure"].startswith("RuntimeError: profiling failed on rank(s) [1] of 2")


def test_ulysses_heads_are_placed_and_gathered(ranks):
    """The recorder under Ulysses (each rank sees its 2 of 4 heads, offset by its first head),
    reduced over the two ranks, equals the recorder fed every head in one process."""
    ref = _harness_table()
    for got in ranks:
        for name in ("errors", "density", "weights"):
            assert torch.equal(torch.tensor(got["harness"][name], dtype=torch.float64), getattr(ref, name)), name
    # the heads differ from each other, so a misplaced head would show
    assert len(set(ref.errors[0, 0, :, 0].tolist())) == 4


# --------------------------------------------------------------------------------------
# Ulysses context parallelism on the whole pipeline
# --------------------------------------------------------------------------------------


def _ulysses_worker(rank, world, port, out_dir):
    _start(rank, world, port)
    torch.accelerator.device_count = lambda: 1  # CPU-only: see tests/test_pipelines_parallel.py
    from diffusers import ContextParallelConfig
    from pipelines_fixtures import tiny_wan_pipeline

    from dit_sparse.pipelines.profiling import measure

    pipe = tiny_wan_pipeline()
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    measured = measure(pipe, PROMPTS[:2], **CALL)
    _finish(out_dir, rank, _dump(measured, plan=measured.plan(budget=0.5)))


def test_ulysses_profile_equals_the_single_process_profile(tmp_path, single):
    _gloo_or_skip()
    ref = single["first_two"]
    ranks = _spawn(_ulysses_worker, tmp_path)
    assert ranks[0] == ranks[1]  # every rank holds the same table and plan
    got = ranks[0]
    torch.testing.assert_close(torch.tensor(got["errors"], dtype=torch.float64), ref.table.errors, rtol=1e-4,
                               atol=1e-7)
    torch.testing.assert_close(torch.tensor(got["weights"], dtype=torch.float64), ref.table.weights, rtol=1e-5,
                               atol=0)
    assert torch.equal(torch.tensor(got["density"], dtype=torch.float64), ref.table.density)
    assert _choices(got["plan"]) == _choices(ref.plan(budget=0.5).to_dict())


# --------------------------------------------------------------------------------------
# The command line under torchrun
# --------------------------------------------------------------------------------------


def test_cli_under_torchrun_writes_one_plan(tmp_path):
    _gloo_or_skip()
    from pipelines_fixtures import tiny_wan_pipeline

    from dit_sparse.cli import main

    model = tmp_path / "tiny-wan"
    tiny_wan_pipeline(heads=2).save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = ["profile", "--model", str(model), "--prompts", str(prompts), "--budget", "0.6", "--steps", "2",
            "--height", "32", "--width", "32", "--frames", "5", "--guidance-scale", "1.0",
            "--candidate", "neighborhood:kernel=1x3x3", "--candidate", "sliding-tile:tile=1x4x4,window=1x1x3"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "dit_sparse", *args, "-o", str(out_dir / "plan.json")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out_dir)) == ["plan.json"]
    # rank 0 prints and writes; rank 1 is quiet
    assert proc.stdout.count("wrote ") == 1 and proc.stdout.count("blocks.0.attn1") == 1, proc.stdout
    assert proc.stderr.count("dit-sparse: loading") == 1, proc.stderr
    # the same plan as one process (one thread, as torchrun gives each rank)
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--threads", "1", "--quiet", "-o", str(tmp_path / "single.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert json.loads((out_dir / "plan.json").read_text()) == json.loads((tmp_path / "single.json").read_text())
