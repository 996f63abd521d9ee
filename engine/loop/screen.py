"""Screen every proposed candidate with a cheap evaluator before the expensive one picks.

A universal ML potential relaxes a small cell in a second where DFT takes minutes:
run it on the whole pool, and let its value be a feature of the surrogate (a
low-fidelity estimate is the most informative feature there is) and, with
``screen.keep``, send only the candidates it ranks best on to selection.

The screen runs in one child process (:func:`~matforge.engine.loop.isolate.run_isolated`)
for all candidates still to screen, so a potential's model loads once per round, not
once per candidate. Each candidate's result is written to its own directory under
``<workdir>/<campaign>/screen/`` before the next one starts, keyed by the screen's
adapter, parameters and the candidate's fingerprint; a round resumed after a kill,
and a later round meeting the same structure, reads it instead of screening again.
A candidate whose screen fails or passes ``screen.timeout`` is recorded as failed
(``{"error": ...}``) and not selected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from matforge.engine.config import CampaignConfig
from matforge.engine.loop.campaign import result_value
from matforge.engine.loop.isolate import ChildDied, EvaluationTimeout, run_isolated
from matforge.engine.loop.results import read_result, write_result
from matforge.engine.materials.structures import Material, material_as_dict, material_from_dict

STARTED = "screen-started"
"""Marker written before a candidate's screen starts: a child that dies leaves it behind,
naming the candidate that killed it."""


def screen_key(adapter: str, parameters: dict[str, Any], fingerprint: str,
               version: str | None = None) -> str:
    """What makes one screen result: the adapter, its parameters, the structure and, for a
    screen trained on the campaign's results, the version of its training."""
    text = json.dumps([adapter, parameters, fingerprint] + ([version] if version else []),
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def screen_dir(config: CampaignConfig, fingerprint: str) -> Path:
    return Path(config.workdir) / config.name / "screen" / fingerprint[:16]


def screen_property(config: CampaignConfig) -> str:
    return config.screen.property or config.objective.property


def screen_maximizes(config: CampaignConfig) -> bool:
    direction = config.screen.direction or config.objective.direction
    return direction == "maximize"


def _screen_all(make_screener: Callable[[], Any], items: list[tuple[dict, str, str]]) -> None:
    """Screen each ``(structure, workdir, key)`` in turn, writing each result (runs in the
    child); an adapter's exception is that candidate's result, not the batch's."""
    from matforge.engine.loop.round import describe_error

    screener = make_screener()
    for structure, workdir, key in items:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / STARTED).write_text(key)
        try:
            result = screener.evaluate(material_from_dict(structure), workdir).model_dump()
        except Exception as error:  # noqa: BLE001 - recorded as this candidate's failure
            result = {"error": describe_error(error)}
        write_result(workdir, key, result)


def screen_values(
    config: CampaignConfig,
    make_screener: Callable[[], Any],
    structures: Sequence[Material],
    fingerprints: Sequence[str],
) -> np.ndarray:
    """The screen's property of each structure, array of shape (n_structures,); NaN where
    the screen failed. Screens only structures with no result on disk yet."""
    adapter, parameters = config.screen.adapter, config.screen.parameters
    version = getattr(make_screener(), "version_", None)
    keys = [screen_key(adapter, parameters, fp, version) for fp in fingerprints]
    dirs = [screen_dir(config, fp) for fp in fingerprints]
    todo = {}
    for structure, workdir, key in zip(structures, dirs, keys):
        if key not in todo and read_result(workdir, key) is None:
            todo[key] = (material_as_dict(structure), str(workdir), key)
    while todo:
        items = list(todo.values())
        for _, workdir, _ in items:  # left by a run killed mid-screen: not this child's doing
            (Path(workdir) / STARTED).unlink(missing_ok=True)
        try:
            run_isolated(_screen_all, (make_screener, items), config.screen.timeout * len(items),
                         label=f"screen of {len(items)} candidate(s)")
        except (EvaluationTimeout, ChildDied) as error:
            # the candidate being screened when the child ended failed; the others run again
            for _, workdir, key in items:
                started = Path(workdir) / STARTED
                if read_result(workdir, key) is None and started.exists():
                    write_result(workdir, key, {"error": f"{type(error).__name__}: {error}"})
                    break
            else:
                raise
        todo = {k: item for k, item in todo.items() if read_result(item[1], k) is None}
    name = screen_property(config)
    values = [result_value(read_result(workdir, key), name) for workdir, key in zip(dirs, keys)]
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def with_screen(X: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Features X : (n, n_features) with the screen's values as one more column; a missing
    value (a training structure the screen failed on) takes the median of the others."""
    column = np.asarray(values, dtype=float).copy()
    finite = np.isfinite(column)
    column[~finite] = np.median(column[finite]) if finite.any() else 0.0
    return np.column_stack([X, column])


def keep_best(config: CampaignConfig, values: np.ndarray, drop_failed: bool = True) -> np.ndarray:
    """Indices of the candidates that go on to selection, best first: the best
    ``screen.keep`` (all when it is not set) of those the screen evaluated. With
    ``drop_failed=False`` (a screen trained on the campaign's results, which cannot
    predict what it has not seen) the others follow them, in pool order."""
    ok = np.flatnonzero(np.isfinite(values))
    order = ok[np.argsort(-values[ok] if screen_maximizes(config) else values[ok], kind="stable")]
    if not drop_failed:
        order = np.concatenate([order, np.flatnonzero(~np.isfinite(values))])
    return order if config.screen.keep is None else order[: config.screen.keep]


def train_screener(screener: Any, training: Sequence[Any]) -> Any | None:
    """A screen trained on the campaign's results (``screener.fit`` on the accepted
    evaluations' result dicts), or None while there are too few to train on."""
    return screener.fit([e.result for e in training])
