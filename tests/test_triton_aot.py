"""Every shipped Triton config compiles ahead of time for sm_80 and sm_90a, without a GPU,
as the plain kernel, with the far-field loop compiled in, and with the far-field and sink
loops compiled in, each with window masks and with a block selection (neighborhoods and
sliding tiles; block-sparse patterns).

Runs ``scripts/triton_aot_report.py`` in a child process without TRITON_INTERPRET (an
interpreted kernel cannot be compiled) and prints its report (registers, spills, shared
memory). The head_dim 64 and 128 configs must not spill, nor any build with the far loop
(with or without sinks, with window masks or a block selection), nor any build with a block
selection.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dit_sparse.kernels.triton_attn.configs import (BLOCK_CONFIGS, BLOCK_FAR_CONFIGS, CONFIGS, FAR_CONFIGS,
                                                    SINK_CONFIGS, get_config)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "triton_aot_report.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), "--jobs", "2"], env=env,
                         capture_output=True, text=True, timeout=1800)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(out.read_text())


def test_every_config_compiles_for_both_archs(report):
    got = {(r["dtype"], r["head_dim"], r["arch"], r["mask"], r["far"], r["sinks"]) for r in report}
    want = {(d, h, a, mask, far, sinks) for (d, h) in CONFIGS for a in ("sm_80", "sm_90a")
            for mask, far, sinks in (("window", False, False), ("window", True, False), ("window", True, True),
                                     ("block", False, False), ("block", True, False), ("block", True, True))}
    assert got == want
    for r in report:
        assert r["ptxas_ok"] and r["cubin_bytes"] > 0 and r["registers"] is not None, r
        assert r["shared_bytes"] <= 227 * 1024, r


@pytest.mark.parametrize("head_dim", [64, 128])
def test_default_configs_do_not_spill(report, head_dim):
    rows = [r for r in report if r["head_dim"] == head_dim]
    assert rows
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r


def test_far_loop_builds_do_not_spill(report):
    """With window masks and with a block selection (``BLOCK_FAR_CONFIGS``)."""
    rows = [r for r in report if r["far"]]
    assert len(rows) == 8 * len(CONFIGS)
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r


def test_plain_block_selection_builds_do_not_spill(report):
    """Block-sparse patterns without a far field (``BLOCK_CONFIGS``), at every head_dim (the
    far-field builds are checked above)."""
    rows = [r for r in report if r["mask"] == "block" and not r["far"]]
    assert len(rows) == 2 * len(CONFIGS)
    for r in rows:
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r


def test_far_and_sink_configs_keep_the_tiles():
    """A far-field or sink override changes warps or stages only: the block masks stay the same."""
    for key, cfg in [*FAR_CONFIGS.items(), *SINK_CONFIGS.items()]:
        assert (cfg.block_m, cfg.block_n) == (CONFIGS[key].block_m, CONFIGS[key].block_n), key


def test_sink_configs_are_chosen_with_sinks_only():
    for (dtype, head_dim), cfg in SINK_CONFIGS.items():
        assert get_config(dtype, head_dim, far=True, sinks=True) == cfg
        assert get_config(dtype, head_dim, far=True) == FAR_CONFIGS.get((dtype, head_dim), CONFIGS[dtype, head_dim])
    with pytest.raises(ValueError, match="sinks=True needs far=True"):
        get_config("float16", 64, sinks=True)


def test_block_far_configs_are_chosen_for_block_sparse_far_fields_only():
    assert {(d, h) for d, h, _ in BLOCK_FAR_CONFIGS} <= set(CONFIGS)
    for (dtype, head_dim, sinks), cfg in BLOCK_FAR_CONFIGS.items():
        assert get_config(dtype, head_dim, far=True, sinks=sinks, block=True) == cfg
        far_cfg = FAR_CONFIGS.get((dtype, head_dim), CONFIGS[dtype, head_dim])
        window_cfg = SINK_CONFIGS.get((dtype, head_dim), far_cfg) if sinks else far_cfg
        assert get_config(dtype, head_dim, far=True, sinks=sinks) == window_cfg
        assert get_config(dtype, head_dim, block=True) == BLOCK_CONFIGS.get((dtype, head_dim), CONFIGS[dtype, head_dim])


def test_block_configs_are_chosen_for_plain_block_sparse_only():
    assert set(BLOCK_CONFIGS) <= set(CONFIGS)
    for (dtype, head_dim), cfg in BLOCK_CONFIGS.items():
        assert get_config(dtype, head_dim, block=True) == cfg
        assert get_config(dtype, head_dim) == CONFIGS[dtype, head_dim]  # window masks keep CONFIGS
