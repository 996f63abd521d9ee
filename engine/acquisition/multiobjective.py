"""Several objectives at once: Pareto fronts, hypervolume and batch selection by qLogNEHVI.

Every function takes ``maximize``, one flag per objective (or one flag for all),
and internally flips the sign of minimized objectives so BoTorch sees a pure
maximization problem. Values handed back are in the caller's units and signs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
from botorch.models import ModelListGP
from botorch.models.gpytorch import GPyTorchModel
from botorch.models.model import Model
from botorch.optim import optimize_acqf, optimize_acqf_discrete
from botorch.posteriors.gpytorch import GPyTorchPosterior
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning
from botorch.utils.multi_objective.hypervolume import infer_reference_point
from botorch.utils.multi_objective.pareto import is_non_dominated
from gpytorch.distributions import MultitaskMultivariateNormal

from matforge.engine.acquisition.batch import _rows_to_indices, rows_not_pending
from matforge.engine.models.gp import DTYPE, as_tensor
from matforge.engine.validation import positive_int


def _signs(maximize: bool | Sequence[bool], n_objectives: int) -> np.ndarray:
    """+1 for each maximized objective, -1 for each minimized one, shape (n_objectives,)."""
    flags = np.atleast_1d(np.asarray(maximize, dtype=bool))
    if flags.size == 1:
        flags = np.repeat(flags, n_objectives)
    if flags.size != n_objectives:
        raise ValueError(f"maximize has {flags.size} flags but there are {n_objectives} objectives")
    return np.where(flags, 1.0, -1.0)


def _objectives(Y, name: str = "Y") -> np.ndarray:
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 2 or Y.shape[1] < 1:
        raise ValueError(
            f"{name} must be a 2-D array (n_points, n_objectives), got shape {Y.shape}"
        )
    if not np.isfinite(Y).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return Y


def pareto_mask(Y: np.ndarray, maximize: bool | Sequence[bool] = True) -> np.ndarray:
    """Which rows of Y no other row dominates.

    Parameters
    ----------
    Y : array of shape (n_points, n_objectives)
    maximize : one flag per objective, or one for all

    Returns
    -------
    mask : boolean array of shape (n_points,); rows that tie on every objective
        with a non-dominated row are all marked
    """
    Y = _objectives(Y)
    if len(Y) == 0:
        return np.zeros(0, dtype=bool)
    signed = as_tensor(Y * _signs(maximize, Y.shape[1]))
    return is_non_dominated(signed, deduplicate=False).numpy()


def hypervolume(
    Y: np.ndarray, ref_point: Sequence[float], maximize: bool | Sequence[bool] = True
) -> float:
    """Volume of objective space dominated by Y and bounded by ``ref_point``.

    Points that are not better than ``ref_point`` in every objective add nothing.

    Parameters
    ----------
    Y : array of shape (n_points, n_objectives)
    ref_point : array of shape (n_objectives,), in the units and signs of Y
    maximize : one flag per objective, or one for all
    """
    Y = _objectives(Y)
    ref = np.asarray(ref_point, dtype=float).ravel()
    if ref.shape != (Y.shape[1],) or not np.isfinite(ref).all():
        raise ValueError(f"ref_point must hold {Y.shape[1]} finite values, got {ref_point!r}")
    signs = _signs(maximize, Y.shape[1])
    signed = Y * signs
    signed = signed[(signed > ref * signs).all(axis=1)]
    if len(signed) == 0:
        return 0.0
    partitioning = DominatedPartitioning(ref_point=as_tensor(ref * signs), Y=as_tensor(signed))
    return float(partitioning.compute_hypervolume())


def default_ref_point(Y_train: np.ndarray, maximize: bool | Sequence[bool] = True) -> np.ndarray:
    """A reference point from observed data: the Pareto front's nadir pushed back by 10 %.

    In each objective it is the worst value on the observed Pareto front, moved
    further from the front by a tenth of the front's range in that objective
    (BoTorch's ``infer_reference_point``, after Ishibuchi et al. 2011), so every
    front point, its extremes included, contributes hypervolume.

    Parameters
    ----------
    Y_train : array of shape (n_train, n_objectives)
    maximize : one flag per objective, or one for all

    Returns
    -------
    ref_point : array of shape (n_objectives,), in the units and signs of Y_train
    """
    Y = _objectives(Y_train, "Y_train")
    if len(Y) == 0:
        raise ValueError("Y_train is empty; a reference point needs observed values")
    signs = _signs(maximize, Y.shape[1])
    signed = as_tensor(Y * signs)
    front = signed[is_non_dominated(signed)]
    return infer_reference_point(front).numpy() * signs


def _ref_in_model_scale(surrogates, ref: np.ndarray) -> np.ndarray:
    """The reference point in the scale the models predict (per-objective target transforms)."""
    surrogates = list(surrogates) if isinstance(surrogates, (list, tuple)) else [surrogates]
    if len(surrogates) != len(ref):
        return ref
    return np.array([s.to_model_scale(ref[j : j + 1])[0] for j, s in enumerate(surrogates)])


class IndependentOutputs(Model):
    """Single-output BoTorch models side by side as one model with an output each.

    For models ``ModelListGP`` cannot hold (a sparse GP,
    :class:`~matforge.engine.models.sparse.SparseGP`, has no GPyTorch likelihood):
    the posterior at ``batch x q x d`` inputs is the multitask normal of the
    models' independent joint normals, as ``ModelListGP`` gives it for exact GPs.
    """

    def __init__(self, models):
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    @property
    def num_outputs(self) -> int:
        return len(self.models)

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def posterior(self, X, output_indices=None, observation_noise=False, posterior_transform=None,
                  **kwargs) -> GPyTorchPosterior:
        models = [self.models[i] for i in (output_indices or range(len(self.models)))]
        normals = [m.posterior(X, observation_noise=observation_noise).distribution
                   for m in models]
        posterior = GPyTorchPosterior(MultitaskMultivariateNormal.from_independent_mvns(normals))
        return posterior if posterior_transform is None else posterior_transform(posterior)


def _joint_model(surrogates, n_objectives: int):
    surrogates = list(surrogates) if isinstance(surrogates, (list, tuple)) else [surrogates]
    models = [s.botorch_model() for s in surrogates]
    n_outputs = sum(m.num_outputs for m in models)
    if n_outputs != n_objectives:
        raise ValueError(
            f"the surrogates have {n_outputs} outputs in all but Y_train has {n_objectives} "
            "objectives; give one single-output surrogate per objective or one multi-output one"
        )
    if len(models) == 1:
        return models[0]
    if all(isinstance(m, GPyTorchModel) for m in models):
        return ModelListGP(*models)
    return IndependentOutputs(models)


def _check_ref_point(ref_point, Y: np.ndarray, maximize) -> np.ndarray:
    ref = default_ref_point(Y, maximize) if ref_point is None else np.asarray(ref_point, float)
    if ref.shape != (Y.shape[1],) or not np.isfinite(ref).all():
        raise ValueError(f"ref_point must hold {Y.shape[1]} finite values, got {ref_point!r}")
    return ref


def _check_pending(pending, n_features: int) -> np.ndarray | None:
    if pending is None:
        return None
    pending = np.asarray(pending, dtype=float)
    if pending.ndim != 2 or pending.shape[1] != n_features or not np.isfinite(pending).all():
        raise ValueError(
            f"pending must be a finite array of shape (n, {n_features}), got shape {pending.shape}"
        )
    return pending if len(pending) else None


def _check_training(Y_train, X_train, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    Y = _objectives(Y_train, "Y_train")
    X = np.asarray(X_train, dtype=float)
    if X.shape != (len(Y), n_features) or not np.isfinite(X).all():
        raise ValueError(
            f"X_train has shape {X.shape}; expected finite values of shape "
            f"({len(Y)}, {n_features}) to match Y_train and the candidates"
        )
    return Y, X


def _log_nehvi(model, ref_signed, signs, X_train, pending, num_samples: int, seed):
    """qLogNEHVI on sign-flipped (all maximized) objectives."""
    return qLogNoisyExpectedHypervolumeImprovement(
        model=model,
        ref_point=torch.as_tensor(ref_signed, dtype=DTYPE),
        X_baseline=as_tensor(X_train),
        sampler=SobolQMCNormalSampler(torch.Size([num_samples]), seed=seed),
        objective=WeightedMCMultiOutputObjective(torch.as_tensor(signs, dtype=DTYPE)),
        X_pending=None if pending is None else as_tensor(pending),
        prune_baseline=True,
    )


def select_pareto_batch(
    surrogates,
    X_pool: np.ndarray,
    Y_train: np.ndarray,
    X_train: np.ndarray,
    batch_size: int,
    ref_point: Sequence[float] | None = None,
    maximize: bool | Sequence[bool] = (True, True),
    seed: int | None = None,
    pending: np.ndarray | None = None,
    num_samples: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose a batch from the pool by qLogNoisyExpectedHypervolumeImprovement.

    The batch is built by sequential greedy conditioning over the pool
    (``optimize_acqf_discrete``); pending evaluations and earlier picks are
    fantasized into the baseline, so the batch spreads along the front.

    Parameters
    ----------
    surrogates : one fitted single-output surrogate per objective (combined in a
        ``ModelListGP``, or :class:`IndependentOutputs` where one is no GPyTorch
        model), or one surrogate whose ``model_`` has an output per objective
    X_pool : array of shape (n_candidates, n_features)
    Y_train : array of shape (n_train, n_objectives), observed values; used only
        for the default reference point
    X_train : array of shape (n_train, n_features), the evaluated rows (baseline)
    batch_size : number of candidates to pick (fewer when fewer rows are available)
    ref_point : array of shape (n_objectives,) in the units of Y_train; the
        hypervolume counts only what is better than it. Default:
        :func:`default_ref_point` of Y_train. Each coordinate is mapped to its
        model's scale by the surrogate's ``to_model_scale``
    maximize : one flag per objective, or one for all
    seed : seeds the quasi-Monte-Carlo sampler; the global torch random state is
        left as it was
    pending : array of shape (n_pending, n_features), rows still being evaluated;
        pool rows equal to one are never picked
    num_samples : quasi-Monte-Carlo samples of the posterior

    Returns
    -------
    indices : array of shape (batch_size,), rows of X_pool in the order picked
    values : array of shape (batch_size,), the log hypervolume improvement of
        each pick given the earlier picks and the pending rows
    """
    positive_int("batch_size", batch_size)
    X_pool = np.asarray(X_pool, dtype=float)
    if X_pool.ndim != 2 or len(X_pool) == 0 or not np.isfinite(X_pool).all():
        raise ValueError(f"X_pool must be a non-empty finite 2-D array, got shape {X_pool.shape}")
    Y, X_train = _check_training(Y_train, X_train, X_pool.shape[1])
    signs = _signs(maximize, Y.shape[1])
    model = _joint_model(surrogates, Y.shape[1])
    ref = _check_ref_point(ref_point, Y, maximize)
    pending = _check_pending(pending, X_pool.shape[1])
    rows = rows_not_pending(X_pool, pending)
    choices = as_tensor(X_pool[rows])
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        ref_model = _ref_in_model_scale(surrogates, ref)
        acqf = _log_nehvi(model, ref_model * signs, signs, X_train, pending, num_samples, seed)
        q = min(int(batch_size), len(rows))
        candidates, values = optimize_acqf_discrete(acqf, q=q, choices=choices, unique=True)
    picked = _rows_to_indices(candidates, choices)
    return rows[np.asarray(picked, dtype=int)], values.detach().reshape(-1).numpy().astype(float)


def optimize_pareto_batch(
    surrogates,
    bounds: np.ndarray,
    Y_train: np.ndarray,
    X_train: np.ndarray,
    batch_size: int,
    ref_point: Sequence[float] | None = None,
    maximize: bool | Sequence[bool] = (True, True),
    seed: int | None = None,
    pending: np.ndarray | None = None,
    num_samples: int = 128,
    num_restarts: int = 10,
    raw_samples: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose a batch anywhere in a box by qLogNoisyExpectedHypervolumeImprovement.

    The continuous counterpart of :func:`select_pareto_batch` for features that
    can take any value in a range: BoTorch ``optimize_acqf`` with multi-start
    L-BFGS-B, one point at a time conditioned on the earlier ones. Use it where a
    fixed pool would be too coarse to resolve a thin Pareto set.

    Parameters
    ----------
    surrogates, Y_train, X_train, batch_size, ref_point, maximize, seed, pending,
    num_samples : as in :func:`select_pareto_batch`
    bounds : array of shape (2, n_features), lower and upper bound of each feature
    num_restarts, raw_samples : multi-start settings of ``optimize_acqf``

    Returns
    -------
    X : array of shape (batch_size, n_features), the points in the order picked
    values : array of shape (batch_size,), the log hypervolume improvement of each
        point given the earlier ones and the pending rows
    """
    positive_int("batch_size", batch_size)
    bounds = np.asarray(bounds, dtype=float)
    if bounds.ndim != 2 or bounds.shape[0] != 2 or not (bounds[0] < bounds[1]).all():
        raise ValueError(
            f"bounds must have shape (2, n_features) with lower < upper, got {bounds.tolist()}"
        )
    Y, X_train = _check_training(Y_train, X_train, bounds.shape[1])
    signs = _signs(maximize, Y.shape[1])
    model = _joint_model(surrogates, Y.shape[1])
    ref = _check_ref_point(ref_point, Y, maximize)
    pending = _check_pending(pending, bounds.shape[1])
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        ref_model = _ref_in_model_scale(surrogates, ref)
        acqf = _log_nehvi(model, ref_model * signs, signs, X_train, pending, num_samples, seed)
        candidates, values = optimize_acqf(
            acqf,
            bounds=as_tensor(bounds),
            q=int(batch_size),
            num_restarts=num_restarts,
            raw_samples=raw_samples,
            sequential=True,
        )
    return candidates.detach().numpy(), values.detach().reshape(-1).numpy().astype(float)
