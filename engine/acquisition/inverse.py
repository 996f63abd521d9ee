"""Inverse design over continuous composition, snapped back to whole-atom stoichiometries.

A surrogate fitted on element-fraction features (one column per element, rows
summing to one) is searched as a function on the simplex: BoTorch
``optimize_acqf`` maximizes the acquisition over x in [0, 1]^d subject to
sum(x) = 1. Each optimal fraction vector is then rounded to integer atom counts
(:func:`snap_to_stoichiometry`) and decorated onto a supercell of matching size
(:meth:`DecorationGenerator.decorate`), so the proposals can join a round's pool
(:func:`composition_candidates`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.acquisition.monte_carlo import qUpperConfidenceBound
from botorch.acquisition.objective import GenericMCObjective
from botorch.optim import optimize_acqf
from pymatgen.core import Composition, Element

from matforge.engine.materials.dedup import StructureIndex
from matforge.engine.materials.generate import Candidate, DecorationGenerator
from matforge.engine.models.gp import DTYPE
from matforge.engine.validation import positive_int

INVERSE_ACQUISITIONS = ("qlogei", "ucb")
"""Acquisitions :func:`optimize_fractions` can maximize."""


def _check_elements(elements: Sequence[str]) -> list[str]:
    elements = list(elements)
    if not elements:
        raise ValueError("elements is empty")
    unknown = [e for e in elements if not Element.is_valid_symbol(e)]
    if unknown:
        raise ValueError(f"unknown element symbols: {unknown}")
    if len(set(elements)) != len(elements):
        raise ValueError(f"elements has repeats: {elements}")
    return elements


def largest_remainder_counts(fractions: np.ndarray, total: int) -> np.ndarray:
    """Whole counts summing to ``total`` closest to ``fractions * total``.

    Each entry gets the floor of its share; the atoms left over go to the entries
    with the largest remainders (Hamilton's method).

    Parameters
    ----------
    fractions : array of shape (n_elements,), non-negative, summing to one
    total : number of atoms

    Returns
    -------
    counts : integer array of shape (n_elements,)
    """
    share = np.asarray(fractions, dtype=float) * total
    counts = np.floor(share).astype(int)
    left = total - int(counts.sum())
    if left > 0:
        order = np.argsort(-(share - counts), kind="stable")
        counts[order[:left]] += 1
    return counts


def snap_to_stoichiometry(
    fractions: np.ndarray,
    max_atoms: int,
    elements: Sequence[str],
    totals: Iterable[int] | None = None,
    max_species: int | None = None,
) -> list[Composition]:
    """Round fraction vectors to whole-number compositions of at most ``max_atoms`` atoms.

    For every allowed total N the counts come from largest-remainder rounding of
    ``fractions * N``; the N whose counts / N lie closest to the fractions (L1
    distance) wins, the smallest N on a tie, so 0.5/0.5 becomes AB and not A2B2.
    Vectors that are all zero are dropped, and so are repeats of a composition
    already returned (compared by reduced formula).

    Parameters
    ----------
    fractions : array of shape (n_vectors, n_elements) or (n_elements,),
        non-negative; each row is normalized to sum to one
    max_atoms : largest total number of atoms
    elements : symbol of each column
    totals : allowed totals (e.g. :func:`supported_totals` of a generator);
        default 1 .. max_atoms. Totals above ``max_atoms`` are ignored
    max_species : keep only this many of the largest fractions before rounding

    Returns
    -------
    compositions : list of at most n_vectors pymatgen ``Composition``
    """
    elements = _check_elements(elements)
    max_atoms = positive_int("max_atoms", max_atoms)
    F = np.asarray(fractions, dtype=float)
    if F.ndim == 1:
        F = F[None, :]
    if F.ndim != 2 or F.shape[1] != len(elements):
        raise ValueError(
            f"fractions has shape {np.shape(fractions)} but there are {len(elements)} elements"
        )
    if not np.isfinite(F).all() or (F < 0).any():
        raise ValueError("fractions must be finite and non-negative")
    allowed = sorted({int(t) for t in (totals if totals is not None else range(1, max_atoms + 1))})
    allowed = [t for t in allowed if 1 <= t <= max_atoms]
    if not allowed:
        raise ValueError(f"no allowed total between 1 and max_atoms={max_atoms}: {totals!r}")
    if max_species is not None and max_species < 1:
        raise ValueError(f"max_species must be >= 1, got {max_species!r}")
    out: list[Composition] = []
    seen: set[str] = set()
    for f in F:
        if f.sum() <= 0:
            continue
        if max_species is not None and np.count_nonzero(f) > max_species:
            keep = np.argsort(-f, kind="stable")[:max_species]
            f = np.where(np.isin(np.arange(len(f)), keep), f, 0.0)
        f = f / f.sum()
        best, best_error = None, np.inf
        for total in allowed:
            counts = largest_remainder_counts(f, total)
            error = float(np.abs(counts / total - f).sum())
            if error < best_error - 1e-12:
                best, best_error = counts, error
        comp = Composition({e: int(c) for e, c in zip(elements, best) if c > 0})
        key = comp.reduced_formula
        if key not in seen:
            seen.add(key)
            out.append(comp)
    return out


def optimize_fractions(
    surrogate,
    n_elements: int,
    y_train: np.ndarray,
    n: int,
    maximize: bool = True,
    seed: int | None = None,
    *,
    kind: str = "qlogei",
    beta: float = 2.0,
    num_restarts: int = 8,
    raw_samples: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Best element-fraction vectors on the simplex by continuous acquisition optimization.

    BoTorch ``optimize_acqf`` over [0, 1]^d with the equality constraint
    sum(x) = 1 (SLSQP from the best of ``raw_samples`` uniform simplex points),
    building the batch one point at a time, each conditioned on the earlier ones
    as pending.

    Parameters
    ----------
    surrogate : fitted surrogate whose ``model_`` takes the fraction columns
    n_elements : d, the number of fraction columns
    y_train : array of shape (n_train,), observed objective values
    n : number of fraction vectors to propose
    maximize : whether larger objective values are better
    seed : seeds the Monte-Carlo sampler and the random restarts; the global torch
        random state is left as it was
    kind : ``"qlogei"`` or ``"ucb"``
    beta : exploration weight of ``ucb``
    num_restarts, raw_samples : multi-start settings of ``optimize_acqf``

    Returns
    -------
    fractions : array of shape (n, n_elements), rows on the simplex
    values : array of shape (n,), acquisition value of each row given the earlier ones
    """
    if kind not in INVERSE_ACQUISITIONS:
        raise ValueError(
            f"unknown acquisition kind {kind!r}; known kinds: {', '.join(INVERSE_ACQUISITIONS)}"
        )
    positive_int("n", n)
    model = surrogate.botorch_model()
    n_features = getattr(surrogate, "n_features_in_", n_elements)
    if n_features != n_elements:
        raise ValueError(
            f"the surrogate was fitted on {n_features} features but there are {n_elements} "
            "elements; inverse design needs a surrogate on element fractions only"
        )
    sign = 1.0 if maximize else -1.0
    objective = GenericMCObjective(lambda Y, X=None: sign * Y[..., 0])
    d = int(n_elements)
    bounds = torch.stack([torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE)])
    simplex = [(torch.arange(d), torch.ones(d, dtype=DTYPE), 1.0)]
    rng = np.random.default_rng(seed)
    picked, values = [], []
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        if kind == "qlogei":
            y = np.asarray(y_train, dtype=float).ravel()
            y = y[np.isfinite(y)]
            if y.size == 0:
                raise ValueError("y_train holds no finite value; qlogei needs the best observed")
            best_units = np.array([y.max() if maximize else y.min()])
            best = sign * float(surrogate.to_model_scale(best_units)[0])
            acqf = qLogExpectedImprovement(model, best_f=float(best), objective=objective)
        else:
            acqf = qUpperConfidenceBound(model, beta=beta, objective=objective)
        for _ in range(int(n)):
            # Uniform Dirichlet draws start the restarts: exact simplex samples, far cheaper
            # than BoTorch's hit-and-run polytope sampler for an equality-constrained box.
            raw = torch.as_tensor(rng.dirichlet(np.ones(d), size=raw_samples), dtype=DTYPE)
            with torch.no_grad():
                start_values = acqf(raw.unsqueeze(-2))
            top = torch.argsort(start_values, descending=True)[:num_restarts]
            x, value = optimize_acqf(
                acqf,
                bounds=bounds,
                q=1,
                num_restarts=len(top),
                batch_initial_conditions=raw[top].unsqueeze(-2),
                equality_constraints=simplex,
            )
            picked.append(x.detach())
            values.append(float(value))
            acqf.set_X_pending(torch.cat(picked, dim=0))
    X = torch.cat(picked, dim=0)
    fractions = X.detach().clamp(0.0, 1.0).numpy()
    fractions = fractions / fractions.sum(axis=1, keepdims=True)
    return fractions, np.asarray(values, dtype=float)


