"""scripts/tiny_wan/caption_gap.py: the velocity error is the flow-matching one, per caption variant."""

import torch

import caption_gap as cg


class Stub(torch.nn.Module):
    """Predicts ``scale * mean(text embedding)`` everywhere: the caption alone sets the output."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        level = self.scale * encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
        return (level.expand_as(hidden_states),)


def test_velocity_errors_match_a_direct_computation():
    x0 = torch.randn(5, 4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    embeds = {"true": torch.ones(5, 6, 8), "wrong": -torch.ones(5, 6, 8), "reversed": 2 * torch.ones(5, 6, 8),
              "empty": torch.zeros(5, 6, 8)}
    errors = cg.velocity_errors(Stub(0.5), x0, embeds, [0.3, 1.0], seed=11, batch=2)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(11))
    for sigma in (0.3, 1.0):  # the stub ignores x_t, so the error is the same at every sigma
        for name, level in (("true", 0.5), ("wrong", -0.5), ("reversed", 1.0), ("empty", 0.0)):
            expected = (level - (noise - x0)).square().mean().item()
            assert abs(errors[sigma][name] - expected) < 1e-5, (sigma, name)
    assert errors[1.0]["true"] != errors[1.0]["wrong"]
    out = cg.table(errors)
    assert out.splitlines()[0].split()[:5] == ["sigma", "true", "wrong", "reversed", "empty"]
    assert len(out.splitlines()) == 4
    gaps = out.splitlines()[-1].split()[5:]  # wrong - true, reversed - true, empty - true
    e = errors[1.0]
    assert [float(v) for v in gaps] == [round(e[v] - e["true"], 4) for v in ("wrong", "reversed", "empty")]


def test_reverse_direction_swaps_only_the_direction_word():
    assert cg.reverse_direction("a red circle moving left on a blue background") == \
        "a red circle moving right on a blue background"
    for direction, opposite in cg.OPPOSITE.items():
        caption = f"a green square moving {direction} on a white background"
        assert cg.reverse_direction(cg.reverse_direction(caption)) == caption
        assert cg.reverse_direction(caption).split()[4] == opposite


def test_runs_on_the_embedded_model(capsys):
    assert cg.main(["--clips", "2", "--size", "32", "--frames", "5", "--sigmas", "1.0",
                    "--max-sequence-length", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("embedded:tiny-wan: velocity error of 2 clips at 5x32x32")
    values = [float(v) for v in lines[-1].split()[1:5]]
    assert all(0.0 < v < 10.0 for v in values)
