"""Pools too large to hold: candidates generated, featurized and scored in chunks.

A generator can propose ten million compositions; their features alone would
take gigabytes. :func:`stream_top_k` scores each chunk with a fitted surrogate
as it comes and keeps only the ``k`` best rows (their stream positions, scores,
predictions, features and the candidates themselves), so memory is one chunk
plus ``k`` rows. :func:`predict_stream` keeps every row's mean and standard
deviation instead (16 bytes a row) and never the features.

The score of a row must not depend on the rest of the pool, so ``ptop``, whose
threshold comes from all rows, cannot stream; the default score is the upper
confidence bound of a new measurement, which bounds every acquisition that
rewards a high mean and a wide spread. A common use: stream the top few
thousand by that bound, then pick a batch among them with the campaign's
strategy (:meth:`~matforge.engine.acquisition.strategy.Strategy.select`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from matforge.engine.models.base import Surrogate
from matforge.engine.validation import positive_int

SCORES = ("ucb", "mean", "std")
"""Built-in scores of :func:`stream_top_k`."""


@dataclass
class TopK:
    """The ``k`` best rows of a streamed pool, best first.

    Arrays have shape (k,), ``X`` (k, n_features); ``items`` holds the
    candidates themselves where the stream carried raw candidates (``featurize``
    given), else None. ``n_seen`` counts the rows scored, ``chunks`` the chunks.
    """

    indices: np.ndarray
    scores: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    X: np.ndarray
    items: list[Any] | np.ndarray | None = None
    n_seen: int = 0
    chunks: int = 0


def _take(items, rows: np.ndarray):
    if isinstance(items, np.ndarray):
        return items[rows]
    return [items[int(i)] for i in rows]


def _concat(parts):
    if parts and isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [x for part in parts for x in part]


def _score_function(score, beta: float, maximize: bool) -> Callable:
    if callable(score):
        return score
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES} or a callable, got {score!r}")
    sign = 1.0 if maximize else -1.0
    if score == "mean":
        return lambda mean, std: sign * mean
    if score == "std":
        return lambda mean, std: std
    return lambda mean, std: sign * mean + beta**0.5 * std


def best_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first; ties in order of position (as a
    stable sort of the whole array); NaN scores last."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    k = min(int(k), len(scores))
    if k == 0:
        return np.zeros(0, dtype=int)
    if k < len(scores):
        cut = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= cut)
    else:
        candidates = np.arange(len(scores))
    order = np.argsort(-scores[candidates], kind="stable")
    return candidates[order][:k]


def stream_top_k(
    surrogate: Surrogate,
    chunks: Iterable[Any],
    k: int,
    *,
    featurize: Callable[[Any], np.ndarray] | None = None,
    score: str | Callable[[np.ndarray, np.ndarray], np.ndarray] = "ucb",
    beta: float = 1.0,
    maximize: bool = True,
    observation_noise: bool = True,
) -> TopK:
    """The ``k`` best-scoring rows of a pool that arrives in chunks.

    Parameters
    ----------
    surrogate : fitted; each chunk's rows get ``surrogate.predict(X, return_std=True)``
    chunks : iterable of feature arrays of shape (n_rows, n_features), or of raw
        candidates (any sequence or array) when ``featurize`` is given
    k : rows to keep
    featurize : maps one chunk of raw candidates to its features, (n_rows, n_features)
    score : "ucb" (default): mean + sqrt(beta) * std of a new measurement (mean
        negated when minimizing); "mean"; "std"; or ``score(mean, std) -> (n_rows,)``,
        larger is better. In the units of y.
    beta : exploration weight of "ucb"
    maximize : whether larger objective values are better
    observation_noise : whether std includes the noise of a new measurement

    Returns
    -------
    :class:`TopK`, the same rows, in the same order, as the ``k`` best of the
    whole pool scored at once (ties broken by stream position).
    """
    k = positive_int("k", k)
    score_of = _score_function(score, beta, maximize)
    kept: dict[str, Any] | None = None
    seen = n_chunks = 0
    for chunk in chunks:
        X = np.asarray(featurize(chunk) if featurize is not None else chunk, dtype=float)
        if X.ndim != 2:
            raise ValueError(f"a chunk's features must have shape (n_rows, n_features), "
                             f"got {X.shape}")
        n_chunks += 1
        if len(X) == 0:
            continue
        mean, std = surrogate.predict(X, return_std=True, observation_noise=observation_noise)
        scores = np.asarray(score_of(mean, std), dtype=float)
        if scores.shape != (len(X),):
            raise ValueError(f"score returned shape {scores.shape} for {len(X)} rows")
        new = {"indices": seen + np.arange(len(X)), "scores": scores, "mean": mean, "std": std,
               "X": X, "items": chunk if featurize is not None else None}
        seen += len(X)
        # earlier rows first, so a stable ranking breaks ties by stream position
        if kept is not None:
            new = {key: (None if new[key] is None else _concat([kept[key], new[key]]))
                   for key in new}
        rows = best_rows(new["scores"], k)
        kept = {key: (None if value is None else _take(value, rows))
                for key, value in new.items()}
    if kept is None:
        raise ValueError("the stream held no rows")
    return TopK(kept["indices"], kept["scores"], kept["mean"], kept["std"], kept["X"],
                kept["items"], seen, n_chunks)


def predict_stream(
    surrogate: Surrogate,
    chunks: Iterable[Any],
    *,
    featurize: Callable[[Any], np.ndarray] | None = None,
    observation_noise: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every row of a pool that arrives in chunks, two arrays
    of shape (n_rows,); the features of one chunk at a time are held, never the pool's."""
    means, stds = [], []
    for chunk in chunks:
        X = np.asarray(featurize(chunk) if featurize is not None else chunk, dtype=float)
        if len(X) == 0:
            continue
        mean, std = surrogate.predict(X, return_std=True, observation_noise=observation_noise)
        means.append(np.asarray(mean, dtype=float))
        stds.append(np.asarray(std, dtype=float))
    if not means:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(means), np.concatenate(stds)
