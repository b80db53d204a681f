"""Pattern spec strings: every spec that parsed keeps its meaning, specs round-trip, the help
text's examples parse, and a bad spec is one ValueError line naming the field and its value."""

import re

import pytest
from hypothesis import given, settings, strategies as st

import dit_sparse as ds
from dit_sparse.patterns import _REGISTRY, _SPEC_KINDS, PATTERN_SPEC_HELP, parse_pattern
from dit_sparse.plan import pattern_spec

# (spec, fragment of the message): the fragment names the field and the bad value
BAD_SPECS = [
    ("neighborhood:kernel=abc", "kernel='abc' must be an int or TxHxW ints (e.g. kernel=3x9x9)"),
    ("neighborhood:kernel=1.5", "kernel='1.5' must be an int or TxHxW ints"),
    ("neighborhood:kernel=nan", "kernel='nan' must be an int or TxHxW ints"),
    ("neighborhood:kernel=", "kernel='' must be an int or TxHxW ints"),
    ("neighborhood:kernel=3xx3", "kernel='3xx3' must be an int or TxHxW ints"),
    ("neighborhood:kernel=3x9", "kernel='3x9' has 2 entries; must be an int or TxHxW ints"),
    ("neighborhood:kernel=1x3x3x3", "kernel='1x3x3x3' has 4 entries; must be an int or TxHxW ints"),
    ("neighborhood:kernel=-3", "kernel=-3: every entry must be >= 1"),
    ("neighborhood:kernel=3x9x9,dilation=0", "dilation=0: every entry must be >= 1"),
    ("neighborhood:kernel=3,dilation=1.0", "dilation='1.0' must be an int or TxHxW ints (e.g. dilation=1x2x2)"),
    ("neighborhood:kernel=3,stride=4", "stride=(4, 4, 4) exceeds kernel=(3, 3, 3)"),
    ("neighborhood:kernel=3,kernel=5", "kernel= is given twice (kernel=3 and kernel=5)"),
    ("neighborhood:kernal=3", "unknown field 'kernal'; neighborhood fields: kernel, dilation, stride"),
    ("neighborhood:3x9x9", "'3x9x9' is not field=value; neighborhood fields: kernel, dilation, stride"),
    ("neighborhood", "neighborhood needs kernel="),
    ("full:kernel=3", "unknown field 'kernel'; full takes no fields"),
    ("sliding-tile:tile=0x8x8", "tile=0x8x8: every entry must be >= 1"),
    ("sliding-tile:window=0", "window=0: every entry must be >= 1"),
    ("sliding-tile:tile=4x8x8,window=3x3", "window='3x3' has 2 entries"),
    ("sliding-tile:tile=4x8x8", "sliding-tile needs tile= and window= (window= missing)"),
    ("sliding-tile:window=3", "sliding-tile needs tile= and window= (tile= missing)"),
    ("sliding-tile:tile=4,window=3,tile=4", "tile= is given twice"),
    ("block-sparse:block=4x8,topk=0.2", "block='4x8' has 2 entries; must be an int or TxHxW ints (e.g. block=4x8x8)"),
    ("block-sparse:block=4x8x8,topk=abc", "topk='abc' must be a number in (0, 1] (e.g. topk=0.2)"),
    ("block-sparse:block=4x8x8,topk=", "topk='' must be a number in (0, 1]"),
    ("block-sparse:block=4x8x8,topk=1x2x3", "topk='1x2x3' must be a number in (0, 1]"),
    ("block-sparse:block=4x8x8,topk=nan", "topk=nan must be in (0, 1]"),
    ("block-sparse:block=4x8x8,topk=inf", "topk=inf must be in (0, 1]"),
    ("block-sparse:block=4x8x8,topk=0", "topk=0 must be in (0, 1]"),
    ("block-sparse:block=4x8x8,threshold=-0.5", "threshold=-0.5 must be in (0, 1]"),
    ("block-sparse:block=4x8x8,threshold=1.5", "threshold=1.5 must be in (0, 1]"),
    ("block-sparse:block=4x8x8", "block-sparse needs one of topk= or threshold="),
    ("block-sparse:block=4x8x8,topk=0.2,threshold=0.5", "block-sparse takes only one of topk= and threshold="),
    ("block-sparse:block=4x8x8,topx=0.2", "unknown field 'topx'; block-sparse fields: block, topk, threshold"),
]


@pytest.mark.parametrize("spec, fragment", BAD_SPECS)
def test_bad_spec_names_the_field_and_value(spec, fragment):
    with pytest.raises(ValueError) as info:
        parse_pattern(spec)
    message = str(info.value)
    assert message.startswith(f"pattern spec {spec!r}: ")
    assert fragment in message
    assert "\n" not in message


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match=r"unknown pattern spec 'spiral:size=3': kind 'spiral' is not one of "
                                         r"block-sparse, full, neighborhood, sliding-tile$"):
        parse_pattern("spiral:size=3")


