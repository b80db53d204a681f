"""Plan documents: JSON round trip, validation of every field, atomic saves, the apply
protocol, and validation against a model description."""

import copy
import json
import os
import warnings

import pytest

import dit_sparse as ds
from dit_sparse.plan import FORMAT, VERSION, Plan, PlanGridWarning, pattern_spec, prompts_digest

LAYERS = ["blocks.0.attn1", "blocks.1.attn1", "blocks.2.attn1"]


def plan_dict(**changes):
    """A valid plan document written by hand (not by the code under test)."""
    doc = {
        "format": "dit-sparse-plan", "version": 1,
        "model": {"class": "WanTransformer3DModel", "name_or_path": "tiny", "heads": 2, "head_dim": 8,
                  "layers": list(LAYERS)},
        "profile": {"grid": [3, 8, 8], "text_len": 0, "num_inference_steps": 4, "sampled_steps": [0, 1, 2, 3],
                    "height": 32, "width": 32, "num_frames": 5, "seeds": [0], "num_prompts": 2,
                    "prompts_sha256": "a" * 64, "mode": "budget", "max_error": None, "budget": 0.4,
                    "dense_bound": 0.1, "versions": {"dit_sparse": "0.1.0", "torch": "2", "diffusers": "0.42"},
                    "candidates": [{"pattern": {"kind": "full"}, "error": 0.0, "density": 1.0}]},
        "dense_steps": 1,
        "layers": [
            {"name": LAYERS[0], "pattern": {"kind": "neighborhood", "kernel": [1, 3, 3], "dilation": [1, 1, 1],
                                            "stride": [1, 1, 1]}, "error": 0.1, "density": 0.2},
            {"name": LAYERS[1], "error": 0.05, "density": 0.6,
             "heads": [{"pattern": {"kind": "full"}, "error": 0.0, "density": 1.0},
                       {"pattern": {"kind": "block_sparse", "block": [1, 4, 4], "topk": 0.25, "threshold": None},
                        "error": 0.1, "density": 0.2}]},
            {"name": LAYERS[2], "pattern": {"kind": "full"}, "error": 0.0, "density": 1.0},
        ],
    }
    for path, value in changes.items():
        target = doc
        keys = path.split("/")
        for key in keys[:-1]:
            target = target[int(key) if isinstance(target, list) else key]
        last = keys[-1]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if isinstance(target, list) else last] = value
    return doc


_DELETE = object()


def test_round_trip_through_a_file(tmp_path):
    plan = Plan.from_dict(plan_dict())
    path = plan.save(tmp_path / "p.json")
    text = path.read_text()
    assert json.loads(text)["format"] == "dit-sparse-plan" and json.loads(text)["version"] == 1
    again = Plan.load(path)
    assert again.to_dict() == plan.to_dict() == plan_dict()
    assert again.dense_steps == 1 and again.grid == (3, 8, 8)
    assert again.layers[LAYERS[1]].patterns == (ds.Full(), ds.BlockSparse((1, 4, 4), topk=0.25))
    assert FORMAT == "dit-sparse-plan" and VERSION == 5
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary file left behind


def test_apply_protocol():
    plan = Plan.from_dict(plan_dict())
    assert plan.patterns_for(LAYERS[0], 2) == [ds.Neighborhood((1, 3, 3))] * 2
    assert plan.patterns_for(LAYERS[1], 2) == [ds.Full(), ds.BlockSparse((1, 4, 4), topk=0.25)]
    assert plan.patterns_for(LAYERS[2], 2) is None  # an all-dense layer keeps the model's attention
    with pytest.raises(ValueError) as info:
        plan.patterns_for(LAYERS[0], 4)
    assert str(info.value) == "the plan's header says heads=2 but the model's layer 'blocks.0.attn1' has 4 heads"
    with pytest.raises(ValueError) as info:
        plan.patterns_for("blocks.9.attn1", 2)
    assert str(info.value) == ("the plan (for WanTransformer3DModel) has no layer 'blocks.9.attn1' of the model; "
                               "the plan's layers: [blocks.0.attn1, blocks.1.attn1, blocks.2.attn1] (3)")
    with pytest.raises(ValueError, match="model layers missing from the plan"):
        plan.check_used(LAYERS + ["blocks.3.attn1"])
    plan.check_used(LAYERS)
    assert plan.mean_density == pytest.approx((0.2 * 2 + 1.0 + 0.2 + 1.0 * 2) / 6)


