"""Intermetallic prototypes: symmetry, formulas and volumes of known compounds, and the
generator that decorates them."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Composition
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matforge.engine import plugins
from matforge.engine.materials.generate import Generator
from matforge.engine.materials.prototypes import (
    PrototypeGenerator,
    decorate_prototype,
    intermetallic_prototypes,
)
from matforge.engine.materials.structures import atomic_volume


@pytest.mark.parametrize(
    ("prototype", "occupants", "formula", "atoms", "space_group", "volume_per_atom"),
    [  # experimental room-temperature volumes per atom, Å^3 (a^3 / atoms per cubic cell)
        ("heusler", {"X": "Cu", "Y": "Mn", "Z": "Al"}, "Cu2MnAl", 4, 225, 5.949**3 / 16),
        ("inverse-heusler", {"X": "Mn", "Y": "Co", "Z": "Al"}, "Mn2CoAl", 4, 216, 5.798**3 / 16),
        ("inverse-heusler", {"X": "Mn", "Y": "Cu", "Z": "Sb"}, "Mn2CuSb", 4, 216, None),
        ("half-heusler", {"X": "Ni", "Y": "Mn", "Z": "Sb"}, "NiMnSb", 3, 216, 5.903**3 / 12),
        # Zen's law is 14 % high for NiAl, whose strong Ni-Al bonds contract it
        ("B2", {"A": "Ni", "B": "Al"}, "NiAl", 2, 221, 2.887**3 / 2),
        ("L1_2", {"A": "Cu", "B": "Au"}, "Cu3Au", 4, 221, 3.748**3 / 4),
        ("L1_0", {"A": "Cu", "B": "Au"}, "CuAu", 2, 123, 3.966**2 * 3.673 / 4),
    ],
)
def test_known_compounds_have_their_space_group_formula_and_a_volume_near_experiment(
    prototype, occupants, formula, atoms, space_group, volume_per_atom
):
    structure = decorate_prototype(intermetallic_prototypes()[prototype], occupants)
    assert len(structure) == atoms  # the primitive cell
    assert structure.composition == Composition(formula)  # the atom counts, not only ratios
    assert SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number() == space_group
    if volume_per_atom is not None:
        assert structure.volume / len(structure) == pytest.approx(volume_per_atom, rel=0.15)


def test_the_generator_is_seeded_and_scales_to_the_mean_elemental_volume():
    elements = ["Cu", "Mn", "Al", "Ni"]
    generator = PrototypeGenerator(elements, max_atoms=16)
    first = generator.propose(40, np.random.default_rng(3))
    again = generator.propose(40, np.random.default_rng(3))
    assert [c.fingerprint for c in first] == [c.fingerprint for c in again]
    assert [c.generator for c in first] == [c.generator for c in again]
    other = generator.propose(40, np.random.default_rng(4))
    assert [c.fingerprint for c in other] != [c.fingerprint for c in first]
    names = {c.generator.split(":")[1] for c in first}
    assert names == set(intermetallic_prototypes())  # 40 draws reach all six
    for candidate in first:
        assert candidate.generator.startswith("prototype:")
        structure = candidate.structure
        symbols = [site.specie.symbol for site in structure]
        assert set(symbols) <= set(elements) and len(structure) <= 16
        prototype = intermetallic_prototypes()[candidate.generator.split(":")[1]]
        assert len(set(symbols)) == len(prototype.roles)  # one distinct element per class
        mean = np.mean([atomic_volume(s) for s in symbols])
        assert structure.volume / len(structure) == pytest.approx(mean, rel=1e-9)


def test_settings_limit_the_prototypes_drawn():
    # two elements: only the binaries; max_atoms 3: no Heusler (4 atoms), half-Heusler fits
    binaries = PrototypeGenerator(["Cu", "Au"])
    assert {p.name for p in binaries.prototypes} == {"B2", "L1_2", "L1_0"}
    small = PrototypeGenerator(["Ni", "Mn", "Sb"], max_atoms=3,
                               prototypes=["heusler", "half-heusler"])
    made = small.propose(10, np.random.default_rng(0))
    assert {c.generator for c in made} == {"prototype:half-heusler"}
    assert all(len(c.structure) == 3 for c in made)
    ternary_off = PrototypeGenerator(["Ni", "Mn", "Sb"], max_species=2)
    assert {p.name for p in ternary_off.prototypes} == {"B2", "L1_2", "L1_0"}


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"prototypes: \['garnet'\] unknown; choose from "
                                         r"heusler, inverse-heusler, half-heusler, B2"):
        PrototypeGenerator(["Cu", "Au"], prototypes=["heusler", "garnet"])
    with pytest.raises(ValueError, match=r"no prototype fits 1 distinct element\(s\) \(Cu\)"):
        PrototypeGenerator(["Cu", "Cu"])
    with pytest.raises(ValueError, match=r"heusler \(3 elements, 4 atoms\)"):
        PrototypeGenerator(["Cu", "Au"], prototypes=["heusler"])
    with pytest.raises(ValueError, match="max_atoms=1"):
        PrototypeGenerator(["Cu", "Au"], max_atoms=1)
    with pytest.raises(ValueError, match="no atomic volume for Fm"):
        PrototypeGenerator(["Cu", "Fm"])


def test_the_generator_loads_through_the_plugin_seam():
    cls = plugins.load("generators", "prototype", Generator)
    assert cls is PrototypeGenerator
    made = cls(["Cu", "Au"], max_atoms=4).propose(2, np.random.default_rng(0))
    assert len(made) == 2
