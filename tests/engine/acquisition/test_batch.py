"""Batch acquisition over a discrete pool: every kind, minimization, pending points, constraints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize

from matforge.engine.acquisition.batch import ACQUISITIONS, select_batch
from matforge.engine.models.base import Surrogate
from matforge.engine.models.gp import GPSurrogate, as_tensor

POOL = np.linspace(0.0, 1.0, 201)[:, None]


def _bump(X):
    return np.exp(-((X[:, 0] - 0.7) ** 2) / 0.02)


def _posterior(surrogate, X):
    """Mean and std of ``model_`` (the scale acquisitions rank in), arrays of shape (n,)."""
    with torch.no_grad():
        post = surrogate.model_.posterior(as_tensor(X))
    return post.mean[..., 0].numpy(), post.variance[..., 0].sqrt().numpy()


@pytest.fixture(scope="module")
def bump():
    """GP on a single bump at x = 0.7, seen at 7 points."""
    X = np.array([0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 0.95])[:, None]
    y = _bump(X)
    return GPSurrogate(random_state=0).fit(X, y), X, y


@pytest.fixture(scope="module")
def slope():
    """GP on an increasing line, seen in the middle of [0, 1] only."""
    X = np.linspace(0.3, 0.7, 5)[:, None]
    y = 3.0 * X[:, 0]
    return GPSurrogate(random_state=0).fit(X, y), X, y


@pytest.mark.parametrize("kind", ACQUISITIONS)
@pytest.mark.parametrize("maximize", [True, False])
def test_every_kind_returns_a_full_batch_of_distinct_pool_rows(bump, kind, maximize):
    model, X, y = bump
    idx, values = select_batch(model, POOL, y, 5, maximize, seed=1, kind=kind, X_train=X)
    assert idx.shape == (5,) and values.shape == (5,)
    assert len(set(idx.tolist())) == 5
    assert ((idx >= 0) & (idx < len(POOL))).all()
    assert np.isfinite(values).all()


@pytest.mark.parametrize("measurement_noise", ["likelihood", "empirical"])
@pytest.mark.parametrize("kind", ACQUISITIONS)
def test_every_kind_works_on_a_student_t_gp(kind, measurement_noise):
    """Its BoTorch model has per-point noise, which conditioning must be given; with
    empirical noise, ``ptop`` scores a mixture of shifted normals per component."""
    X = np.array([0.0, 0.15, 0.3, 0.3, 0.45, 0.6, 0.8, 0.95])[:, None]
    y = _bump(X)
    y[3] += 2.0  # a wild replicate
    model = GPSurrogate(random_state=0, likelihood="student_t",
                        measurement_noise=measurement_noise).fit(X, y)
    assert model.noise_scale_[3] > 5 * model.noise_scale_.median()
    idx, values = select_batch(model, POOL, y, 3, True, seed=1, kind=kind, X_train=X)
    assert len(set(idx.tolist())) == 3 and np.isfinite(values).all()


def test_positional_call_of_the_campaign_still_works(bump):
    model, _, y = bump
    idx, values = select_batch(model, POOL, y, 3, False, 0)
    assert len(set(idx.tolist())) == 3 and values.shape == (3,)


def test_batch_larger_than_pool_gives_every_row_once(bump):
    model, _, y = bump
    idx, _ = select_batch(model, POOL[:4], y, 10, kind="greedy")
    assert sorted(idx.tolist()) == [0, 1, 2, 3]


def test_greedy_picks_the_best_predicted_rows(bump):
    model, _, y = bump
    mean, _ = _posterior(model, POOL)
    idx, _ = select_batch(model, POOL, y, 4, kind="greedy")
    assert idx.tolist() == np.argsort(-mean)[:4].tolist()
    idx, _ = select_batch(model, POOL, y, 4, maximize=False, kind="greedy")
    assert idx.tolist() == np.argsort(mean)[:4].tolist()


def test_explore_starts_at_the_largest_std_and_spreads_the_batch(bump):
    model, _, y = bump
    _, std = _posterior(model, POOL)
    idx, values = select_batch(model, POOL, y, 3, kind="explore")
    assert idx[0] == np.argmax(std)
    assert values[0] == pytest.approx(std.max(), rel=1e-6)
    # conditioning on earlier picks keeps later ones away from them
    x = POOL[idx, 0]
    assert np.min(np.abs(x[:, None] - x[None, :]) + np.eye(3)) > 0.05
    assert (std[idx] > np.median(std)).all()


@pytest.mark.parametrize("kind", ["qlogei", "qlognei", "ucb", "greedy", "thompson"])
def test_minimize_and_maximize_pick_opposite_ends(slope, kind):
    model, X, y = slope
    hi, _ = select_batch(model, POOL, y, 1, True, seed=0, kind=kind, X_train=X)
    lo, _ = select_batch(model, POOL, y, 1, False, seed=0, kind=kind, X_train=X)
    assert POOL[hi[0], 0] > 0.7
    assert POOL[lo[0], 0] < 0.3


def test_pending_row_and_its_neighbourhood_are_not_picked_again():
    # two unobserved peaks, at 0.25 and 0.75: once one is running, qLogEI turns to the other
    X = np.array([0.0, 0.125, 0.375, 0.5, 0.625, 0.875, 1.0])[:, None]
    y = _bump(X + 0.45) + _bump(X - 0.05)
    model = GPSurrogate(random_state=0).fit(X, y)
    (first,), _ = select_batch(model, POOL, y, 1, seed=0)
    (again,), _ = select_batch(model, POOL, y, 1, seed=0)
    assert again == first
    (second,), _ = select_batch(model, POOL, y, 1, seed=0, pending=POOL[[first]])
    assert abs(POOL[second, 0] - POOL[first, 0]) > 0.3


@pytest.mark.parametrize("kind", ["greedy", "explore", "thompson"])
def test_posterior_kinds_never_pick_a_pending_row(bump, kind):
    model, _, y = bump
    free, _ = select_batch(model, POOL, y, 3, seed=0, kind=kind)
    idx, _ = select_batch(model, POOL, y, 3, seed=0, kind=kind, pending=POOL[free])
    assert not set(idx.tolist()) & set(free.tolist())


def _feasible_left(X):
    """scikit-learn style predict_proba: P(feasible) in the second column, feasible for x < 0.5."""
    p = np.where(X[:, 0] < 0.5, 0.9, 0.0)
    return np.column_stack([1 - p, p])


@pytest.mark.parametrize("kind", ACQUISITIONS)
def test_constraint_steers_the_batch_to_feasible_rows(slope, kind):
    model, X, y = slope
    free, _ = select_batch(model, POOL, y, 3, seed=0, kind=kind, X_train=X)
    assert (POOL[free, 0] >= 0.5).any()
    idx, _ = select_batch(
        model, POOL, y, 3, seed=0, kind=kind, X_train=X, constraint=_feasible_left
    )
    assert (POOL[idx, 0] < 0.5).all()


class _TwoOutput(Surrogate):
    """A surrogate whose model predicts the objective and a constraint quantity."""

    def fit(self, X, y, bounds=None):
        return self

    def predict(self, X, return_std=False, observation_noise=False):
        raise NotImplementedError

    def __init__(self, X, Y):
        torch.manual_seed(0)
        from botorch.fit import fit_gpytorch_mll
        from gpytorch.mlls import ExactMarginalLogLikelihood

        self.model_ = SingleTaskGP(as_tensor(X), as_tensor(Y), outcome_transform=Standardize(m=2))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(self.model_.likelihood, self.model_))
        self.model_.eval()


@pytest.mark.parametrize("kind", ["qlogei", "ucb", "greedy"])
def test_numeric_constraint_bounds_the_second_output(kind):
    X = np.linspace(0.0, 1.0, 9)[:, None]
    Y = np.column_stack([3.0 * X[:, 0], X[:, 0] - 0.5])  # feasible where x <= 0.5
    model = _TwoOutput(X, Y)
    idx, _ = select_batch(model, POOL, Y, 3, seed=0, kind=kind, constraint=0.0)
    assert (POOL[idx, 0] <= 0.55).all()


def test_thompson_is_reproducible_with_a_seed(bump):
    model, _, y = bump
    a, va = select_batch(model, POOL, y, 4, seed=7, kind="thompson")
    b, vb = select_batch(model, POOL, y, 4, seed=7, kind="thompson")
    assert a.tolist() == b.tolist() and np.allclose(va, vb)
    others = {tuple(select_batch(model, POOL, y, 4, seed=s, kind="thompson")[0]) for s in range(5)}
    assert len(others) > 1


def test_unknown_kind_is_named_with_the_known_ones(bump):
    model, _, y = bump
    with pytest.raises(ValueError, match=r"'qei'.*qlogei.*explore"):
        select_batch(model, POOL, y, 2, kind="qei")


def test_bad_inputs_are_refused_with_a_reason(bump):
    model, _, y = bump
    with pytest.raises(ValueError, match="X_train"):
        select_batch(model, POOL, y, 2, kind="qlognei")
    with pytest.raises(ValueError, match="batch_size"):
        select_batch(model, POOL, y, 0)
    with pytest.raises(ValueError, match="pending"):
        select_batch(model, POOL, y, 2, pending=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="second output"):
        select_batch(model, POOL, y, 2, constraint=0.0)
    with pytest.raises(ValueError, match="model_"):
        select_batch(GPSurrogate(), POOL, y, 2)


def test_pucb_trades_predicted_value_for_uncertainty_by_beta():
    from matforge.engine.models.gp import GPSurrogate

    rng = np.random.default_rng(0)
    X_train = rng.uniform(0.0, 0.5, size=(12, 1))  # nothing known above 0.5
    y_train = np.sin(6 * X_train[:, 0]) + 0.05 * rng.normal(size=12)
    model = GPSurrogate(random_state=0).fit(X_train, y_train)
    pool = np.linspace(0, 1, 41)[:, None]
    best_known = pool[np.argmax(model.predict(pool[pool[:, 0] <= 0.5]))]
    (greedy,), _ = select_batch(model, pool, y_train, 1, kind="pucb", beta=0.0)
    assert abs(pool[greedy, 0] - best_known[0]) < 0.06
    (bold,), _ = select_batch(model, pool, y_train, 1, kind="pucb", beta=25.0)
    assert pool[bold, 0] > 0.7  # the unexplored end
    batch, values = select_batch(model, pool, y_train, 4, kind="pucb", beta=4.0)
    assert len(set(batch.tolist())) == 4 and np.all(np.diff(values) <= 1e-9)
    # hallucinated outcomes spread the batch instead of stacking neighbours
    assert np.ptp(pool[batch, 0]) > 0.1


def test_top_threshold_leaves_the_asked_share_above_it():
    from scipy.stats import norm

    from matforge.engine.acquisition.batch import top_threshold

    observed = np.arange(10.0)  # results only: tau sits between the 3rd and 4th best
    assert 6.0 <= top_threshold(np.empty(0), np.empty(0), observed, 3) < 7.0
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=200), rng.uniform(0.1, 1.0, size=200)
    tau = top_threshold(mean, std, observed, 12.5)
    expected = norm.sf((tau - mean) / std).sum() + (observed > tau).sum()
    assert expected == pytest.approx(12.5, abs=1e-6)
    # a candidate predicted by an equal mixture counts by its mixture probability
    means, stds = np.stack([mean, mean + 1.0]), np.stack([std, 2 * std])
    tau = top_threshold(means, stds, observed, 12.5)
    expected = norm.sf((tau - means) / stds).mean(0).sum() + (observed > tau).sum()
    assert expected == pytest.approx(12.5, abs=1e-6)
    assert top_threshold(np.stack([mean, mean]), np.stack([std, std]), observed, 12.5) == (
        pytest.approx(top_threshold(mean, std, observed, 12.5))
    )


def test_the_threshold_root_takes_few_passes_and_closes_on_a_results_step(monkeypatch):
    from scipy import special
    from scipy.optimize import brentq

    from matforge.engine.acquisition.batch import top_threshold

    rng = np.random.default_rng(1)
    means = rng.normal(size=(16, 5000))
    stds = rng.uniform(0.1, 1.0, size=(16, 5000))
    observed = rng.normal(size=100) + 2.0
    ndtr = special.ndtr

    def excess(tau):
        return ndtr((means - tau) / stds).mean(0).sum() + (observed > tau).sum() - 12.5

    expected = brentq(excess, -20, 20, xtol=1e-12)
    passes = []  # each a pass over every prediction
    monkeypatch.setattr(special, "ndtr", lambda z: passes.append(1) or ndtr(z))
    assert top_threshold(means, stds, observed, 12.5) == pytest.approx(expected, abs=1e-8)
    assert len(passes) <= 8  # Newton from the means' guess; brentq over the bracket took ~20
    # where the results alone decide and 2.5 rows are asked for, tau is the 3rd best result
    far = np.full((1, 10), -50.0), np.full((1, 10), 0.1)
    assert top_threshold(*far, np.array([5.0, 4.0, 3.0]), 2.5) == pytest.approx(3.0, abs=1e-8)


def test_ptop_explores_until_something_clears_the_threshold_then_exploits():
    from matforge.engine.models.gp import GPSurrogate

    rng = np.random.default_rng(0)
    X_train = np.linspace(0.0, 0.5, 26)[:, None]  # well known up to 0.5, nothing above
    y_train = np.sin(6 * X_train[:, 0]) + 0.02 * rng.normal(size=26)
    model = GPSurrogate(random_state=0).fit(X_train, y_train)
    pool = np.linspace(0, 3, 301)[:, None]  # most candidates lie where nothing is known
    best_known = pool[np.argmax(model.predict(pool[pool[:, 0] <= 0.5]))]
    # the best half of all rows: the known peak clears that bar with confidence
    (safe,), (p_safe,) = select_batch(model, pool, y_train, 1, kind="ptop", top_share=0.5)
    assert abs(pool[safe, 0] - best_known[0]) < 0.06 and p_safe > 0.5
    # the best 0.1 %: a bar far above the known peak, which only rows the model
    # knows nothing about might clear
    (bold,), (p_bold,) = select_batch(model, pool, y_train, 1, kind="ptop", top_share=0.001)
    assert pool[bold, 0] > 0.7 and p_bold < 0.5
    batch, values = select_batch(model, pool, y_train, 4, kind="ptop")
    assert len(set(batch.tolist())) == 4 and np.all((values >= 0) & (values <= 1))
    # minimizing ranks the mirror image: the trough, not the peak
    (low,), _ = select_batch(model, pool, y_train, 1, kind="ptop", maximize=False, top_share=0.5)
    assert model.predict(pool[low : low + 1])[0] < np.median(y_train)
    # a constraint that forbids the right half keeps every pick on the left
    left = lambda X: (X[:, 0] < 0.5).astype(float)  # noqa: E731
    batch, _ = select_batch(model, pool, y_train, 3, kind="ptop", constraint=left)
    assert np.all(pool[batch, 0] < 0.5)
    with pytest.raises(ValueError, match="top_share"):
        select_batch(model, pool, y_train, 1, kind="ptop", top_share=1.5)


def test_a_budget_much_smaller_than_the_pool_makes_ptop_aim_higher():
    from matforge.engine.acquisition.strategy import Strategy

    rng = np.random.default_rng(0)
    X_train = np.linspace(0.0, 0.5, 26)[:, None]  # well known up to 0.5, nothing above
    y_train = np.sin(6 * X_train[:, 0]) + 0.02 * rng.normal(size=26)
    pool = np.linspace(0, 3, 301)[:, None]
    ample = Strategy(top_share=0.5, budget=len(pool) + len(y_train))
    # a budget that measures 1 row in 327 aims for the best half of that row
    scarce = Strategy(top_share=0.5, budget=1)
    # aiming for the best half of all rows picks the known peak; with one
    # evaluation to spend on 327 rows, a bar far above it, which only rows the
    # model knows nothing about might clear
    safe = ample.select(X_train, y_train, pool, 1, seed=0)
    bold = scarce.select(X_train, y_train, pool, 1, seed=0)
    assert pool[safe.indices[0], 0] <= 0.5 < 0.7 < pool[bold.indices[0], 0]
    assert safe.acquisition[0] > 0.5 > bold.acquisition[0]
    # a campaign that wants many good materials aims for the best half of all rows anyway
    many = Strategy(top_share=0.5, budget=1, find="top_share").select(
        X_train, y_train, pool, 1, seed=0)
    assert many.indices[0] == safe.indices[0]
    assert many.acquisition[0] == pytest.approx(safe.acquisition[0])
    with pytest.raises(ValueError, match="find must be one of best, top_share"):
        Strategy(find="all")
    # a budget no smaller than the rows changes nothing
    model = ample.fit(X_train, y_train, seed=0)
    (row,), (value,) = select_batch(model, pool, y_train, 1, kind="ptop", top_share=0.5)
    (same,), (same_value,) = select_batch(
        model, pool, y_train, 1, kind="ptop", top_share=0.5, budget=10**6
    )
    assert same == row and same_value == pytest.approx(value)
    for bad in (0, -3, 2.5, "40", True):
        with pytest.raises(ValueError, match="budget"):
            Strategy(budget=bad)
        with pytest.raises(ValueError, match="budget"):
            select_batch(model, pool, y_train, 1, kind="ptop", budget=bad)


def test_with_a_budget_the_results_in_hand_do_not_raise_ptops_bar():
    """Where the rows outnumber the budget, ptop aims at the best rows still to measure:
    a result in hand cannot be found again. Counted, the best results would set the bar
    once they are measured, and the picks would chase rows that might beat them instead
    of the best rows left (the late collapse in benchmarks/README.md)."""
    rng = np.random.default_rng(0)
    X_train = np.linspace(0.0, 0.5, 26)[:, None]
    y_train = np.sin(6 * X_train[:, 0]) + 0.02 * rng.normal(size=26)
    pool = np.linspace(0, 3, 301)[:, None]
    model = GPSurrogate(random_state=0).fit(X_train, y_train)
    # results far above every candidate would fill a top of 5 % x 40 = 2 rows on their own
    in_hand = y_train + np.where(np.arange(26) < 5, 10.0, 0.0)
    for X in (pool, np.repeat(pool, 40, axis=0)):  # a small pool, and one of > LARGE_POOL rows
        rows, values = select_batch(model, X, y_train, 2, kind="ptop", budget=40)
        same_rows, same_values = select_batch(model, X, in_hand, 2, kind="ptop", budget=40)
        assert same_rows.tolist() == rows.tolist()
        np.testing.assert_allclose(same_values, values, rtol=1e-9)
    # without a budget the top is 5 % of all rows, results included: those five fill a
    # third of it, and the bar rises
    _, values = select_batch(model, pool, y_train, 1, kind="ptop")
    _, higher_bar = select_batch(model, pool, in_hand, 1, kind="ptop")
    assert higher_bar[0] < values[0]


def test_the_default_gp_puts_outliers_on_the_worse_side_of_the_goal():
    from matforge.engine.acquisition.strategy import GP_DEFAULTS, Strategy

    rng = np.random.default_rng(0)
    X, y = rng.random((12, 2)), rng.random(12)
    for maximize, side in [(True, "below"), (False, "above")]:
        model = Strategy().fit(X, y, seed=0, maximize=maximize)
        assert (model.likelihood, model.df, model.outliers) == (
            GP_DEFAULTS["likelihood"], GP_DEFAULTS["df"], side)
    # a campaign's own GP arguments win; other surrogates get only their own
    plain = Strategy(surrogate_params={"likelihood": "gaussian"}).fit(X, y, seed=0)
    assert plain.likelihood == "gaussian"
    assert Strategy(surrogate="forest").surrogate_arguments() == {}
