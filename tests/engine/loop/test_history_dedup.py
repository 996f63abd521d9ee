"""A round never proposes what the campaign dispatched before, as StructureMatcher sees it:
a relaxed (strained) copy of a candidate stored earlier has another fingerprint, yet is the
same material."""

from __future__ import annotations

from pymatgen.analysis.structure_matcher import StructureMatcher

from matforge.engine.config import parse_config
from matforge.engine.loop import campaign as stages
from matforge.engine.loop.round import history
from matforge.engine.materials.dedup import space_group
from matforge.engine.store.sql import CampaignStore


def test_a_round_does_not_propose_a_stored_material_under_another_fingerprint(tmp_path):
    config = parse_config({
        "name": "cuau", "elements": ["Cu", "Au"],
        "generator": {"max_atoms": 4, "lattices": ["fcc"], "pool_size": 12,
                      "mutation_fraction": 0.0},
        "objective": {"property": "energy_per_atom", "direction": "minimize"},
        "batch_size": 2, "budget": 4, "store": f"sqlite:///{tmp_path / 'store.db'}",
        "workdir": str(tmp_path / "runs"),
        "evaluator": {"adapter": "emt"},
    })
    first = stages.propose(config, 0, [], set())
    assert len(first) >= 4
    store = CampaignStore(config.store)
    cid = store.campaign_id(config.name, {})
    stored = []
    for k, cand in enumerate(first[:4]):  # dispatched and relaxed: strained by 3 %
        relaxed = cand.structure.copy()
        relaxed.apply_strain([0.03, -0.02, 0.01])
        stored.append(relaxed)
        store.claim(cid, 0, relaxed, f"relaxed-{k}", cand.generator, "emt", {},
                    space_group=space_group(relaxed) if k % 2 else None)
    index = history(store, cid, 1)
    assert not any(index.has_fingerprint(c.fingerprint) for c in first[:4])
    pool = stages.propose(config, 1, [], index)
    matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True)
    assert not [c for c in pool for s in stored if matcher.fit(c.structure, s)]
    # what was not stored is still proposed
    assert {c.fingerprint for c in first[4:]} <= {c.fingerprint for c in pool}
    store.close()
