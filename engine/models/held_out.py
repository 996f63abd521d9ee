"""Held-out quality of a fitted GP without fitting it again.

A campaign reports how well the model that picked a round predicts what it has not seen:
RMSE, MAE, Gaussian NLL, the share of results inside its 90 % interval and the
miscalibration area. K-fold cross-validation refits the surrogate once per fold: five
fits that no round uses, which at 500 results cost minutes per round (233 s against 25 s
for the fit itself, ``benchmarks/model_work.py``). An exact GP gives its leave-one-out
predictions in closed form instead (Rasmussen & Williams 2006, sec. 5.4.2): with
``K_y = K + diag(noise)`` and ``alpha = K_y^-1 (y - c)``, the prediction of y_i from the
other points has mean ``y_i - alpha_i / [K_y^-1]_ii`` and variance ``1 / [K_y^-1]_ii``,
one Cholesky factor per hyperparameter sample, which the fit already holds.

The hyperparameters (and the target transform) stay those fitted on all points, so the
estimate is slightly optimistic next to refitting per fold; the points themselves are
held out exactly. A new measurement's noise is the fitted Gaussian level of each sample.
"""

from __future__ import annotations

import numpy as np
import torch

from matforge.engine.models.metrics import uncertainty_metrics

LEVEL = 0.9


def leave_one_out(mixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Each component's prediction of a new measurement at each training input from all the
    other training points: mean and std, two (S, n) tensors in the scale the mixture's
    ``moments`` report (the MAP model's)."""
    with torch.no_grad():
        inverse = torch.cholesky_inverse(mixture._cholesky)  # (S, n, n)
        diagonal = torch.diagonal(inverse, dim1=-2, dim2=-1)  # (S, n)
        mean = mixture.targets - mixture._alpha.squeeze(-1) / diagonal
        own = mixture.noise[:, None] * mixture.noise_scale[None, :]  # the point's own noise
        latent = (1.0 / diagonal - own).clamp_min(1e-12)
        std = (latent + mixture.noise[:, None]).sqrt()
    return mixture._shift + mixture._scale * mean, mixture._scale * std


def gp_held_out(model, y: np.ndarray, level: float = LEVEL) -> dict[str, float] | None:
    """Leave-one-out metrics of a fitted :class:`~matforge.engine.models.gp.GPSurrogate`
    (its training targets ``y`` : (n,), in their own units), or None when it has no exact
    mixture to read them from (the sparse GP)."""
    from matforge.engine.models.gp import mixed_moments, mixture_quantile

    mixture = getattr(model, "mixture_", None)
    if mixture is None:
        return None
    y = np.asarray(y, dtype=float)
    components = leave_one_out(mixture)
    mean, std = model.from_latent(*mixed_moments(*components))
    means, stds = (t.numpy() for t in components)
    inverse = model.y_transform_.inverse
    lower = inverse(mixture_quantile(means, stds, 0.5 - level / 2))
    upper = inverse(mixture_quantile(means, stds, 0.5 + level / 2))
    metrics = uncertainty_metrics(y, mean, np.maximum(std, 1e-12))
    metrics["coverage90"] = float(((y >= lower) & (y <= upper)).mean())
    return {k: float(v) for k, v in metrics.items()}
