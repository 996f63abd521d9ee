"""PyXtal crystals in a chosen space group, confirmed by pymatgen's SpacegroupAnalyzer."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matforge.engine.materials.chemistry import charge_states
from matforge.engine.materials.structures import check_structure
from matforge.engine.materials.symmetric import SymmetricGenerator


def test_crystals_in_space_group_225_have_that_symmetry():
    generator = SymmetricGenerator(["Mg", "Al", "O"], space_groups=[225], max_atoms=16)
    made = generator.propose(8, np.random.default_rng(0))
    assert len(made) >= 4
    for candidate in made:
        s = candidate.structure
        assert SpacegroupAnalyzer(s, symprec=0.01).get_space_group_number() == 225
        assert candidate.generator == "symmetric:225" and len(s) <= 16
        check_structure(s)  # no two atoms closer than 0.5 Å
        counts = {e.symbol: int(round(a)) for e, a in s.composition.items()}
        assert charge_states(counts) is not None  # the campaign's charge-balanced compositions
    again = generator.propose(8, np.random.default_rng(0))
    assert [c.fingerprint for c in again] == [c.fingerprint for c in made]


def test_alloys_use_random_compositions_and_bad_groups_are_named():
    generator = SymmetricGenerator(["Cu", "Au"], space_groups=[221, 225])
    assert not generator.charged
    assert generator.propose(3, np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"space_groups: \[231\]: numbers 1-230"):
        SymmetricGenerator(["Cu"], space_groups=[231])
