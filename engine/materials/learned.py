"""A learned generator: a conditional VAE over compositions, trained on the campaign's results.

Each evaluated candidate is a composition vector (atom fractions over the
campaign's elements) with its objective, ranked to a score in [0, 1] (1: the
best so far, in the campaign's direction). The conditional VAE (Sohn et al.,
NeurIPS 2015) encodes a composition and its score to a small latent space and
decodes a latent point and a score back to fractions. Sampling the prior with
the score set high asks for compositions like the best ones; the decoded
fractions are snapped to whole atom counts of at most ``max_atoms`` atoms, and
placed on a structure by the campaign's decoration generator (alloys) or an
ionic prototype (charge-balanced compositions), so they pass the same checks as
every other candidate.

Training is seeded, small (a few hundred parameters per element) and takes
well under a second per round on one CPU thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Composition, Structure

from matforge.engine.materials.generate import Candidate, DecorationGenerator, Generator
from matforge.engine.materials.structures import composition_of


def snap(fractions: np.ndarray, elements: Sequence[str], max_atoms: int,
         min_fraction: float = 0.05) -> Composition | None:
    """The composition of at most ``max_atoms`` atoms closest to ``fractions`` (elements
    below ``min_fraction`` dropped); None when nothing is left."""
    fractions = np.where(fractions < min_fraction, 0.0, fractions)
    if fractions.sum() <= 0:
        return None
    fractions = fractions / fractions.sum()
    best, best_error = None, np.inf
    for n in range(1, max_atoms + 1):
        counts = np.floor(fractions * n + 0.5).astype(int)
        if counts.sum() == 0:
            continue
        error = np.abs(counts / counts.sum() - fractions).sum()
        if error < best_error - 1e-9:
            best, best_error = counts, error
    present = {e: int(c) for e, c in zip(elements, best) if c}
    divisor = math.gcd(*present.values())
    return Composition({e: c // divisor for e, c in present.items()})


def scores(values: Sequence[float], maximize: bool) -> np.ndarray:
    """Ranks of ``values`` scaled to [0, 1], 1 for the best in the campaign's direction."""
    values = np.asarray(values, float)
    order = np.argsort(np.argsort(values if maximize else -values))
    return order / max(1, len(values) - 1)


class CompositionCVAE:
    """A conditional VAE of composition fractions given a score (torch, CPU).

    Parameters
    ----------
    n_elements : length of a composition vector
    latent : latent dimensions
    hidden : width of the encoder's and decoder's hidden layer
    beta : weight of the KL term
    """

    def __init__(self, n_elements: int, latent: int = 2, hidden: int = 32, beta: float = 0.5,
                 seed: int = 0):
        import torch

        torch.manual_seed(seed)
        self.latent, self.beta = latent, beta
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(n_elements + 1, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, 2 * latent))
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(latent + 1, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, n_elements))

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 400, lr: float = 1e-2
            ) -> CompositionCVAE:
        """Train on fractions ``x`` (n, n_elements) and scores ``y`` (n,)."""
        import torch

        x_t = torch.as_tensor(x, dtype=torch.float32)
        y_t = torch.as_tensor(y, dtype=torch.float32)[:, None]
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=lr)
        for _ in range(epochs):
            optimizer.zero_grad()
            mean, log_var = self.encoder(torch.cat([x_t, y_t], 1)).chunk(2, dim=1)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
            logits = self.decoder(torch.cat([z, y_t], 1))
            reconstruction = -(x_t * torch.log_softmax(logits, 1)).sum(1).mean()
            kl = -0.5 * (1 + log_var - mean**2 - log_var.exp()).sum(1).mean()
            (reconstruction + self.beta * kl).backward()
            optimizer.step()
        return self

    def sample(self, n: int, score: float, rng: np.random.Generator,
               temperature: float = 1.0) -> np.ndarray:
        """``n`` composition vectors decoded from the prior at ``score``."""
        import torch

        z = torch.as_tensor(rng.standard_normal((n, self.latent)) * temperature,
                            dtype=torch.float32)
        y = torch.full((n, 1), float(score))
        with torch.no_grad():
            return torch.softmax(self.decoder(torch.cat([z, y], 1)), 1).numpy()


class LearnedGenerator(Generator):
    """Compositions from a conditional VAE trained each round on the campaign's results,
    sampled at a high score (``target``), placed on structures.

    Before :meth:`fit` has seen ``min_results`` results it proposes nothing (the other
    generators fill the pool).

    Parameters
    ----------
    elements : the campaign's elements
    max_atoms : most atoms in a snapped composition's cell
    target : the score samples are asked for (1: as good as the best so far)
    min_results : results needed before it proposes
    lattices, max_species : passed to the decoration generator that places alloys
    candidates : ``composition`` in a campaign of compositions: the snapped compositions
        themselves, not placed on a lattice
    """

    name = "learned"
    trainable = True
    makes = ("structure", "composition")

    def __init__(self, elements: Sequence[str], max_atoms: int = 16, target: float = 1.0,
                 min_results: int = 8, lattices: Sequence[str] = ("fcc", "bcc", "hcp"),
                 max_species: int = 3, candidates: str = "structure"):
        if not 0.0 <= float(target) <= 1.5:
            raise ValueError(f"target: a score in [0, 1.5], got {target}")
        self.elements = list(elements)
        self.max_atoms = int(max_atoms)
        self.target = float(target)
        self.min_results = int(min_results)
        self.decorator = DecorationGenerator(self.elements, lattices, self.max_atoms, max_species)
        self.candidates = candidates
        self.model: CompositionCVAE | None = None

    def vectors(self, structures: Sequence[Structure]) -> np.ndarray:
        """Atom fractions over the campaign's elements."""
        index = {e: i for i, e in enumerate(self.elements)}
        x = np.zeros((len(structures), len(self.elements)))
        for row, structure in enumerate(structures):
            for element, fraction in composition_of(structure).fractional_composition.items():
                x[row, index[element.symbol]] = fraction
        return x

    def fit(self, structures: Sequence[Structure], values: Sequence[float], maximize: bool,
            seed: int = 0) -> LearnedGenerator:
        """Train on evaluated structures and their objective values; returns self."""
        if len(structures) < self.min_results:
            self.model = None
            return self
        self.model = CompositionCVAE(len(self.elements), seed=seed).fit(
            self.vectors(structures), scores(values, maximize))
        return self

    def compositions(self, n: int, rng: np.random.Generator) -> list[Composition]:
        """Up to ``n`` snapped compositions sampled at the target score."""
        if self.model is None:
            return []
        out = []
        for fractions in self.model.sample(n, self.target, rng):
            composition = snap(fractions, self.elements, self.max_atoms)
            if composition is not None and len(composition) >= 2:
                out.append(composition)
        return out

    def propose(self, n, rng, parents=()) -> list[Candidate]:
        """Up to ``n`` candidates (none before :meth:`fit` has enough results)."""
        if self.candidates == "composition":
            return [Candidate(c, self.name) for c in self.compositions(n, rng)]
        out = []
        for composition in self.compositions(n, rng):
            try:
                candidate = self.decorator.decorate(composition, rng)
            except ValueError:  # no supercell holds it
                continue
            out.append(Candidate(candidate.structure, f"{self.name}:{candidate.generator}"))
        return out