# specs that parsed before the spec table, each with the pattern it meant
GOOD_SPECS = [
    ("full", ds.Full()),
    ("full:", ds.Full()),
    ("Full", ds.Full()),
    ("neighborhood:kernel=3", ds.Neighborhood(3)),
    ("neighborhood:kernel=3x9x9", ds.Neighborhood((3, 9, 9))),
    ("neighborhood:kernel=1x3x3,", ds.Neighborhood((1, 3, 3))),
    ("neighborhood:kernel=3x9x9,dilation=1x2x2", ds.Neighborhood((3, 9, 9), dilation=(1, 2, 2))),
    ("neighborhood:kernel=5x13x13,dilation=1x2x2", ds.Neighborhood((5, 13, 13), dilation=(1, 2, 2))),
    ("neighborhood:stride=1x3x3,kernel=3x9x9", ds.Neighborhood((3, 9, 9), stride=(1, 3, 3))),
    ("neighborhood:dilation=1x1x1,kernel=3x3x3,stride=1x1x1", ds.Neighborhood(3)),
    (" neighborhood : kernel = 3 x 9 x 9 ", ds.Neighborhood((3, 9, 9))),
    ("sliding-tile:tile=4x4x4,window=3x3x3", ds.SlidingTile(4, 3)),
    ("sliding_tile:tile=1x8x8,window=5x1x3", ds.SlidingTile((1, 8, 8), (5, 1, 3))),
    ("Sliding-Tile:window=3,tile=4", ds.SlidingTile(4, 3)),
    ("block-sparse:block=4x8x8,topk=0.2", ds.BlockSparse((4, 8, 8), topk=0.2)),
    ("block-sparse:block=1x4x4,topk=0.25", ds.BlockSparse((1, 4, 4), topk=0.25)),
    ("block-sparse:block=4x8x8,threshold=0.3", ds.BlockSparse((4, 8, 8), threshold=0.3)),
    ("block_sparse:block=2,topk=1", ds.BlockSparse(2, topk=1.0)),
    ("block-sparse:topk=0.5", ds.BlockSparse(topk=0.5)),
    ("block-sparse:block=4x8x8,threshold=1e-05", ds.BlockSparse((4, 8, 8), threshold=1e-05)),
]


@pytest.mark.parametrize("spec, pattern", GOOD_SPECS)
def test_specs_that_parsed_keep_their_meaning(spec, pattern):
    got = parse_pattern(spec)
    assert got == pattern and type(got) is type(pattern)


size = st.one_of(st.integers(1, 9), st.tuples(*[st.integers(1, 9)] * 3))


def _neighborhood(kernel, dilation, stride):
    kernel = ds.Neighborhood(kernel).kernel
    stride = tuple(min(s, k) for s, k in zip(ds.Neighborhood(stride).kernel, kernel))
    return ds.Neighborhood(kernel, dilation=dilation, stride=stride)


def patterns(fraction):
    return st.one_of(
        st.just(ds.Full()),
        st.builds(_neighborhood, size, size, size),
        st.builds(ds.SlidingTile, size, size),
        st.builds(lambda b, x: ds.BlockSparse(b, topk=x), size, fraction),
        st.builds(lambda b, x: ds.BlockSparse(b, threshold=x), size, fraction),
    )


@settings(max_examples=200, deadline=None)
@given(patterns(st.floats(0.0, 1.0, exclude_min=True)))
def test_canonical_spec_round_trips(p):
    got = parse_pattern(p.spec)
    assert got == p and type(got) is type(p)


# pattern_spec prints a fraction with "{:g}" (6 significant digits), so draw fractions it keeps
@settings(max_examples=200, deadline=None)
@given(patterns(st.integers(1, 10**6).map(lambda n: n / 10**6)))
def test_plan_pattern_spec_round_trips(p):
    got = parse_pattern(pattern_spec(p))
    assert got == p and type(got) is type(p)


def test_spec_table_matches_the_dataclasses():
    assert set(_SPEC_KINDS) == set(_REGISTRY)
    for kind, table in _SPEC_KINDS.items():
        for name, (form, example) in table.fields.items():
            # the field with its example value, plus the first field of every other required group
            items = {group[0]: table.fields[group[0]][1] for group in table.required if name not in group}
            items[name] = example
            if name == "sinks":  # a part of the far field
                items["far"] = table.fields["far"][1]
            p = parse_pattern(kind + ":" + ",".join(f"{k}={v}" for k, v in items.items()))
            assert type(p) is _REGISTRY[kind]
            assert set(p.to_dict()) - {"kind"} <= set(table.fields)
            want = {"size": lambda e: tuple(int(v) for v in e.split("x")), "fraction": float, "count": int}[form](example)
            got = p.far.sinks if name == "sinks" else p.far.pool if name == "far" else getattr(p, name)
            assert got == want


def test_help_examples_parse_and_cover_every_kind():
    examples = re.findall(r"^  (\S+)", PATTERN_SPEC_HELP, flags=re.M)
    kinds = {type(parse_pattern(spec)).kind for spec in examples}
    assert kinds == set(_REGISTRY)
    assert len(examples) >= len(_REGISTRY)
    assert "``" not in PATTERN_SPEC_HELP and not re.search(r":\w+:`", PATTERN_SPEC_HELP)
    assert max(len(line) for line in PATTERN_SPEC_HELP.splitlines()) <= 88
