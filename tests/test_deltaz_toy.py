"""The Delta-Z-bar toy: the boundary moves away from a background whose cross section grows."""

import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from deltaz_toy import (
    PROCESSES,
    SCALED,
    boundary,
    efficiency_at,
    make_toy,
    selection,
    train_linear,
    write_section,
    z_curve,
)


def _train(scale: float, loss: str) -> torch.nn.Linear:
    torch.set_num_threads(1)
    return train_linear(make_toy(1000, scale, seed=0), loss, steps=200, seed=0)


@pytest.mark.parametrize("loss", ["deltaz", "bce"])
def test_boundary_moves_away_from_the_heavier_background(loss):
    light, heavy = _train(0.25, loss), _train(4.0, loss)
    # A's centre is further on the rejected side, and less of A is selected.
    assert boundary(heavy).distance > boundary(light).distance + 0.3
    test_light, test_heavy = make_toy(3000, 0.25, seed=99), make_toy(3000, 4.0, seed=99)
    assert selection(heavy, test_heavy).eff_a < 0.5 * selection(light, test_light).eff_a


def test_a_loss_blind_to_cross_sections_does_not_move():
    light, heavy = _train(0.25, "bce_unweighted"), _train(4.0, "bce_unweighted")
    assert boundary(heavy).distance == pytest.approx(boundary(light).distance, abs=0.05)


def test_deltaz_learns_a_direction_on_separated_processes_only():
    separated = train_linear(make_toy(1000, seed=0), "deltaz", steps=200, seed=0)
    overlapping = train_linear(make_toy(1000, seed=0, separation=2.0), "deltaz", steps=200)
    assert np.hypot(*boundary(separated).w) > 0.3
    assert np.hypot(*boundary(overlapping, separation=2.0).w) < 0.01


def test_toy_weights_are_the_expected_yields():
    toy = make_toy(500, scale=2.0, seed=1)
    for name, (_, yield_) in PROCESSES.items():
        rows = torch.from_numpy(toy.process == name)
        expected = yield_ * (2.0 if name == SCALED else 1.0)
        assert float(toy.weight[rows].sum()) == pytest.approx(expected)
    assert toy.s_tot == pytest.approx(PROCESSES["signal"][1])
    with pytest.raises(ValueError, match="scale"):
        make_toy(10, scale=0.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        train_linear(toy, "hinge")


def test_selection_and_curve_agree_at_the_models_cut():
    model = _train(1.0, "deltaz")
    test = make_toy(3000, seed=5)
    chosen = selection(model, test)
    curve = z_curve(model, test)
    # The curve passes through the model's own cut: it reaches that Z (to rounding) at that
    # efficiency.
    assert efficiency_at(curve, chosen.z * (1 - 1e-9)) >= chosen.eff_signal - 1e-9
    assert efficiency_at(curve, 1e9) != efficiency_at(curve, 1e9)  # NaN: unreachable Z


def test_write_section_replaces_its_own_block_only(tmp_path):
    page = tmp_path / "page.md"
    write_section(page, "a", "first A")
    write_section(page, "b", "first B")
    write_section(page, "a", "second A")
    text = page.read_text()
    assert "second A" in text and "first B" in text and "first A" not in text
    assert text.index("second A") < text.index("first B")  # kept in place
