"""A campaign's stop criteria: a target reached, or rounds without a better best."""

from __future__ import annotations

from matforge.engine.config import parse_config
from matforge.engine.loop.round import stop_reason
from matforge.engine.store.records import RoundRecord, RoundResult


def _rounds(bests):
    return [RoundRecord(i, 10, None, RoundResult(round=i, best=b)) for i, b in enumerate(bests)]


def _config(direction="minimize", **stop):
    return parse_config({"name": "c", "elements": ["Cu"], "stop": stop,
                         "objective": {"property": "energy_per_atom", "direction": direction}})


def test_a_target_reached_in_the_objectives_direction_stops_the_campaign():
    assert stop_reason(_config(target=-0.2), _rounds([-0.1, -0.15])) is None
    reason = stop_reason(_config(target=-0.2), _rounds([-0.1, -0.25]))
    assert reason == "the best energy_per_atom -0.25 reached the target -0.2 (stop.target)"
    assert stop_reason(_config("maximize", target=2.0), _rounds([1.0, 2.5])) is not None
    assert stop_reason(_config("maximize", target=2.0), _rounds([1.0, 1.5])) is None


def test_rounds_without_a_better_best_stop_the_campaign_after_patience():
    config = _config(patience=2)
    assert stop_reason(config, _rounds([-0.1, -0.2, -0.2])) is None  # one flat round
    reason = stop_reason(config, _rounds([-0.1, -0.2, -0.2, -0.2]))
    assert reason == ("2 round(s) in a row without a better energy_per_atom than -0.2 "
                      "(stop.patience)")
    assert stop_reason(config, _rounds([-0.1, -0.2, -0.2, -0.3])) is None
    assert stop_reason(_config(), _rounds([-0.1] * 10)) is None  # no criteria: budget only
    unfinished = _rounds([-0.1, -0.2, -0.2]) + [RoundRecord(3, 10, None, None)]
    assert stop_reason(config, unfinished) is None  # a round still running does not count
