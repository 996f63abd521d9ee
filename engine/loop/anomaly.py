"""Anomaly flagging with DBSCAN over features and surrogate residuals.

A result the surrogate did not expect (large standardized residual) or that
sits far from every other result in feature space ends up as DBSCAN noise and
is held back for a person to review before it can enter training.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import DBSCAN
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors


def residual_scores(observed: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardized residuals (observed - mean) / std; 0 where there was no prediction.

    All arguments are arrays of shape (n_results,); missing predictions are NaN.
    """
    observed, mean, std = (np.asarray(a, dtype=float) for a in (observed, mean, std))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (observed - mean) / np.maximum(std, 1e-9)
    return np.where(np.isfinite(z), z, 0.0)


def flag_anomalies(X: np.ndarray, residuals: np.ndarray, **settings) -> np.ndarray:
    """Mark results that DBSCAN leaves as noise: ``cluster_labels(...) == -1``.

    Returns
    -------
    flagged : bool array of shape (n_results,)
    """
    return cluster_labels(X, residuals, **settings) == -1


def cluster_labels(
    X: np.ndarray,
    residuals: np.ndarray,
    *,
    eps: float | str = "auto",
    min_samples: int = 4,
    eps_quantile: float = 0.98,
    n_components: int = 4,
    residual_weight: float = 1.0,
) -> np.ndarray:
    """DBSCAN's cluster of each result over principal components of the features and the
    surrogate's residual (-1: noise, an anomaly).

    Parameters
    ----------
    X : array of shape (n_results, n_features), standardized features
    residuals : array of shape (n_results,), standardized surrogate residuals
    eps : DBSCAN radius, or "auto" for the ``eps_quantile`` quantile of the
        distances to each point's ``min_samples``-th neighbour
    n_components : principal components of X kept (DBSCAN needs few dimensions)
    residual_weight : how strongly the residual counts against the features

    Returns
    -------
    labels : int array of shape (n_results,); all 0 when there are too few results
    """
    X = np.asarray(X, dtype=float)
    n = len(X)
    if n <= min_samples:
        return np.zeros(n, dtype=int)
    k = min(n_components, X.shape[1], n - 1)
    Z = PCA(n_components=k, random_state=0).fit_transform(X) if k > 0 else np.zeros((n, 0))
    scale = Z.std(axis=0).mean() if k > 0 and Z.std() > 0 else 1.0
    Z = Z / scale
    Z = np.column_stack([Z, residual_weight * np.asarray(residuals, dtype=float)])
    if eps == "auto":
        dist, _ = NearestNeighbors(n_neighbors=min_samples).fit(Z).kneighbors(Z)
        eps = float(np.quantile(dist[:, -1], eps_quantile))
        if eps <= 0:
            return np.zeros(n, dtype=int)
    return DBSCAN(eps=float(eps), min_samples=min_samples).fit_predict(Z)
