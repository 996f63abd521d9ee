"""A round's pool from mixed generators: filtered, counted by generator and by refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from matforge.adapters import load_evaluator
from matforge.engine.config import parse_config
from matforge.engine.loop import campaign as stages
from matforge.engine.loop.round import SerialDispatcher, run_campaign
from matforge.engine.materials.chemistry import charge_states
from matforge.engine.store.sql import CampaignStore

SEED = Path(__file__).resolve().parents[3] / "examples" / "seeds" / "LiCoO2.cif"


def _config(tmp_path: Path, **generator) -> dict:
    return {
        "name": "oxides", "elements": ["Li", "Mn", "O"],
        "generator": {"max_atoms": 16, "pool_size": 40, "charge_balanced": True,
                      "sources": [
                          {"kind": "charge-balanced", "share": 0.4},
                          {"kind": "substitution", "share": 0.2,
                           "parameters": {"seeds": [str(SEED)]}},
                          {"kind": "symmetric", "share": 0.2,
                           "parameters": {"space_groups": [166, 225, 227]}},
                          {"kind": "learned", "share": 0.2, "parameters": {"min_results": 4}},
                      ], **generator},
        "objective": {"property": "energy_per_atom", "direction": "minimize"},
        "batch_size": 4, "budget": 8,
        "store": f"sqlite:///{tmp_path / 'store.db'}", "workdir": str(tmp_path / "runs"),
        "anomaly": {"enabled": False},
        "evaluator": {"adapter": "sleep", "parameters": {"seconds": 0.0}},
    }


def test_the_pool_is_valid_and_says_what_made_it_and_what_was_refused(testing_adapters, tmp_path):
    config = parse_config(_config(tmp_path))
    pool = stages.propose(config, 0, [], set())
    assert len(pool) >= 20
    for candidate in pool:
        counts = {e.symbol: int(round(a)) for e, a in candidate.structure.composition.items()}
        assert set(counts) <= {"Li", "Mn", "O"} and charge_states(counts) is not None
        assert len(candidate.structure) <= 16
    assert {"charge-balanced", "substitution", "symmetric"} <= set(pool.generated)
    assert "learned" not in pool.generated  # nothing to learn from before results exist
    assert sum(pool.generated.values()) == len(pool)
    # the decoration fill makes metal-like cells of Li, Mn and O: most are refused
    assert pool.refused.get("not charge-balanced", 0) > 0
    again = stages.propose(config, 0, [], set())
    assert [c.fingerprint for c in again] == [c.fingerprint for c in pool]  # seeded


def test_each_rounds_record_counts_generators_and_refusals(tmp_path, testing_adapters):
    config = parse_config(_config(tmp_path))
    store = CampaignStore(config.store)
    evaluator = load_evaluator("sleep", {"seconds": 0.0})
    run_campaign(config, store, evaluator, SerialDispatcher(store, evaluator, "energy_per_atom"))
    rounds = store.rounds(store.campaign_id("oxides"))
    assert len(rounds) == 2
    for record in rounds:
        assert sum(record.result.generated.values()) == record.result.n_pool
        assert record.result.refused
    assert "learned" in rounds[1].result.generated  # trained on round 0's four results
    store.close()


def test_a_generator_path_parameter_resolves_beside_the_campaign_file(tmp_path):
    from matforge.engine.config import ConfigError, check_paths

    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "x.cif").write_text(SEED.read_text())
    raw = _config(tmp_path)
    raw["generator"]["sources"][1]["parameters"]["seeds"] = ["seeds/x.cif"]
    config = check_paths(parse_config(raw), tmp_path)
    assert config.generator.sources[1].parameters["seeds"] == [str(tmp_path / "seeds" / "x.cif")]
    raw["generator"]["sources"][1]["parameters"]["seeds"] = ["../x.cif"]
    with pytest.raises(ConfigError, match=r"generator.sources.1.parameters.seeds"):
        check_paths(parse_config(raw), tmp_path)