def optimize_composition(
    surrogate,
    elements: Sequence[str],
    y_train: np.ndarray,
    n: int,
    maximize: bool = True,
    max_atoms: int = 16,
    seed: int | None = None,
    *,
    kind: str = "qlogei",
    beta: float = 2.0,
    totals: Iterable[int] | None = None,
    max_species: int | None = None,
    num_restarts: int = 8,
    raw_samples: int = 256,
) -> list[Composition]:
    """Whole-number compositions the surrogate rates best, at most ``n`` of them.

    :func:`optimize_fractions` on the simplex, then :func:`snap_to_stoichiometry`;
    fraction vectors that round to the same composition give one entry, so fewer
    than ``n`` may come back.

    Parameters
    ----------
    surrogate : fitted on X : (n_train, len(elements)), the element fractions
    elements : symbol of each feature column
    y_train : array of shape (n_train,), observed objective values
    n : number of fraction vectors to optimize
    maximize : whether larger objective values are better
    max_atoms : largest number of atoms in a composition
    seed, kind, beta, num_restarts, raw_samples : as in :func:`optimize_fractions`
    totals, max_species : as in :func:`snap_to_stoichiometry`
    """
    elements = _check_elements(elements)
    max_atoms = positive_int("max_atoms", max_atoms)
    fractions, _ = optimize_fractions(
        surrogate, len(elements), y_train, n, maximize, seed,
        kind=kind, beta=beta, num_restarts=num_restarts, raw_samples=raw_samples,
    )
    return snap_to_stoichiometry(fractions, max_atoms, elements, totals, max_species)


