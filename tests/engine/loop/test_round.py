"""One round in the engine, without Prefect: claims, budget, resume, record."""

from __future__ import annotations

import pytest

from matforge.adapters import load_evaluator
from matforge.engine.config import ConfigError, parse_config
from matforge.engine.loop.round import (
    EvaluationCache,
    SerialDispatcher,
    run_campaign,
    run_round,
)
from matforge.engine.store.sql import STATUSES, CampaignStore

CAMPAIGN = {
    "name": "round-test",
    "elements": ["Cu", "Au", "Pt"],
    "generator": {"pool_size": 30, "max_atoms": 4},
    "batch_size": 4,
    "budget": 12,
    "evaluator": {"adapter": "emt", "parameters": {"fmax": 0.1, "max_steps": 60}},
    "anomaly": {"enabled": False},
    "seed": 5,
}


class Killed(BaseException):
    """Stands for the process dying after the round's claims were committed."""


def _kill(work):
    raise Killed


@pytest.fixture
def setup(tmp_path):
    config = parse_config({**CAMPAIGN, "store": f"sqlite:///{tmp_path / 's.db'}",
                           "workdir": str(tmp_path / "runs")})
    store = CampaignStore(config.store)
    evaluator = load_evaluator("emt", config.evaluator.parameters)
    dispatch = SerialDispatcher(store, evaluator, config.objective.property)
    cid = store.campaign_id(config.name, config.model_dump(mode="json"))
    yield config, store, evaluator, dispatch, cid
    store.close()


def test_a_review_between_runs_cannot_make_a_resumed_round_overspend(setup):
    config, store, evaluator, dispatch, cid = setup
    first = run_round(config, store, cid, 0, evaluator, dispatch)
    assert len(first.claimed) == 4 and first.evaluated == 4
    held = first.claimed[:2]
    store.set_status(held, "needs_review", note="flagged")  # out of training for round 1

    with pytest.raises(Killed):
        run_round(config, store, cid, 1, evaluator, _kill)
    before = {e.fingerprint for e in store.evaluations(cid, round=1)}
    assert len(before) == 4
    # a person accepts the flagged results while the campaign is stopped: round 1's
    # training set grows from 2 to 4 results, and its picks change
    store.set_status(held, "accepted", note="fine")
    resumed = run_round(config, store, cid, 1, evaluator, dispatch)

    in_round = store.evaluations(cid, round=1)
    assert len(in_round) == 4 == config.batch_size  # nothing claimed past the batch
    assert {e.fingerprint for e in in_round} == before and resumed.claimed == []
    assert all(e.status == "accepted" for e in in_round)
    assert resumed.evaluated == 4 and resumed.model_version == "gp-n2"  # picked before the review


def test_the_budget_is_a_hard_cap_when_it_is_lowered_between_runs(setup):
    config, store, evaluator, dispatch, cid = setup
    run_round(config, store, cid, 0, evaluator, dispatch)
    lower = config.model_copy(update={"budget": 6})
    result = run_round(lower, store, cid, 1, evaluator, dispatch)
    assert len(result.claimed) == 2
    assert store.count(cid, statuses=STATUSES) == 6
    summary = run_campaign(lower, store, evaluator, dispatch)
    assert summary["evaluations"] == 6 and summary["rounds"] == 2


def test_a_campaign_runs_to_its_budget_and_a_rerun_adds_nothing(setup):
    config, store, evaluator, dispatch, cid = setup
    seen = []
    summary = run_campaign(config, store, evaluator, dispatch, on_round=seen.append)
    assert summary["evaluations"] == 12 and summary["rounds"] == 3
    assert [r.round for r in seen] == [0, 1, 2]
    assert [len(r.claimed) for r in seen] == [4, 4, 4]
    assert seen[0].model_version is None and seen[1].model_version == "gp-n4"
    # each round records the cross-validated quality of the next round's model
    assert set(seen[-1].surrogate_metrics) >= {"rmse", "nll", "coverage90"}
    assert [r.result for r in store.rounds(cid)] == seen
    assert [r.model_version for r in store.rounds(cid)] == [None, "gp-n4", "gp-n8"]
    ids = [e.id for e in store.evaluations(cid)]
    assert run_campaign(config, store, evaluator, dispatch)["evaluations"] == 12
    assert [e.id for e in store.evaluations(cid)] == ids


