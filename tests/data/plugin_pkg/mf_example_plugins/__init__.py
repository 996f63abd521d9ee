"""Example matforge plug-ins, as a user's own package would ship them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure
from sklearn.linear_model import BayesianRidge

from matforge.engine.materials.featurize import Featurizer
from matforge.engine.materials.generate import Candidate, Generator
from matforge.engine.models.base import Surrogate
from matforge.engine.models.forest import BayesianLinearModel


class L12Generator(Generator):
    """A3B ordered fcc cells (L1_2) of two of the campaign's elements."""

    name = "l12"

    def __init__(self, elements, lattice_constant: float = 3.9):
        self.elements = list(elements)
        self.lattice_constant = lattice_constant

    def propose(self, n, rng, parents=()):
        out = []
        for _ in range(n):
            a, b = rng.choice(self.elements, size=2, replace=False)
            cell = Structure(Lattice.cubic(self.lattice_constant), [str(b)] + [str(a)] * 3,
                             [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
            out.append(Candidate(cell, "l12:ordered"))
        return out


class FractionFeaturizer(Featurizer):
    """Element fractions only; appends one line per call to ``log`` when given."""

    def __init__(self, elements, log: str | None = None):
        self.elements = list(elements)
        self.log = log

    def transform(self, structures):
        rows = np.array([[s.composition.get_atomic_fraction(e) for e in self.elements]
                         for s in structures]).reshape(len(structures), len(self.elements))
        if self.log:
            with Path(self.log).open("a") as f:
                f.write(f"{rows.shape[0]} x {rows.shape[1]}\n")
        return rows


class ShrunkRidge(Surrogate):
    """Bayesian ridge regression on the raw features, with a BoTorch posterior."""

    def __init__(self, random_state=None):
        self.random_state = random_state

    def fit(self, X, y, bounds=None):
        X = np.asarray(X, float)
        self.regressor_ = BayesianRidge().fit(X, np.asarray(y, float))
        self.model_ = BayesianLinearModel(self.regressor_, np.zeros(X.shape[1]),
                                          np.ones(X.shape[1])).eval()
        return self

    def predict(self, X, return_std=False, observation_noise=False):
        return self.regressor_.predict(np.asarray(X, float), return_std=return_std)