def supported_totals(decorator: DecorationGenerator) -> list[int]:
    """Atom counts :meth:`DecorationGenerator.decorate` can place: divisors of its cell sizes."""
    sizes = decorator.site_counts
    return [t for t in range(1, decorator.max_atoms + 1) if any(s % t == 0 for s in sizes)]


def composition_candidates(
    compositions: Iterable[Composition],
    decorator: DecorationGenerator | None,
    rng: np.random.Generator,
    exclude: Iterable[str] | StructureIndex = (),
) -> list[Candidate]:
    """One decorated structure per composition, for a round's candidate pool; without a
    ``decorator`` (a campaign of compositions) the compositions themselves
    (``"inverse:composition"``).

    Structures seen in ``exclude`` (fingerprints, or a
    :class:`~matforge.engine.materials.dedup.StructureIndex`, to which new ones are added)
    or repeating one returned earlier are left out. Generator label: ``"inverse:<lattice>"``.
    """
    index = exclude if isinstance(exclude, StructureIndex) else StructureIndex(exclude)
    out = []
    for comp in compositions:
        if decorator is None:
            out.append(Candidate(comp, "inverse:composition"))
            if not index.add(comp, out[-1].fingerprint):
                out.pop()
            continue
        cand = decorator.decorate(comp, rng)
        if not index.add(cand.structure, cand.fingerprint):
            continue
        cand.generator = cand.generator.replace(decorator.name, "inverse", 1)
        out.append(cand)
    return out
