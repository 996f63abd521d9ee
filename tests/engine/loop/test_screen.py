"""A cheap evaluator screens every proposed candidate before selection: only the best it
ranks are picked, nothing is screened twice, and a candidate it fails on is not picked."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matforge.adapters import load_evaluator
from matforge.adapters.registry import build_evaluators
from matforge.engine.config import ConfigError, parse_config
from matforge.engine.loop import screen as screening
from matforge.engine.loop.isolate import run_isolated
from matforge.engine.loop.round import SerialDispatcher, run_campaign, run_round
from matforge.engine.materials.structures import fingerprint
from matforge.engine.store.sql import CampaignStore

EMT = {"fmax": 0.1, "max_steps": 60}
CAMPAIGN = {
    "name": "screened",
    "elements": ["Cu", "Au", "Pt"],
    "generator": {"pool_size": 16, "max_atoms": 4},
    "batch_size": 2,
    "budget": 6,
    "evaluator": {"adapter": "emt", "parameters": EMT},
    "anomaly": {"enabled": False},
    "seed": 4,
}


def _config(tmp_path: Path, screen: dict, **changes):
    return parse_config({**CAMPAIGN, **changes, "screen": screen,
                         "store": f"sqlite:///{tmp_path / 's.db'}",
                         "workdir": str(tmp_path / "runs")})


def _ledger(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines())


def test_only_the_candidates_the_screen_ranks_best_are_picked_and_none_is_screened_twice(
    testing_adapters, tmp_path
):
    ledger = tmp_path / "screen-ledger.txt"
    config = _config(tmp_path, {"adapter": "emt-ledger", "keep": 3,
                                "parameters": {**EMT, "ledger": str(ledger)}})
    config, evaluator, screener = build_evaluators(config)
    store = CampaignStore(config.store)
    dispatch = SerialDispatcher(store, evaluator, config.objective.property)
    cid = store.campaign_id(config.name, config.model_dump(mode="json"))

    first = run_round(config, store, cid, 0, evaluator, dispatch, screener=screener)
    screened = _ledger(ledger)
    assert sum(screened.values()) == 16 and max(screened.values()) == 1
    assert first.n_pool == 3  # what went on to selection
    # each pick is among the screen's best three of the pool, by the screen's own values
    values = {}
    for fp in screened:
        key = screening.screen_key("emt-ledger", config.screen.parameters, fp)
        result = screening.read_result(screening.screen_dir(config, fp), key)
        values[fp] = result["formation_energy_per_atom"]
    best3 = sorted(values, key=values.get)[:3]
    picked = store.evaluations(cid, round=0)
    assert len(picked) == 2 and {e.fingerprint for e in picked} <= set(best3)
    # the screen and the evaluator are the same EMT here: the screen's value is the result
    for e in picked:
        assert e.objective == pytest.approx(values[e.fingerprint], abs=1e-9)

    # the round again (a resume), then the whole campaign: each structure screened once
    run_round(config, store, cid, 0, evaluator, dispatch, screener=screener)
    assert _ledger(ledger) == screened
    summary = run_campaign(config, store, evaluator, dispatch, screener=screener)
    assert summary["by_status"] == {"accepted": 6}
    assert max(_ledger(ledger).values()) == 1
    store.close()


def test_a_candidate_the_screen_fails_on_or_times_out_on_is_not_picked(testing_adapters, tmp_path):
    cu = Structure(Lattice.cubic(3.6), ["Cu"] * 4,
                   [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    fe = cu.copy()
    fe.replace(0, "Fe")  # EMT has no parameters for Fe: the screen raises for this one
    au = cu.copy()
    au.replace_species({"Cu": "Au"})
    config = _config(tmp_path, {"adapter": "emt", "parameters": EMT})
    structures = [cu, fe, au]
    fps = [fingerprint(s) for s in structures]
    values = screening.screen_values(config, partial(load_evaluator, "emt", EMT), structures, fps)
    assert np.isfinite(values[[0, 2]]).all() and np.isnan(values[1])
    assert list(screening.keep_best(config, values)) == [0, 2]  # Cu before Au: both 0 eV/atom
    failed = screening.read_result(screening.screen_dir(config, fps[1]),
                                   screening.screen_key("emt", EMT, fps[1]))
    assert "EvaluationError" in failed["error"] and "Fe" in failed["error"]

    run_isolated(int, (), None)  # the fork server has started: the timeout is the screen's
    slow = _config(tmp_path / "slow", {"adapter": "sleep", "timeout": 5.0,
                                       "parameters": {"seconds": 30}},
                   objective={"property": "energy_per_atom"})
    (tmp_path / "slow").mkdir()
    values = screening.screen_values(slow, partial(load_evaluator, "sleep", {"seconds": 30}),
                                     structures[:1], fps[:1])
    assert np.isnan(values[0])
    failed = screening.read_result(screening.screen_dir(slow, fps[0]),
                                   screening.screen_key("sleep", {"seconds": 30}, fps[0]))
    assert "EvaluationTimeout" in failed["error"]


def test_a_screen_that_cannot_report_its_property_is_refused_before_anything_runs(
    testing_adapters, tmp_path
):
    config = _config(tmp_path, {"adapter": "emt", "property": "band_gap"})
    with pytest.raises(ConfigError, match=r"field 'screen.property': adapter 'emt' does not "
                                          r"report 'band_gap'"):
        build_evaluators(config)
    with pytest.raises(ConfigError, match=r"field 'screen(.adapter)?': .*'nope' is not installed"):
        build_evaluators(_config(tmp_path, {"adapter": "nope"}))
    with pytest.raises(ConfigError, match="field 'screen.adapter': adapter 'emt' has no "
                                          "parameters for Fe"):
        build_evaluators(_config(tmp_path, {"adapter": "emt"}, elements=["Cu", "Fe"],
                                 evaluator={"adapter": "sleep"},
                                 objective={"property": "energy_per_atom"}))


def test_the_own_potential_screens_once_it_has_results_and_retrains_each_round(tmp_path):
    config = _config(tmp_path, {"adapter": "bpnn", "parameters": {"epochs": 60}},
                     batch_size=4, budget=12)
    config, evaluator, screener = build_evaluators(config)
    store = CampaignStore(config.store)
    dispatch = SerialDispatcher(store, evaluator, config.objective.property)
    summary = run_campaign(config, store, evaluator, dispatch, screener=screener)
    assert summary["by_status"] == {"accepted": 12}
    screened = list((tmp_path / "runs" / "screened" / "screen").glob("*/matforge-result.json"))
    # round 0 had no results to train on; rounds 1 and 2 screened their pools of 16 (a
    # structure in both is screened again by the retrained potential, in its directory)
    assert 16 <= len(screened) <= 32
    results = [screening.read_result(p.parent, json.loads(p.read_text())["key"])
               for p in screened]
    predicted = [r.get("formation_energy_per_atom") for r in results if "error" not in r]
    assert predicted and all(np.isfinite(predicted))
    store.close()