def test_grid_warning_once_per_grid():
    plan = Plan.from_dict(plan_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan.check_grid((3, 8, 8))
        plan.check_grid((3, 16, 16))
        plan.check_grid((3, 16, 16))
    assert len(caught) == 1 and issubclass(caught[0].category, PlanGridWarning)
    assert "(3, 8, 8)" in str(caught[0].message) and "(3, 16, 16)" in str(caught[0].message)


@pytest.mark.parametrize("changes, match", [
    ({"format": "other-plan"}, r"\['format'\].*'other-plan'"),
    ({"version": 6}, r"\['version'\]: is 6, this dit-sparse reads versions 1 to 5"),
    ({"phases": []}, r"\['phases'\]: needs \['version'\] 2"),
    ({"version": 2, "phases": [{"start_step": 0, "layers": []}]},
     r"\['phases'\]\[0\]\['start_step'\]: must be an int >= 1"),
    ({"version": 2, "phases": [{"start_step": 2}]}, r"\['phases'\]\[0\]: missing field\(s\) \['layers'\]"),
    ({"version": 2, "phases": [{"start_step": 2, "layers": []}]},
     r"\['phases'\]\[0\]\['layers'\]: layer entries must match"),
    ({"profile/phase_values": [-1]}, r"\['profile'\]\['phase_values'\]\[0\]"),
    ({"model/class": 3}, r"\['model'\]\['class'\]: must be a string"),
    ({"model/heads": 0}, r"\['model'\]\['heads'\]: must be an int >= 1"),
    ({"model/layers": []}, r"\['model'\]\['layers'\]: is empty"),
    ({"profile/grid": [3, 8]}, r"\['profile'\]\['grid'\]: must be \[T, H, W\]"),
    ({"profile/sampled_steps": [0, 4]}, r"sampled_steps.*\[0, 4\)"),
    ({"profile/prompts_sha256": "xyz"}, r"prompts_sha256.*64 lowercase hex"),
    ({"profile/mode": "fast"}, r"\['mode'\]: must be 'max_error' or 'budget'"),
    ({"profile/budget": None}, r"\['profile'\]\['budget'\]: must be set"),
    ({"profile/budget": 1.5}, r"\['profile'\]\['budget'\]: must be a number in \[0.0, 1.0\]"),
    ({"profile/versions": {}}, r"versions'\]: missing field\(s\) \['dit_sparse'\]"),
    ({"dense_steps": -1}, r"\['dense_steps'\]: must be an int >= 0"),
    ({"layers/0/pattern": {"kind": "spiral"}}, r"\['layers'\]\[0\]\['pattern'\]: unknown pattern kind='spiral'"),
    ({"layers/0/pattern": {"kind": "neighborhood", "kernel": [1, 3, 3], "size": 2}},
     r"\['layers'\]\[0\]\['pattern'\]: .*unknown fields \['size'\]"),
    ({"layers/0/density": 2.0}, r"\['layers'\]\[0\]\['density'\]"),
    ({"layers/1/heads": [{"pattern": {"kind": "full"}, "error": 0.0, "density": 1.0}]},
     r"\['layers'\]\[1\]: layer 'blocks.1.attn1' has 1 head entries but the plan's header says heads=2 "
     r"\(\['model'\]\['heads'\]\)$"),
    ({"layers/0/heads": []}, r"\['layers'\]\[0\]: needs exactly one of 'pattern'"),
    ({"layers/2/name": "blocks.7.attn1"}, r"missing \[blocks.2.attn1\].*unexpected \[blocks.7.attn1\]"),
    ({"layers/0/extra": 1}, r"\['layers'\]\[0\]: unknown field\(s\) \['extra'\]"),
    ({"profile": _DELETE}, r"plan: missing field\(s\) \['profile'\]"),
])
def test_every_field_is_validated(tmp_path, changes, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(plan_dict(**changes)))
    with pytest.raises(ValueError, match=match) as info:
        Plan.load(path)
    assert str(path) in str(info.value)


def test_layer_order_and_malformed_json(tmp_path):
    doc = plan_dict()
    doc["layers"] = [doc["layers"][1], doc["layers"][0], doc["layers"][2]]
    with pytest.raises(ValueError, match="order"):
        Plan.from_dict(doc)
    path = tmp_path / "broken.json"
    path.write_text('{"format": "dit-sparse-plan", "version": 1,')
    with pytest.raises(ValueError, match=r"malformed JSON at line 1"):
        Plan.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")
    with pytest.raises(IsADirectoryError) as info:
        Plan.load(tmp_path)
    assert str(info.value) == (f"plan path {str(tmp_path)!r} is a folder, not a plan file (give the path of a plan's "
                               ".json file)")
    with pytest.raises(ValueError, match="must be a JSON object"):
        Plan.from_dict([1, 2])


def test_validate_for_names_what_differs():
    plan = Plan.from_dict(plan_dict())
    ok = {"class": "WanTransformer3DModel", "layers": list(LAYERS), "heads": 2, "head_dim": 8}
    plan.validate_for(ok)
    cases = [
        ({"class": "FluxTransformer2DModel"},
         "the plan's header says class='WanTransformer3DModel' but the model's class is 'FluxTransformer2DModel'"),
        ({"layers": LAYERS[:2]},
         "the plan's header lists 3 self-attention layers but the model has 2 "
         "(only in the plan: [blocks.2.attn1] (1))"),
        ({"layers": LAYERS[:2] + ["blocks.7.attn1", "blocks.8.attn1"]},
         "the plan's header lists 3 self-attention layers but the model has 4 (only in the plan: [blocks.2.attn1] (1); "
         "only in the model: [blocks.7.attn1, blocks.8.attn1] (2))"),
        ({"layers": LAYERS[::-1]},
         "the plan's header lists 3 self-attention layers but the model has 3 (the same names in another order)"),
        ({"heads": 4}, "the plan's header says heads=2 but the model's layers have 4 heads"),
        ({"head_dim": 16}, "the plan's header says head_dim=8 but the model's layers have head_dim 16"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError) as info:
            plan.validate_for(dict(ok, **change))
        assert str(info.value) == "plan does not fit this model: " + message
    with pytest.raises(ValueError) as info:
        plan.validate_for(dict(ok, heads=24, head_dim=16))
    assert str(info.value) == ("plan does not fit this model: the plan's header says heads=2 but the model's layers "
                               "have 24 heads; the plan's header says head_dim=8 but the model's layers have "
                               "head_dim 16")


def test_unreadable_plan_file_is_one_line_with_the_path(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(plan_dict()))

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_text", denied)  # as root, chmod 000 would not stop the read
    with pytest.raises(PermissionError) as info:
        Plan.load(path)
    assert str(info.value) == f"plan file {str(path)!r} cannot be read: Permission denied"


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    Plan.from_dict(plan_dict()).save(path)
    before = path.read_bytes()
    other = Plan.from_dict(plan_dict(dense_steps=3))

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
    monkeypatch.undo()
    other.save(path)
    assert Plan.load(path).dense_steps == 3


def test_save_into_missing_folder_names_it(tmp_path):
    path = tmp_path / "nowhere" / "plan.json"
    with pytest.raises(FileNotFoundError, match=r"path=.*nowhere.*plan\.json.*does not exist"):
        Plan.from_dict(plan_dict()).save(path)
    assert not (tmp_path / "nowhere").exists()


def test_summary_lists_layers_heads_patterns():
    text = Plan.from_dict(plan_dict()).summary()
    lines = text.splitlines()
    assert "WanTransformer3DModel" in lines[0] and "3 layers x 2 heads" in lines[0]
    assert "dense warm-up steps: 1" in text
    row = next(line for line in lines if line.startswith("blocks.0.attn1"))
    assert "0-1" in row and "neighborhood:kernel=1x3x3" in row and "0.200" in row and "0.1000" in row
    i = next(i for i, line in enumerate(lines) if line.startswith("blocks.1.attn1"))
    assert "full" in lines[i] and "block-sparse:block=1x4x4,topk=0.25" in lines[i + 1]


def test_pattern_spec_round_trips_through_parse_pattern():
    for p in (ds.Full(), ds.Neighborhood((1, 3, 5), dilation=(1, 2, 1)), ds.SlidingTile((1, 4, 4), (3, 3, 3)),
              ds.BlockSparse((1, 8, 8), topk=0.125), ds.BlockSparse((2, 4, 4), threshold=0.9)):
        assert ds.parse_pattern(pattern_spec(p)) == p


def test_prompts_digest_is_sha256_of_the_json_list():
    import hashlib

    assert prompts_digest(["a", "b"]) == hashlib.sha256(b'["a", "b"]').hexdigest()
    assert prompts_digest(["a", "b"]) != prompts_digest(["b", "a"])


def _phase_layers(kernel):
    """Layer entries that give every layer one neighbourhood of ``kernel`` (by hand)."""
    return [{"name": name, "pattern": {"kind": "neighborhood", "kernel": kernel, "dilation": [1, 1, 1],
                                       "stride": [1, 1, 1]}, "error": 0.2, "density": 0.1} for name in LAYERS]


def test_phases_round_trip_and_protocol(tmp_path):
    doc = plan_dict(version=2)
    doc["phases"] = [{"start_step": 2, "layers": _phase_layers([1, 1, 3])},
                     {"start_step": 3, "layers": _phase_layers([1, 1, 1])}]
    doc["phases"][1]["layers"][2] = {"name": LAYERS[2], "pattern": {"kind": "full"}, "error": 0.0, "density": 1.0}
    plan = Plan.from_dict(doc)
    again = Plan.load(plan.save(tmp_path / "p.json"))
    assert again.to_dict() == doc and json.loads((tmp_path / "p.json").read_text())["version"] == 2
    assert again.phase_starts == (2, 3)
    assert again.patterns_for(LAYERS[0], 2) == [ds.Neighborhood((1, 3, 3))] * 2
    assert again.patterns_for(LAYERS[0], 2, 1) == [ds.Neighborhood((1, 1, 3))] * 2
    assert again.patterns_for(LAYERS[0], 2, 2) == [ds.Neighborhood((1, 1, 1))] * 2
    assert again.patterns_for(LAYERS[2], 2, 1) == [ds.Neighborhood((1, 1, 3))] * 2
    assert again.patterns_for(LAYERS[2], 2, 2) is None
    with pytest.raises(ValueError, match=r"phase=3 must be in \[0, 3\)"):
        again.patterns_for(LAYERS[0], 2, 3)
    # 4 steps, 1 dense: step 1 runs the top-level layers, step 2 phase 1, step 3 phase 2
    assert again.phase_steps() == [1, 1, 1] and again.phase_steps(10) == [1, 1, 7]
    first = (0.2 * 2 + 1.0 + 0.2 + 1.0 * 2) / 6
    assert again.mean_density == pytest.approx((first + 0.1 + (0.1 * 4 + 1.0 * 2) / 6) / 3)
    text = again.summary()
    assert "phases from steps 2, 3" in text and "1-1" in text and "2-2" in text and "3-3" in text
    # a plan without phases is still written as version 1 and reads as before
    assert Plan.from_dict(plan_dict()).to_dict()["version"] == 1 and Plan.from_dict(plan_dict()).phase_starts == ()


def test_phase_start_steps_must_increase():
    doc = plan_dict(version=2)
    doc["phases"] = [{"start_step": 3, "layers": _phase_layers([1, 1, 3])},
                     {"start_step": 3, "layers": _phase_layers([1, 1, 1])}]
    with pytest.raises(ValueError, match=r"\['phases'\]: start steps must be strictly increasing.*\[3, 3\]"):
        Plan.from_dict(doc)


def test_other_step_counts_warn_and_rescale():
    doc = plan_dict(version=2, **{"profile/num_inference_steps": 10, "profile/sampled_steps": [0, 5]})
    doc["phases"] = [{"start_step": 5, "layers": _phase_layers([1, 1, 3])},
                     {"start_step": 6, "layers": _phase_layers([1, 1, 1])}]
    plan = Plan.from_dict(doc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan.check_steps(10)  # the profiled count: fine
        plan.check_steps(40)
        plan.check_steps(40)
    assert len(caught) == 1 and issubclass(caught[0].category, ds.PlanStepsWarning)
    assert "[5, 6]" in str(caught[0].message) and "40" in str(caught[0].message)
    longer = plan.rescaled(40)
    assert longer.dense_steps == 4 and longer.phase_starts == (20, 24)
    assert longer.patterns_for(LAYERS[0], 2, 2) == [ds.Neighborhood((1, 1, 1))] * 2
    shorter = plan.rescaled(2)  # 1 dense step; starts 1 and 1.2 -> kept strictly increasing
    assert shorter.dense_steps == 0 and shorter.phase_starts == (1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        longer.check_steps(40)  # made for 40 steps: no warning
        Plan.from_dict(plan_dict()).check_steps(40)  # no phases: absolute steps as documented
    with pytest.raises(ValueError, match="num_steps=0 must be an int >= 1"):
        plan.rescaled(0)


def _far_layers():
    """The hand-written layers of plan_dict with a far field on the first layer's neighbourhood."""
    layers = plan_dict()["layers"]
    layers[0] = dict(layers[0], pattern=dict(layers[0]["pattern"], far={"pool": [1, 4, 4]}))
    return layers


def test_far_fields_are_version_3_and_round_trip(tmp_path):
    doc = plan_dict(version=3, layers=_far_layers())
    plan = Plan.from_dict(doc)
    assert plan.patterns_for(LAYERS[0], 2) == [ds.Neighborhood((1, 3, 3), far=(1, 4, 4))] * 2
    again = Plan.load(plan.save(tmp_path / "far.json"))
    assert again.to_dict() == doc and json.loads((tmp_path / "far.json").read_text())["version"] == 3
    assert Plan.from_dict(plan_dict()).to_dict()["version"] == 1  # plans without far fields stay version 1


@pytest.mark.parametrize("version", [1, 2])
def test_far_fields_in_an_older_version_are_refused(version):
    with pytest.raises(ValueError, match=rf"\['layers'\]: hold far fields, which need \['version'\] 3 \(the plan "
                                         rf"says {version}\)"):
        Plan.from_dict(plan_dict(version=version, layers=_far_layers()))


def test_unknown_far_field_keys_are_named():
    layers = _far_layers()
    layers[0]["pattern"]["far"]["levels"] = 2
    with pytest.raises(ValueError, match=r"unknown far-field fields \['levels'\]"):
        Plan.from_dict(plan_dict(version=3, layers=layers))


def test_pattern_spec_shows_and_round_trips_far_fields():
    from dit_sparse.plan import pattern_spec

    for p in (ds.Neighborhood((5, 3, 3), far=(1, 8, 8)), ds.SlidingTile((1, 8, 8), (1, 3, 3), far=ds.FarField((1, 4, 4), 4))):
        assert "far=" in pattern_spec(p)
        assert ds.parse_pattern(pattern_spec(p)) == p


# Sliding tiles with even windows: tile-aligned from version 4, the strided rule before it.

EVEN = {"kind": "sliding_tile", "tile": [1, 4, 4], "window": [1, 2, 2]}
EVEN_AS_RUN = {"kind": "neighborhood", "kernel": [1, 8, 8], "dilation": [1, 1, 1], "stride": [1, 4, 4]}
ODD = {"kind": "sliding_tile", "tile": [1, 4, 4], "window": [1, 3, 1]}


def _even_doc(version):
    """plan_dict with an even-window sliding tile in a layer, a head, a candidate (and a phase)."""
    doc = plan_dict(version=version)
    doc["layers"][0]["pattern"] = dict(EVEN)
    doc["layers"][1]["heads"][0]["pattern"] = dict(ODD)
    doc["layers"][1]["heads"][1]["pattern"] = dict(EVEN, far={"pool": [1, 4, 4]}) if version >= 3 else dict(EVEN)
    doc["profile"]["candidates"].append({"pattern": dict(EVEN), "error": 0.1, "density": 0.3})
    if version >= 2:
        doc["phases"] = [{"start_step": 2, "layers": copy.deepcopy(doc["layers"])}]
    return doc


@pytest.mark.parametrize("version", [1, 2, 3])
def test_even_window_sliding_tiles_of_older_plans_keep_the_strided_rule(version, tmp_path):
    doc = _even_doc(version)
    original = copy.deepcopy(doc)
    plan = Plan.from_dict(doc)
    assert doc == original  # the caller's document is not rewritten
    strided = ds.Neighborhood((1, 8, 8), stride=(1, 4, 4))
    assert plan.patterns_for(LAYERS[0], 2) == [strided] * 2
    far = ds.Neighborhood((1, 8, 8), stride=(1, 4, 4), far=(1, 4, 4)) if version >= 3 else strided
    assert plan.patterns_for(LAYERS[1], 2) == [ds.SlidingTile((1, 4, 4), (1, 3, 1)), far]  # odd stays
    if version >= 2:
        assert plan.patterns_for(LAYERS[0], 2, 1) == [strided] * 2
    assert plan.profile["candidates"][-1] == {"pattern": EVEN_AS_RUN, "error": 0.1, "density": 0.3}
    # saved again, it keeps its version and its meaning
    again = Plan.load(plan.save(tmp_path / "old.json"))
    assert json.loads((tmp_path / "old.json").read_text())["version"] == version
    assert again.to_dict()["layers"][0]["pattern"] == EVEN_AS_RUN
    assert again.patterns_for(LAYERS[0], 2) == [strided] * 2


def test_even_window_sliding_tiles_are_version_4_and_round_trip(tmp_path):
    doc = _even_doc(4)
    plan = Plan.from_dict(doc)
    assert plan.patterns_for(LAYERS[0], 2) == [ds.SlidingTile((1, 4, 4), (1, 2, 2))] * 2
    again = Plan.load(plan.save(tmp_path / "new.json"))
    assert again.to_dict() == doc and json.loads((tmp_path / "new.json").read_text())["version"] == 4
    # one even candidate is enough to need version 4 (its record would change meaning in 3)
    only_candidate = plan_dict()
    only_candidate["profile"]["candidates"].append({"pattern": dict(EVEN), "error": 0.1, "density": 0.3})
    assert Plan.from_dict(dict(only_candidate, version=4)).to_dict()["version"] == 4
    # odd windows do not need it
    odd = plan_dict()
    odd["layers"][0]["pattern"] = dict(ODD)
    assert Plan.from_dict(odd).to_dict()["version"] == 1


def test_far_fields_still_need_version_3_after_the_strided_reading():
    doc = _even_doc(2)
    doc["layers"][0]["pattern"] = dict(EVEN, far={"pool": [1, 4, 4]})
    with pytest.raises(ValueError, match=r"hold far fields, which need \['version'\] 3 \(the plan says 2\)"):
        Plan.from_dict(doc)


@pytest.mark.parametrize("name", ["plan128_b25.json", "plan128_b25h.json", "plan128_b35h.json",
                                  "plan128_e10.json", "plan128_e10p.json"])
def test_shipped_plans_load_unchanged_and_mean_the_same(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "plans" / name
    doc = json.loads(path.read_text())
    plan = Plan.load(path)
    assert plan.to_dict() == doc  # same version, same patterns
    layout = ds.TokenLayout(tuple(doc["profile"]["grid"]))
    tiles = {p for layers in plan._tables() for layer in layers.values() for p in layer.patterns
             if isinstance(p, ds.SlidingTile)}
    assert tiles  # the shipped plans do use sliding tiles
    for p in tiles:  # each runs the windows it was profiled with (the strided rule's)
        for (lo, hi, _), (slo, shi, _) in zip(p.windows(layout), p.as_neighborhood().windows(layout)):
            assert lo.tolist() == slo.tolist() and hi.tolist() == shi.tolist(), p


def test_block_sparse_far_fields_are_version_5(tmp_path):
    doc = plan_dict()
    far = {"kind": "block_sparse", "block": [1, 4, 4], "topk": 0.25, "threshold": None, "far": {"pool": [1, 4, 4]}}
    doc["layers"][1]["heads"][1]["pattern"] = dict(far)
    with pytest.raises(ValueError, match=r"block-sparse far fields, which need \['version'\] 5 \(the plan says 4\)"):
        Plan.from_dict(dict(doc, version=4))
    plan = Plan.from_dict(dict(doc, version=5))
    assert plan.patterns_for(LAYERS[1], 2)[1] == ds.BlockSparse(block=(1, 4, 4), topk=0.25, far=(1, 4, 4))
    again = Plan.load(plan.save(tmp_path / "p.json"))
    assert json.loads((tmp_path / "p.json").read_text())["version"] == 5 and again.to_dict() == plan.to_dict()
    # a candidate alone needs it too; a window far field alone still writes version 3
    only_candidate = plan_dict()
    only_candidate["profile"]["candidates"].append({"pattern": dict(far), "error": 0.1, "density": 0.3})
    with pytest.raises(ValueError, match="need"):
        Plan.from_dict(dict(only_candidate, version=3))
    assert Plan.from_dict(dict(only_candidate, version=5)).to_dict()["version"] == 5
    window_far = plan_dict()
    window_far["layers"][0]["pattern"]["far"] = {"pool": [1, 4, 4]}
    assert Plan.from_dict(dict(window_far, version=3)).to_dict()["version"] == 3


@pytest.mark.parametrize("name,dense_steps,phase_starts", [
    ("plan128_bf15s3.json", 3, ()), ("plan128_bf20s3.json", 3, ()), ("plan128_bf20s2.json", 2, ()),
    ("plan128_bp3.json", 3, (10,)), ("plan128_bp2.json", 2, (10,)), ("plan128_bp2s.json", 2, (10,)),
    ("plan128_bp1s.json", 1, (2, 10)), ("plan128_bp1s256.json", 1, (2, 10))])
def test_shipped_block_far_plans_load_unchanged(name, dense_steps, phase_starts):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "plans" / name
    doc = json.loads(path.read_text())
    plan = Plan.load(path)
    assert plan.to_dict() == doc
    assert plan.dense_steps == dense_steps and tuple(plan.phase_starts) == phase_starts
    patterns = {p for layers in plan._tables() for layer in layers.values() for p in layer.patterns}
    assert patterns and all(isinstance(p, ds.BlockSparse) and p.far is not None and p.far.pool == (1, 8, 8)
                            and p.far.sinks >= 16 for p in patterns)
