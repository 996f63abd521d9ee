"""Inverse design inside a campaign's propose step."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pymatgen.core import Lattice, Structure

from matforge.engine.config import ConfigError, parse_config
from matforge.engine.loop import campaign as engine


@dataclass
class Result:
    structure: Structure
    objective: float
    generator: str = "decorate:fcc"
    fingerprint: str = ""

    def input_structure(self) -> Structure:
        return self.structure


def _fcc(n_cu: int, n_au: int) -> Structure:
    """An 8-atom fcc cell (conventional cell doubled along a)."""
    cell = Structure(Lattice.cubic(3.9), ["Cu"] * 4,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cell.make_supercell([2, 1, 1])
    for i in range(n_au):
        cell.replace(i, "Au")
    return cell


def test_propose_puts_inverse_designed_compositions_near_the_optimum_first():
    config = parse_config({
        "name": "inv", "elements": ["Cu", "Au"], "objective": {"direction": "minimize"},
        "generator": {"pool_size": 20, "max_atoms": 8, "inverse_design": 3},
        "batch_size": 4,
    })
    # objective minimal at 50 % Au; results only at the ends of the composition range
    results = [Result(_fcc(8 - k, k), (k / 8 - 0.5) ** 2) for k in (0, 1, 2, 6, 7, 8)]
    pool = engine.propose(config, 1, results, exclude=set())
    designed = [c for c in pool if c.generator.startswith("inverse:")]
    assert 1 <= len(designed) <= 3 and pool[: len(designed)] == designed
    assert len(pool) == 20 and len({c.fingerprint for c in pool}) == 20
    au = [c.structure.composition.get_atomic_fraction("Au") for c in designed]
    assert min(abs(a - 0.5) for a in au) <= 0.125, au  # the untried optimum is among them
    assert all(len(c.structure) <= 8 for c in designed)
    again = engine.propose(config, 1, results, exclude=set())
    assert [c.fingerprint for c in again] == [c.fingerprint for c in pool]  # seeded


def test_inverse_design_waits_for_data_and_fits_in_the_pool():
    config = parse_config({"name": "inv", "elements": ["Cu", "Au"],
                           "generator": {"pool_size": 10, "inverse_design": 3}})
    assert engine.inverse_designed(config, 0, [], None, set()) == []
    with pytest.raises(
        ConfigError, match="'generator.inverse_design': 12 is larger than generator.pool_size"
    ):
        parse_config({"name": "inv", "elements": ["Cu"],
                      "generator": {"pool_size": 10, "inverse_design": 12}, "batch_size": 2})
