"""The own potential as a screen: trained on a campaign's results, it predicts formation
energies of unseen candidates, knows its chemical potentials, and says what it has not seen."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from matforge.adapters.ase_calc import EMTEvaluator
from matforge.adapters.base import EvaluationError
from matforge.adapters.bpnn import OwnPotentialEvaluator, chemical_potentials
from matforge.adapters.conformance import check_adapter


def _cell(symbols: str, a: float = 3.8, rattle: float = 0.0, seed: int = 0):
    from ase.symbols import string2symbols

    atoms = bulk("Cu", "fcc", a=a, cubic=True)
    atoms.set_chemical_symbols(string2symbols(symbols))
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return AseAtomsAdaptor.get_structure(atoms)


@pytest.fixture(scope="module")
def emt_results(tmp_path_factory):
    """EMT results of Cu-Au cells, as a campaign stores them."""
    emt = EMTEvaluator(fmax=0.05, max_steps=100)
    workdir = tmp_path_factory.mktemp("emt")
    cells = ["Cu4", "Au4", "Cu3Au", "CuAu3", "Cu2Au2", "AuCuAuCu", "Cu3Au", "Cu2Au2"]
    return [emt.evaluate(_cell(s, rattle=0.04 * (i > 5), seed=i), workdir).model_dump()
            for i, s in enumerate(cells)]


def test_chemical_potentials_are_the_results_own_references(emt_results):
    mu = chemical_potentials(emt_results)
    emt = EMTEvaluator(fmax=0.05, max_steps=100)
    assert mu["Cu"] == pytest.approx(emt.reference_energy("Cu"), abs=1e-6)
    assert mu["Au"] == pytest.approx(emt.reference_energy("Au"), abs=1e-6)
    only_cu = [r for r in emt_results if "Au" not in str(r["structure"]["sites"])]
    assert set(chemical_potentials(only_cu)) == {"Cu"}


def test_trained_on_results_it_predicts_unseen_candidates_with_a_spread(emt_results, tmp_path):
    untrained = OwnPotentialEvaluator(random_state=0)
    with pytest.raises(EvaluationError, match="not trained yet"):
        untrained.evaluate(_cell("Cu3Au"), tmp_path)
    assert untrained.fit(emt_results[:3]) is None  # fewer than min_results
    screen = untrained.fit(emt_results)
    assert screen is not untrained and untrained.model_ is None and screen.version_

    emt = EMTEvaluator(fmax=0.05, max_steps=100)
    errors, spreads = [], []
    for i, symbols in enumerate(["CuAu3", "Cu3Au", "Cu2Au2"]):
        structure = _cell(symbols, a=3.85, rattle=0.03, seed=10 + i)  # not in training
        truth = emt.evaluate(structure, tmp_path).formation_energy_per_atom
        predicted = screen.evaluate(structure, tmp_path)
        errors.append(abs(predicted.formation_energy_per_atom - truth))
        spreads.append(predicted.properties["energy_std_per_atom"])
    # formation energies of Cu-Au in EMT span about 0.1 eV/atom; the screen ranks within it
    assert max(errors) < 0.03, errors
    # the members disagree (the spread's growth away from the data is tested with the
    # potential itself, tests/engine/models/test_potential.py)
    assert all(np.isfinite(spreads)) and min(spreads) > 0
    with pytest.raises(EvaluationError, match="has seen no Pt"):
        screen.evaluate(_cell("Cu3Pt"), tmp_path)


def test_retraining_on_more_results_is_a_new_version(emt_results):
    screen = OwnPotentialEvaluator(random_state=0)
    first, again = screen.fit(emt_results[:6]), screen.fit(emt_results[:6])
    more = screen.fit(emt_results)
    assert first.version_ == again.version_ != more.version_
    structure = _cell("Cu3Au", a=3.85)
    a = first.evaluate(structure, ".").energy
    assert a == pytest.approx(again.evaluate(structure, ".").energy, abs=1e-10)
    assert np.isfinite(more.evaluate(structure, ".").energy)


@pytest.mark.slow
def test_the_own_potential_screen_conforms():
    assert check_adapter("bpnn", {"epochs": 100}) == []
