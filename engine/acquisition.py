"""Batch selection over a discrete candidate pool by Bayesian optimization."""

from __future__ import annotations

import numpy as np
import torch
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.optim import optimize_acqf_discrete

from matforge.engine.surrogate import as_tensor


def diverse_random_batch(X: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``batch_size`` rows of X spread over feature space.

    The first row is uniform at random; each next one is drawn with probability
    proportional to its squared distance to the rows already picked (k-means++
    seeding), so the batch is random but not clumped.

    Parameters
    ----------
    X : array of shape (n_candidates, n_features)
    """
    n = len(X)
    batch_size = min(batch_size, n)
    picked = [int(rng.integers(n))]
    d2 = ((X - X[picked[0]]) ** 2).sum(axis=1)
    while len(picked) < batch_size:
        total = d2.sum()
        if total <= 0:
            rest = np.setdiff1d(np.arange(n), picked)
            picked.append(int(rng.choice(rest)))
        else:
            picked.append(int(rng.choice(n, p=d2 / total)))
        d2 = np.minimum(d2, ((X - X[picked[-1]]) ** 2).sum(axis=1))
    return np.asarray(picked)


def select_batch(
    surrogate,
    X_pool: np.ndarray,
    y_train: np.ndarray,
    batch_size: int,
    maximize: bool = True,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose a batch from the pool with qLogExpectedImprovement.

    Parameters
    ----------
    surrogate : fitted surrogate exposing a BoTorch model as ``model_``
    X_pool : array of shape (n_candidates, n_features)
    y_train : array of shape (n_train,), the observed objective values
    batch_size : number of candidates to pick
    maximize : whether larger objective values are better

    Returns
    -------
    indices : array of shape (batch_size,), rows of X_pool in the order picked
    values : array of shape (batch_size,), the acquisition value of each pick
    """
    if seed is not None:
        torch.manual_seed(seed)
    model = surrogate.model_
    y = np.asarray(y_train, dtype=float)
    best = y.max() if maximize else y.min()
    if not maximize:
        from botorch.acquisition.objective import LinearMCObjective

        objective = LinearMCObjective(weights=torch.tensor([-1.0], dtype=torch.float64))
        best = -best
    else:
        objective = None
    acqf = qLogExpectedImprovement(model=model, best_f=float(best), objective=objective)
    choices = as_tensor(X_pool)
    batch_size = min(batch_size, len(choices))
    candidates, _ = optimize_acqf_discrete(acqf, q=batch_size, choices=choices, unique=True)
    indices = []
    for row in candidates:
        match = torch.where((choices == row).all(dim=-1))[0]
        indices.append(int(next(i for i in match.tolist() if i not in indices)))
    with torch.no_grad():
        values = acqf(choices[indices].unsqueeze(1)).numpy()
    return np.asarray(indices), values
