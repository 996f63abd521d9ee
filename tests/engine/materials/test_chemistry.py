"""Charge-balanced compositions, ionic prototypes and substitution on small real cases."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matforge.engine.materials.chemistry import (
    ChargeBalancedGenerator,
    SubstitutionGenerator,
    builtin_prototypes,
    charge_balanced_compositions,
    charge_states,
    decorate,
    oxidation_states,
)


def _neutral(composition: Composition) -> bool:
    """pymatgen's own check, independent of ours: some assignment of ICSD states sums to 0."""
    override = {e.symbol: list(oxidation_states(e.symbol)) for e in composition}
    return bool(composition.oxi_state_guesses(oxi_states_override=override, max_sites=-1))


def test_li_mn_o_compositions_are_all_neutral_and_include_the_known_cathodes():
    compositions = charge_balanced_compositions(["Li", "Mn", "O"], max_atoms=12)
    formulas = {c.reduced_formula for c in compositions}
    assert {"LiMn2O4", "Li2MnO3", "LiMnO2", "Li2O", "MnO2", "Mn3O4"} <= formulas
    assert "LiO" not in formulas and "LiMnO" not in formulas and "Li2Mn" not in formulas
    assert all(_neutral(c) for c in compositions)
    # mixed valence: spinel LiMn2O4 is Mn3.5+ on average
    assert charge_states({"Li": 1, "Mn": 2, "O": 4}) == {"Li": 1.0, "Mn": 3.5, "O": -2.0}
    assert charge_states({"Li": 1, "Mn": 1}) is None  # no anion


@pytest.mark.parametrize(
    ("prototype", "formula", "space_group", "volume_per_atom"),
    [  # experimental volumes per atom, Å^3
        ("rocksalt", "MgO", 225, 9.34),
        ("rocksalt", "NiO", 225, 9.12),
        ("spinel", "LiMn2O4", 227, 9.98),
        ("perovskite", "SrTiO3", 221, 11.90),
        ("wurtzite", "ZnO", 186, 11.90),
        ("fluorite", "CaF2", 225, 13.05),
    ],
)
def test_prototypes_give_the_right_symmetry_and_a_volume_near_experiment(
    prototype, formula, space_group, volume_per_atom
):
    structure = decorate(builtin_prototypes()[prototype], Composition(formula),
                         np.random.default_rng(0), 24)
    assert structure.composition.reduced_formula == formula
    assert SpacegroupAnalyzer(structure, 0.01).get_space_group_number() == space_group
    assert structure.volume / len(structure) == pytest.approx(volume_per_atom, rel=0.15)


def test_a_composition_that_fits_no_prototype_is_refused():
    # Li5MnO6's 6 cations : 6 anions fits rock salt, not fluorite's 1 : 2
    assert decorate(builtin_prototypes()["fluorite"], Composition("Li5MnO6"),
                    np.random.default_rng(0), 24) is None


def test_the_charge_balanced_generator_is_seeded_and_neutral():
    generator = ChargeBalancedGenerator(["Li", "Mn", "O"], max_atoms=16)
    first = generator.propose(30, np.random.default_rng(5))
    again = generator.propose(30, np.random.default_rng(5))
    assert [c.fingerprint for c in first] == [c.fingerprint for c in again]
    assert len(first) >= 25
    for candidate in first:
        assert len(candidate.structure) <= 16
        assert _neutral(candidate.structure.composition)
        assert candidate.generator.split(":")[1] in builtin_prototypes()
    with pytest.raises(ValueError, match="no charge-balanced composition"):
        ChargeBalancedGenerator(["Cu", "Au"])
    with pytest.raises(ValueError, match="prototypes: \\['garnet'\\] unknown"):
        ChargeBalancedGenerator(["Li", "O"], prototypes=["garnet"])


def test_substitution_from_a_rock_salt_seed_gives_rock_salts_with_sensible_volumes(tmp_path):
    seed = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])
    seed.to(filename=str(tmp_path / "MgO.cif"))
    generator = SubstitutionGenerator(["Mg", "Ca", "Ni", "Co", "O", "F"],
                                      seeds=[str(tmp_path / "MgO.cif")])
    made = {(c.generator, c.structure.composition.reduced_formula): c
            for c in generator.propose(40, np.random.default_rng(0))}
    formulas = {formula for _, formula in made}
    assert {"CaO", "NiO", "CoO"} <= formulas
    assert "MgF" not in formulas  # O2- -> F- would leave it charged
    experiment = {"CaO": 4.81, "NiO": 4.17, "CoO": 4.26}  # lattice constants, Å
    for (kind, formula), candidate in made.items():
        s = candidate.structure
        assert SpacegroupAnalyzer(s, 0.01).get_space_group_number() == 225
        assert kind == f"substitution:Mg->{formula[:2]}"
        assert candidate.parent is not None
        if formula in experiment:
            conventional = (s.volume / len(s) * 8) ** (1 / 3)
            assert conventional == pytest.approx(experiment[formula], rel=0.05)


def test_a_seed_that_cannot_be_read_or_is_not_balanced_is_named(tmp_path):
    with pytest.raises(ValueError, match="seeds: cannot read"):
        SubstitutionGenerator(["Mg", "O"], seeds=[str(tmp_path / "missing.cif")])
    metal = Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]])
    metal.to(filename=str(tmp_path / "Cu.cif"))
    with pytest.raises(ValueError, match="not charge-balanced"):
        SubstitutionGenerator(["Mg", "O"], seeds=[str(tmp_path / "Cu.cif")])
