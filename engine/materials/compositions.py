"""Generators for campaigns of compositions (``candidates: composition``): no structure, only
whole-number stoichiometries, as an experimental group screens recipes or a table of
measurements.

- ``compositions``: random stoichiometries of the campaign's elements (charge-balanced
  ones only, where the campaign asks for charge balance);
- ``composition-mutation``: one atom moved, added, removed or swapped for another element in
  one of the best results;
- ``listed``: the compositions of a file (a CSV column or one formula per line), for
  example what a lab can make or a table holds measurements for.

The ``learned`` generator and inverse design propose compositions in such campaigns too.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from math import gcd
from pathlib import Path

import numpy as np
from pymatgen.core import Composition

from matforge.engine.materials.datasets import composition_key
from matforge.engine.materials.generate import Candidate, Generator


def _reduced(amounts: dict[str, int]) -> Composition:
    divisor = 0
    for n in amounts.values():
        divisor = gcd(divisor, n)
    return Composition({e: n // divisor for e, n in amounts.items()})


class CompositionGenerator(Generator):
    """Random whole-number compositions: 1..``max_species`` distinct elements drawn evenly,
    each with at least one atom, at most ``max_atoms`` atoms in the formula, reduced.

    With ``charge_balanced`` it draws evenly among the reduced compositions whose ICSD
    oxidation states can sum to zero
    (:func:`~matforge.engine.materials.chemistry.charge_balanced_compositions`).
    """

    name = "compositions"
    makes = ("composition",)

    def __init__(self, elements: Sequence[str], max_atoms: int = 16, max_species: int = 3,
                 charge_balanced: bool = False):
        self.elements = list(elements)
        self.max_atoms = int(max_atoms)
        self.max_species = min(int(max_species), len(self.elements))
        self.balanced: list[Composition] | None = None
        if charge_balanced:
            from matforge.engine.materials.chemistry import charge_balanced_compositions

            self.balanced = charge_balanced_compositions(self.elements, self.max_atoms,
                                                         self.max_species)
            if not self.balanced:
                raise ValueError(f"no charge-balanced composition of {', '.join(self.elements)} "
                                 f"with at most {self.max_atoms} atoms")

    def sample(self, rng: np.random.Generator) -> Composition:
        if self.balanced is not None:
            return self.balanced[int(rng.integers(len(self.balanced)))]
        k = int(rng.integers(1, min(self.max_species, self.max_atoms) + 1))
        chosen = rng.choice(len(self.elements), size=k, replace=False)
        # k positive parts summing to a total of k..max_atoms: stars and bars on the total
        total = int(rng.integers(k, self.max_atoms + 1))
        cuts = np.sort(rng.choice(np.arange(1, total), size=k - 1, replace=False))
        parts = np.diff(np.concatenate([[0], cuts, [total]]))
        return _reduced({self.elements[int(i)]: int(n) for i, n in zip(chosen, parts)})

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        return [Candidate(self.sample(rng), self.name) for _ in range(n)]


class CompositionMutation(Generator):
    """One step from a parent composition: an atom of one element becomes another element
    (present or new), an atom is added or removed, or one element is swapped for another.

    Parameters
    ----------
    elements : symbols a step may introduce
    max_atoms : most atoms in a formula
    max_species : most distinct elements
    """

    name = "composition-mutation"
    makes = ("composition",)

    def __init__(self, elements: Sequence[str], max_atoms: int = 16, max_species: int = 3):
        self.elements = list(elements)
        self.max_atoms = int(max_atoms)
        self.max_species = int(max_species)

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        parents = [p for p in parents if isinstance(p.structure, Composition)]
        if not parents:
            return []
        out = []
        for _ in range(n):
            parent = parents[int(rng.integers(len(parents)))]
            child = self.mutate(parent.structure, rng)
            if child is not None:
                out.append(Candidate(child, self.name, parent=parent.fingerprint))
        return out

    def mutate(self, composition: Composition, rng: np.random.Generator) -> Composition | None:
        if any(abs(n - round(n)) > 1e-6 for n in composition.values()):
            return None  # a fractional formula (an alloy series) has no one-atom step
        amounts = {el.symbol: int(round(n)) for el, n in composition.items()}
        present = sorted(amounts)
        move = int(rng.integers(4))
        source = present[int(rng.integers(len(present)))]
        target = self.elements[int(rng.integers(len(self.elements)))]
        if move == 0 and target != source:  # one atom changes element
            amounts[source] -= 1
            amounts[target] = amounts.get(target, 0) + 1
        elif move == 1:  # one atom more
            amounts[target] = amounts.get(target, 0) + 1
        elif move == 2:  # one atom fewer
            amounts[source] -= 1
        elif move == 3 and target not in amounts:  # an element swapped for another
            amounts[target] = amounts.pop(source)
        else:
            return None
        amounts = {e: n for e, n in amounts.items() if n > 0}
        if not amounts or sum(amounts.values()) > self.max_atoms \
                or len(amounts) > self.max_species:
            return None
        return _reduced(amounts)


class ListedGenerator(Generator):
    """Compositions listed in a file, drawn evenly: a CSV file's ``column`` (``formula`` by
    default), a text file with one formula per line, or the compositions of a named table
    of measurements (``dataset``, :data:`~matforge.engine.materials.datasets.DATASETS`).
    Formulas with other elements than the campaign's are left out; a list with none of the
    campaign's is refused.
    """

    name = "listed"
    makes = ("composition",)
    path_parameters = ("path",)

    def __init__(self, elements: Sequence[str], path: str | None = None,
                 column: str = "formula", dataset: str | None = None):
        if (path is None) == (dataset is None):
            raise ValueError("give exactly one of 'path' (a file of formulas) or 'dataset'")
        if dataset is not None:
            from matforge.engine.materials.datasets import DATASETS, dataset_file

            path, column = dataset_file(dataset), DATASETS[dataset].formula
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise ValueError(f"path: cannot read {path}: {error.strerror or error}") from None
        if path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            if rows and column not in rows[0]:
                raise ValueError(f"column: {path} has no column {column!r} "
                                 f"(it has {', '.join(rows[0])})")
            formulas = [row[column] for row in rows]
        else:
            formulas = [line.strip() for line in text.splitlines()]
        allowed, found = set(elements), {}
        for formula in formulas:
            if not formula or formula.startswith("#"):
                continue
            try:
                composition = Composition(formula)
            except (ValueError, KeyError):
                raise ValueError(f"path: {path}: {formula!r} is not a formula") from None
            if {el.symbol for el in composition} <= allowed:
                found.setdefault(composition_key(composition), composition.reduced_composition)
        if not found:
            raise ValueError(f"path: {path} lists no composition of {', '.join(elements)} "
                             f"only")
        self.compositions = [found[k] for k in sorted(found)]

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        picks = rng.integers(len(self.compositions), size=n)
        return [Candidate(self.compositions[int(i)], self.name) for i in picks]
