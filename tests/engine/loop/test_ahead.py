"""generator.ahead: the next round's pool proposed while this round's evaluations run, and
the run's feature rows made once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from matforge.adapters import load_evaluator
from matforge.engine.config import parse_config
from matforge.engine.loop import campaign as stages
from matforge.engine.loop.round import (
    ProposalAhead,
    SerialDispatcher,
    run_campaign,
    run_round,
)
from matforge.engine.store.sql import CampaignStore

CAMPAIGN = {
    "name": "ahead-test",
    "elements": ["Cu", "Au", "Pt"],
    "generator": {"pool_size": 30, "max_atoms": 4, "ahead": True, "n_parents": 2},
    "batch_size": 2,
    "budget": 6,
    "evaluator": {"adapter": "emt", "parameters": {"fmax": 5.0, "max_steps": 20}},
    "anomaly": {"enabled": False},
    "seed": 3,
}


class Stages:
    """A run_stage that records each stage's round, thread and proposal parents."""

    def __init__(self):
        self.calls = []

    def __call__(self, name, function, *args, round=None):
        parents = [e.id for e in args[2]] if name == "propose" else None
        self.calls.append((name, round, threading.current_thread().name, parents))
        return function(*args)

    def proposals(self, round):
        return [c for c in self.calls if c[0] == "propose" and c[1] == round]


def _setup(tmp_path, name="s"):
    config = parse_config({**CAMPAIGN, "store": f"sqlite:///{tmp_path / f'{name}.db'}",
                           "workdir": str(tmp_path / f"runs-{name}")})
    store = CampaignStore(config.store)
    evaluator = load_evaluator("emt", config.evaluator.parameters)
    dispatch = SerialDispatcher(store, evaluator, config.objective.property)
    return config, store, evaluator, dispatch


def _claims(store, name):
    cid = store.campaign_id(name)
    return [(e.round, e.fingerprint) for e in store.evaluations(cid)]


def test_pools_proposed_ahead_are_the_pools_a_round_by_round_run_proposes(tmp_path):
    config, store, evaluator, dispatch = _setup(tmp_path, "ahead")
    recorded = Stages()
    run_campaign(config, store, evaluator, dispatch, recorded)
    # rounds 1-3 were proposed in the proposal thread, during the last round's dispatch
    for round in (1, 2):
        [(_, _, thread, parents)] = recorded.proposals(round)
        assert thread.startswith("matforge-propose")
        # parents: the results of the rounds before the previous one
        rounds = {e.round for e in store.evaluations(store.campaign_id(config.name))
                  if e.id in parents}
        assert rounds == (set(range(round - 1)) if round > 1 else set())
    assert recorded.proposals(2)[0][3]  # round 2 mutates round 0's results
    # featurized there too, in a stage of its own; round 0's pool, proposed where it ran,
    # is featurized in the main thread's stage
    featurized = [(round, thread) for name, round, thread, _ in recorded.calls
                  if name == "featurize"]
    assert featurized[0] == (0, threading.main_thread().name)
    assert [r for r, _ in featurized[1:]] == [1, 2]
    assert all(thread.startswith("matforge-propose") for _, thread in featurized[1:])

    # the same campaign, one round at a time, each proposed where it runs (as a restarted
    # run would): the same claims, so the pipelined pools are the ones the setting defines
    config2, store2, evaluator2, dispatch2 = _setup(tmp_path, "serial")
    cid = store2.campaign_id(config2.name, config2.model_dump(mode="json"))
    serial = Stages()
    for round in range(3):
        run_round(config2, store2, cid, round, evaluator2, dispatch2, serial)
    assert all(thread == threading.main_thread().name for _, _, thread, _ in serial.calls)
    assert _claims(store2, config2.name) == _claims(store, config.name)
    assert len(_claims(store, config.name)) == 6
    store.close()
    store2.close()


def test_a_pool_proposed_from_parents_a_review_changed_is_proposed_again(tmp_path):
    config, store, evaluator, dispatch = _setup(tmp_path)
    cid = store.campaign_id(config.name, config.model_dump(mode="json"))
    recorded, ahead = Stages(), ProposalAhead()
    try:
        run_round(config, store, cid, 0, evaluator, dispatch, recorded, ahead=ahead)
        run_round(config, store, cid, 1, evaluator, dispatch, recorded, ahead=ahead)
        [(_, _, thread, parents)] = recorded.proposals(2)
        assert thread.startswith("matforge-propose") and len(parents) == 2
        # a person holds one of round 0's results for review before round 2 runs
        held = parents[0]
        store.set_status([held], "needs_review", note="flagged")
        run_round(config, store, cid, 2, evaluator, dispatch, recorded, ahead=ahead)
    finally:
        ahead.close()
    ahead_pool, again = recorded.proposals(2)
    assert again[2] == threading.main_thread().name
    assert held not in again[3] and len(again[3]) == 1
    store.close()


def test_a_campaign_stops_at_its_budget_with_no_pool_proposed_past_it(tmp_path):
    config, store, evaluator, dispatch = _setup(tmp_path)
    recorded = Stages()
    summary = run_campaign(config.model_copy(update={"budget": 4}), store, evaluator,
                           dispatch, recorded)
    assert summary["evaluations"] == 4
    assert sorted(c[1] for c in recorded.calls if c[0] == "propose") == [0, 1]
    store.close()


def test_a_result_takes_the_row_its_candidate_was_given(tmp_path, monkeypatch):
    config, store, evaluator, dispatch = _setup(tmp_path)
    cid = store.campaign_id(config.name, config.model_dump(mode="json"))
    features = stages.ResultFeatures(config)
    run_round(config, store, cid, 0, evaluator, dispatch, features=features)
    results = store.evaluations(cid, statuses=("accepted",))
    assert len(results) == 2
    fresh = stages.featurize(config, [e.input_structure() for e in results])
    made = []
    featurize = stages.featurize

    def counted(config, materials):
        made.append(len(materials))
        return featurize(config, materials)

    monkeypatch.setattr(stages, "featurize", counted)
    np.testing.assert_array_equal(features.rows(results), fresh)
    assert made == []  # the rows of the candidates they were
    # a run that did not claim them reads their structures from the store, once
    later = stages.ResultFeatures(config)
    np.testing.assert_array_equal(later.rows(results), fresh)
    np.testing.assert_array_equal(later.rows(results[::-1]), fresh[::-1])
    assert made == [2]
    assert later.rows([]).shape == (0, fresh.shape[1])
    store.close()


@pytest.mark.parametrize("ahead", [False, True])
def test_the_setting_is_read_from_the_campaign_file(ahead):
    config = parse_config({**CAMPAIGN, "generator": {"ahead": ahead}})
    assert config.generator.ahead is ahead
    assert parse_config({k: v for k, v in CAMPAIGN.items() if k != "generator"}
                        ).generator.ahead is False
