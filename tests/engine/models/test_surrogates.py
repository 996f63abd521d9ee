"""Surrogates with calibrated uncertainty: fit quality, uncertainty behaviour, BoTorch use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.acquisition.monte_carlo import qUpperConfidenceBound
from botorch.optim import optimize_acqf_discrete

from matforge.engine import plugins
from matforge.engine.acquisition.batch import select_batch
from matforge.engine.models.ensemble import DeepEnsembleSurrogate
from matforge.engine.models.forest import (
    FeasibilityClassifier,
    RandomForestSurrogate,
    RidgeSurrogate,
)
from matforge.engine.models.gp import GPSurrogate, as_tensor
from matforge.engine.models.metrics import (
    RecalibratedSurrogate,
    StdRecalibrator,
    cross_validate,
    uncertainty_metrics,
)
from matforge.engine.models.selection import AutoSurrogate, make_surrogate

SURROGATES = [k for k in plugins.available("surrogates") if k != "auto"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # these models are tiny; on a shared 2-core runner a second thread only adds contention
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth(X):
    """A smooth 2-D test function on the unit square; max near (0.52, 0)."""
    return np.sin(3 * X[:, 0]) + np.cos(2 * X[:, 1]) + 0.5 * X[:, 0] * X[:, 1]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(60, 2))
    X_test = rng.uniform(size=(300, 2))
    return X, smooth(X), X_test, smooth(X_test)


FIT_KINDS = {
    # the default GP ranks targets through a Gaussian copula, which costs some
    # accuracy on a noiseless smooth function; without it the GP is near exact
    "gp": (GPSurrogate, 0.15),
    "ensemble": (DeepEnsembleSurrogate, 0.15),
    "forest": (RandomForestSurrogate, 0.4),
}


@pytest.fixture(scope="module")
def fitted(data):
    X, y, _, _ = data
    return {kind: cls(random_state=0).fit(X, y) for kind, (cls, _) in FIT_KINDS.items()}


@pytest.mark.parametrize("kind", FIT_KINDS)
def test_surrogate_fits_smooth_function(kind, fitted, data):
    _, _, X_test, y_test = data
    mean, std = fitted[kind].predict(X_test, return_std=True)
    assert mean.shape == std.shape == (len(X_test),)
    rmse = np.sqrt(np.mean((mean - y_test) ** 2))
    assert rmse < FIT_KINDS[kind][1] * y_test.std()
    assert (std > 0).all()
    np.testing.assert_allclose(fitted[kind].predict(X_test), mean)


def test_gp_without_target_transform_fits_a_smooth_function_closely(data):
    X, y, X_test, y_test = data
    mean = GPSurrogate(y_transform="none", random_state=0).fit(X, y).predict(X_test)
    assert np.sqrt(np.mean((mean - y_test) ** 2)) < 0.05 * y_test.std()


@pytest.mark.parametrize("kind", ["gp", "ensemble"])
def test_std_grows_away_from_data(kind, fitted, data):
    X, _, _, _ = data
    far = np.random.default_rng(1).uniform(2.5, 3.5, size=(50, 2))
    _, std_train = fitted[kind].predict(X, return_std=True)
    _, std_far = fitted[kind].predict(far, return_std=True)
    assert std_far.mean() > 5 * std_train.mean()


def test_ridge_recovers_linear_trend_and_noise():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 3))
    y = X @ [2.0, -1.0, 0.0] + 0.3 * rng.normal(size=80)
    X_test = rng.normal(size=(500, 3))
    y_test = X_test @ [2.0, -1.0, 0.0] + 0.3 * rng.normal(size=500)
    mean, std = RidgeSurrogate().fit(X, y).predict(X_test, return_std=True)
    assert np.sqrt(np.mean((mean - y_test) ** 2)) < 0.4
    assert std == pytest.approx(np.full(500, 0.3), rel=0.3)


def test_ensemble_is_reproducible_and_seed_dependent(data):
    X, y, X_test, _ = data
    a = DeepEnsembleSurrogate(random_state=3, epochs=60).fit(X, y).predict(X_test, True)
    b = DeepEnsembleSurrogate(random_state=3, epochs=60).fit(X, y).predict(X_test, True)
    c = DeepEnsembleSurrogate(random_state=4, epochs=60).fit(X, y).predict(X_test, True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])


def test_ensemble_std_is_mixture_of_members(fitted, data):
    """Total variance = mean member variance + variance of member means."""
    _, _, X_test, _ = data
    ensemble = fitted["ensemble"]
    with torch.no_grad():
        means, variances = ensemble.model_.member_outputs(as_tensor(X_test))
        posterior = ensemble.model_.posterior(as_tensor(X_test))
    means, variances = means.numpy(), variances.numpy()
    assert means.shape == (5, len(X_test))
    mean, std = ensemble.predict(X_test, return_std=True)
    np.testing.assert_allclose(mean, means.mean(axis=0))
    np.testing.assert_allclose(std**2, variances.mean(axis=0) + means.var(axis=0))
    # the BoTorch posterior carries the members' means: same mean, epistemic spread only
    np.testing.assert_allclose(posterior.mean.squeeze(-1).numpy(), mean)
    assert (posterior.variance.squeeze(-1).numpy() <= std**2 * 1.25 + 1e-12).all()


def test_forest_model_posterior_matches_predict(fitted, data):
    _, _, X_test, _ = data
    forest = fitted["forest"]
    with torch.no_grad():
        posterior = forest.model_.posterior(as_tensor(X_test[:7]).reshape(7, 1, 2))
    assert posterior.mean.shape == (7, 1, 1)
    np.testing.assert_allclose(posterior.mean.squeeze(), forest.predict(X_test[:7]))


@pytest.fixture(scope="module")
def botorch_surrogates(fitted, data):
    X, y, _, _ = data
    return {
        "ensemble": fitted["ensemble"],
        "forest": fitted["forest"],
        "ridge": RidgeSurrogate().fit(X, 2 * X[:, 0] - X[:, 1]),
    }


@pytest.mark.parametrize("kind", ["ensemble", "forest", "ridge"])
def test_botorch_acquisitions_run_on_model(kind, botorch_surrogates, data):
    X, y, _, _ = data
    surrogate = botorch_surrogates[kind]
    if kind == "ridge":
        y = 2 * X[:, 0] - X[:, 1]
    pool = np.random.default_rng(5).uniform(size=(200, 2))
    truth = smooth(pool) if kind != "ridge" else 2 * pool[:, 0] - pool[:, 1]
    choices = as_tensor(pool)
    torch.manual_seed(0)
    for acqf in (
        qLogExpectedImprovement(surrogate.model_, best_f=float(y.max())),
        qUpperConfidenceBound(surrogate.model_, beta=0.1),
    ):
        candidates, values = optimize_acqf_discrete(acqf, q=3, choices=choices, unique=True)
        assert candidates.shape == (3, 2)
        assert torch.isfinite(values).all()
        rows = [int(torch.where((choices == c).all(-1))[0][0]) for c in candidates]
        assert len(set(rows)) == 3
        # the first pick is a good candidate, not an arbitrary one
        assert truth[rows[0]] >= np.quantile(truth, 0.8)
    indices, values = select_batch(surrogate, pool, y, batch_size=4, seed=0)
    assert len(set(indices.tolist())) == 4
    assert np.isfinite(values).all()


def test_feasibility_classifier_on_separable_problem():
    rng = np.random.default_rng(6)
    X = rng.uniform(size=(60, 2))
    formation_energy = X[:, 0] + X[:, 1] - 1.0  # stable (< 0) below the diagonal
    clf = FeasibilityClassifier(threshold=0.0).fit(X, formation_energy)
    assert clf.loo_accuracy_ > 0.8
    assert np.isfinite(clf.loo_log_loss_) and clf.loo_log_loss_ < np.log(2)
    p = clf.predict_proba(np.array([[0.05, 0.05], [0.95, 0.95]]))
    assert p.shape == (2,)
    assert p[0] > 0.8 and p[1] < 0.2
    above = FeasibilityClassifier(threshold=0.0, below=False).fit(X, formation_energy)
    assert above.predict_proba(np.array([[0.95, 0.95]]))[0] > 0.8
    labels = FeasibilityClassifier(threshold=123.0).fit(X, formation_energy < 0)
    np.testing.assert_allclose(labels.predict_proba(X), clf.predict_proba(X))


@pytest.mark.parametrize("stable", [True, False])
def test_feasibility_classifier_one_class(stable):
    X = np.random.default_rng(7).uniform(size=(10, 3))
    y = np.full(10, -1.0 if stable else 1.0)
    clf = FeasibilityClassifier(threshold=0.0).fit(X, y)
    expected = 11 / 12 if stable else 1 / 12  # Laplace's rule of succession
    np.testing.assert_allclose(clf.predict_proba(X[:4]), expected)
    assert clf.one_class_
    assert clf.loo_accuracy_ == 1.0


def test_feasibility_classifier_single_minority_row():
    """LOO on a row that is the only one of its class trains on one class: no crash."""
    X = np.random.default_rng(8).uniform(size=(8, 2))
    y = np.array([-1.0] + [1.0] * 7)
    clf = FeasibilityClassifier(threshold=0.0).fit(X, y)
    assert not clf.one_class_
    assert clf.loo_proba_[0] == pytest.approx(1 / 9)
    assert 0 < clf.predict_proba(X[:1])[0] < 1


def test_calibration_metrics_reward_honest_std_and_punish_overconfidence():
    rng = np.random.default_rng(9)
    mean = rng.normal(size=20000)
    std = rng.uniform(0.5, 2.0, size=20000)
    y = mean + std * rng.normal(size=20000)
    honest = uncertainty_metrics(y, mean, std)
    assert honest["coverage90"] == pytest.approx(0.9, abs=0.01)
    assert honest["miscalibration_area"] < 0.01
    expected_nll = 0.5 * np.log(2 * np.pi * np.e) + np.log(std).mean()
    assert honest["nll"] == pytest.approx(expected_nll, abs=0.03)
    overconfident = uncertainty_metrics(y, mean, 0.3 * std)
    assert overconfident["coverage90"] < 0.5
    assert overconfident["miscalibration_area"] > 0.25
    assert overconfident["nll"] > honest["nll"] + 1
    assert overconfident["rmse"] == honest["rmse"]


@pytest.mark.parametrize(
    "args, message",
    [
        (([1.0, 2.0], [1.0], [1.0]), "same length"),
        (([1.0, 2.0], [1.0, 2.0], [1.0, 0.0]), "std must be > 0"),
        (([1.0, np.nan], [1.0, 2.0], [1.0, 1.0]), "y_true contains NaN"),
    ],
)
def test_metrics_reject_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        uncertainty_metrics(*args)


def test_recalibrator_fixes_overconfident_surrogate():
    rng = np.random.default_rng(10)
    X = rng.normal(size=(120, 2))
    y = X @ [1.0, -2.0] + 0.5 * rng.normal(size=120)
    X_test = rng.normal(size=(2000, 2))
    y_test = X_test @ [1.0, -2.0] + 0.5 * rng.normal(size=2000)

    def overconfident():
        return RecalibratedSurrogate(RidgeSurrogate(), scale=0.3)

    metrics, mean, std = cross_validate(overconfident, X, y, n_splits=5, random_state=0)
    assert mean.shape == std.shape == (120,)
    assert metrics["coverage90"] < 0.5
    recalibrator = StdRecalibrator().fit(y, mean, std)
    assert recalibrator.scale_ == pytest.approx(1 / 0.3, rel=0.25)
    model = recalibrator.wrap(overconfident().fit(X, y))
    before = uncertainty_metrics(y_test, *overconfident().fit(X, y).predict(X_test, True))
    after = uncertainty_metrics(y_test, *model.predict(X_test, return_std=True))
    assert after["coverage90"] == pytest.approx(0.9, abs=0.05)
    assert after["nll"] < before["nll"]
    assert after["miscalibration_area"] < before["miscalibration_area"]


def test_cross_validate_is_seeded_and_checks_folds():
    rng = np.random.default_rng(11)
    X, y = rng.normal(size=(20, 2)), rng.normal(size=20)
    _, m1, _ = cross_validate(lambda: RandomForestSurrogate(10, random_state=0), X, y, 4, 1)
    _, m2, _ = cross_validate(lambda: RandomForestSurrogate(10, random_state=0), X, y, 4, 1)
    _, m3, _ = cross_validate(lambda: RandomForestSurrogate(10, random_state=0), X, y, 4, 2)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(m1, m3)
    with pytest.raises(ValueError, match="n_splits"):
        cross_validate(RidgeSurrogate, X, y, n_splits=21)


def test_auto_surrogate_picks_linear_model_for_linear_data():
    rng = np.random.default_rng(12)
    X = rng.normal(size=(50, 3))
    y = X @ [1.0, 0.5, -1.0] + 0.1 * rng.normal(size=50)
    auto = AutoSurrogate(kinds=("forest", "ridge"), random_state=0).fit(X, y)
    assert auto.chosen_ == "ridge"
    assert set(auto.cv_scores_) == {"forest", "ridge"}
    assert auto.cv_scores_["ridge"]["nll"] < auto.cv_scores_["forest"]["nll"]
    assert set(auto.cv_scores_["ridge"]) >= {"rmse", "mae", "nll", "coverage90"}
    assert "ridge" in auto.reason_ and "5-fold" in auto.reason_
    assert auto.botorch_model() is auto.surrogate_.model_
    np.testing.assert_array_equal(auto.predict(X[:5]), auto.surrogate_.predict(X[:5]))


def test_auto_surrogate_all_kinds_on_nonlinear_data(data):
    X, y, X_test, y_test = data
    auto = AutoSurrogate(random_state=0, recalibrate=True).fit(X[:40], y[:40])
    assert set(auto.cv_scores_) == set(SURROGATES)
    assert auto.chosen_ != "ridge"
    best = min(auto.cv_scores_, key=lambda k: auto.cv_scores_[k]["nll_recalibrated"])
    assert auto.chosen_ == best
    assert isinstance(auto.surrogate_, RecalibratedSurrogate)
    assert auto.surrogate_.scale == auto.cv_scores_[best]["std_scale"]
    mean, std = auto.predict(X_test, return_std=True)
    assert np.sqrt(np.mean((mean - y_test) ** 2)) < 0.5 * y_test.std()


def test_auto_surrogate_with_few_rows():
    rng = np.random.default_rng(13)
    X, y = rng.uniform(size=(4, 2)), rng.normal(size=4)
    auto = AutoSurrogate(kinds=("forest", "ridge"), random_state=0).fit(X, y)
    assert "leave-one-out" in auto.reason_
    assert auto.chosen_ in {"forest", "ridge"}
    tiny = AutoSurrogate(kinds=("ridge", "gp"), random_state=0).fit(X[:2], y[:2])
    assert tiny.chosen_ == "gp"
    assert "too few" in tiny.reason_
    assert tiny.cv_scores_ == {}


def test_make_surrogate_names_unknown_kind():
    with pytest.raises(ValueError, match="'nope'.*ensemble.*forest.*gp.*ridge"):
        make_surrogate("nope")
    with pytest.raises(ValueError, match="'nope'"):
        AutoSurrogate(kinds=("gp", "nope")).fit(np.zeros((5, 1)), np.arange(5.0))
    forest = make_surrogate("forest", random_state=1, n_estimators=7)
    assert isinstance(forest, RandomForestSurrogate)
    assert (forest.n_estimators, forest.random_state) == (7, 1)


@pytest.mark.parametrize("kind", sorted(SURROGATES))
def test_surrogates_reject_bad_training_data(kind):
    X = np.random.default_rng(14).uniform(size=(6, 2))
    with pytest.raises(ValueError, match="rows|values"):
        make_surrogate(kind).fit(X, np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        make_surrogate(kind).fit(X, np.array([1.0, 2, 3, np.nan, 5, 6]))


def test_recalibration_keeps_the_acquisitions_view_of_the_wrapped_surrogate():
    from matforge.engine.models.gp import GPSurrogate

    rng = np.random.default_rng(15)
    X, y = rng.uniform(size=(12, 2)), rng.normal(size=12) ** 3
    gp = GPSurrogate(random_state=0).fit(X, y)
    wrapped = RecalibratedSurrogate(gp, 2.0)
    np.testing.assert_allclose(wrapped.to_model_scale(y), gp.to_model_scale(y))
    assert wrapped.acquisition_model() is gp.mixture_
    assert wrapped.botorch_model() is gp.model_
    np.testing.assert_allclose(wrapped.predict(X[:3], return_std=True)[1],
                               2.0 * gp.predict(X[:3], return_std=True)[1])