def test_a_campaign_reads_whole_evaluations_only_where_they_changed(setup, monkeypatch):
    config, store, evaluator, dispatch, cid = setup
    read = []  # rows decoded by each whole read
    evaluations = store.evaluations

    def counted(*args, **kwargs):
        rows = evaluations(*args, **kwargs)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(store, "evaluations", counted)
    run_round(config, store, cid, 0, evaluator, dispatch)
    cache = EvaluationCache(store, cid)
    assert cache.read() == evaluations(cid)
    read.clear()
    run_campaign(config, store, evaluator, dispatch)
    # the run's first read takes the 4 of round 0; then rounds 1 and 2 each decode their 4
    # claims when claimed and again when evaluated (before: 3 whole reads a round); the
    # summary at the end reads all 12
    assert read == [4, 4, 4, 4, 4, 12] and store.count(cid, statuses=STATUSES) == 12
    # a change the run did not make (a person's review) is seen at the next read
    first = evaluations(cid)[0]
    store.set_status([first.id], "needs_review", note="looks odd")
    assert cache.read() == evaluations(cid)
    assert next(e for e in cache.read() if e.id == first.id).review_note == "looks odd"


def test_each_pick_is_stored_with_its_space_group_found_once(setup, monkeypatch):
    config, store, evaluator, dispatch, cid = setup
    from matforge.engine.loop import round as round_module
    from matforge.engine.materials import dedup

    found = dedup.space_group
    asked = []  # the fingerprint of each structure spglib was asked about

    def counted(structure):
        asked.append(dedup.fingerprint_of(structure))
        return found(structure)

    monkeypatch.setattr(dedup, "space_group", counted)
    monkeypatch.setattr(round_module, "space_group", counted)
    memo = dedup.MatchMemo()
    for r in range(3):
        run_round(config, store, cid, r, evaluator, dispatch, memo=memo)
    picked = store.evaluations(cid)
    assert len(picked) == 12
    for e in picked:  # stored with its own space group, as deduplication looks it up
        structure = e.input_structure()
        like = store.structures_like(cid, structure.composition.reduced_formula,
                                     found(structure))
        assert (e.fingerprint, found(structure)) in [(fp, g) for fp, _, g in like]
    # deduplication's lookups and the claims share the run's memo: no structure twice
    assert len(asked) == len(set(asked)) > 0


@pytest.mark.parametrize("field, change", [
    ("objective.property", {"objective": {"property": "formation_energy_per_atm"}}),
    ("constraints.0.property",
     {"constraints": [{"property": "band_gap", "above": 0.5}]}),
])
def test_properties_the_adapter_does_not_report_are_refused_before_anything_is_written(
    setup, field, change
):
    config, store, evaluator, dispatch, cid = setup
    bad = parse_config({**CAMPAIGN, **change, "name": "misspelt", "store": config.store})
    with pytest.raises(ConfigError, match=rf"field '{field}': adapter 'emt' does not report"):
        run_campaign(bad, store, evaluator, dispatch)
    assert "misspelt" not in store.campaign_names()


def test_elements_the_adapter_has_no_parameters_for_are_refused_before_anything_is_written(
    setup,
):
    config, store, evaluator, dispatch, cid = setup
    iron = parse_config({**config.model_dump(), "name": "iron", "elements": ["Cu", "Fe"]})
    with pytest.raises(ConfigError, match="field 'elements': adapter 'emt' has no parameters "
                                          "for Fe"):
        run_campaign(iron, store, evaluator, dispatch)
    assert "iron" not in store.campaign_names()
