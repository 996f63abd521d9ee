"""The conformance kit: does an installed adapter keep the evaluator contract?

``matforge adapters check NAME`` runs :func:`check_adapter`, which loads the
adapter by its entry point and checks, running it for real in the child
process a campaign would use:

- declarations: ``implemented_properties`` with a unit for each, ``resources``;
- result schema: an :class:`EvaluationResult` that reports every declared
  property as a finite number, and no undeclared scalar property;
- idempotency: a second run in the same working directory gives the same values;
- failure reporting: an element outside ``supported_elements`` raises
  :class:`EvaluationError` (not a crash of another kind); the parameters in
  ``conformance_unconverged`` give ``converged=False`` or an EvaluationError;
  a run stopped at a deadline leaves no process behind;
- resources: the run fits the declared walltime.

An adapter that is trained on a campaign's results (``trainable``, such as the own
potential's screen) is first fitted on its ``conformance_training()`` results.

Each problem is one line; an empty list means the adapter conforms.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pymatgen.core import Element, Lattice, Structure

from matforge.adapters.base import (
    EvaluationError,
    EvaluationResult,
    Evaluator,
    Resources,
    declared_units,
)
from matforge.engine import plugins
from matforge.engine.loop.isolate import EvaluationTimeout
from matforge.engine.loop.results import RESULT_FILE, evaluate_isolated

TOLERANCE = 1e-6
"""Relative difference allowed between two runs in the same directory."""


def _build(cls: type, parameters: dict[str, Any]) -> Evaluator:
    evaluator = cls(**parameters)
    if getattr(cls, "trainable", False):  # a screen trained on results: on the adapter's own
        evaluator = evaluator.fit(cls.conformance_training())
    return evaluator


def test_structure(cls: type) -> Structure:
    """A small cell the adapter can evaluate: the adapter's own ``conformance_structure()``
    if it has one, else fcc Cu (or its first supported element) with one atom swapped
    for a second supported element, so formation energies are not trivially zero."""
    own = getattr(cls, "conformance_structure", None)
    if callable(own):
        return own()
    supported = sorted(cls.supported_elements or {"Cu", "Au"})
    first = "Cu" if "Cu" in supported else supported[0]
    second = next((e for e in ("Au", "Ni", "Pt", "Ag") if e in supported and e != first), first)
    a = 2 * (Element(first).atomic_radius or 1.3) * math.sqrt(2)
    return Structure(Lattice.cubic(a), [second, first, first, first],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _run(cls, parameters, structure, workdir: Path, timeout: float) -> dict:
    return evaluate_isolated(partial(_build, cls, parameters), structure, workdir,
                             "conformance", timeout, "conformance")


def _values(result: EvaluationResult, names) -> dict[str, float | None]:
    values = {}
    for name in names:
        try:
            values[name] = result.get(name)
        except KeyError:
            values[name] = None
    return values


def check_adapter(name: str, parameters: dict[str, Any] | None = None,
                  timeout: float = 600.0) -> list[str]:
    """Problems that keep adapter ``name`` (with ``parameters``) from the contract."""
    parameters = dict(parameters or {})
    try:
        cls = plugins.load("adapters", name, Evaluator)
    except plugins.PluginError as error:
        return [str(error)]
    problems: list[str] = []

    try:
        instance = _build(cls, parameters)
    except Exception as error:
        return [f"constructor: {type(error).__name__}: {error}"]
    units = declared_units(instance)  # an adapter may declare per instance (a lab's properties)
    if not units:
        problems.append("implemented_properties: declares no property")
    for prop, unit in units.items():
        if not isinstance(unit, str) or not unit:
            problems.append(f"implemented_properties: {prop!r} has no unit "
                            "(declare {name: unit}, e.g. {'energy_per_atom': 'eV/atom'})")
    if not isinstance(cls.resources, Resources):
        problems.append(f"resources: {cls.resources!r} is not a matforge Resources")

    structure = test_structure(cls)
    root = Path(tempfile.mkdtemp(prefix=f"matforge-check-{name}-"))
    try:
        workdir = root / "run"
        start = time.monotonic()
        try:
            first = EvaluationResult.model_validate(
                _run(cls, parameters, structure, workdir, timeout))
        except ValidationError as error:
            return problems + [f"result: not an EvaluationResult ({error.errors()[0]['msg']})"]
        except Exception as error:
            return problems + [f"evaluate: {type(error).__name__}: {error}"]
        took = time.monotonic() - start
        values = _values(first, units)
        for prop, value in values.items():
            if value is None:
                problems.append(f"result: declared property {prop!r} is missing")
            elif not math.isfinite(value):
                problems.append(f"result: {prop!r} is {value}, not finite")
        for extra in sorted(set(first.properties) - set(units)):
            problems.append(f"result: reports {extra!r}, which implemented_properties does "
                            "not declare")
        if isinstance(cls.resources, Resources) and took > cls.resources.walltime:
            problems.append(f"resources: the test run took {took:.0f} s, more than the "
                            f"declared walltime of {cls.resources.walltime:g} s")

        (workdir / RESULT_FILE).unlink()
        try:
            again = _values(EvaluationResult.model_validate(
                _run(cls, parameters, structure, workdir, timeout)), units)
        except Exception as error:
            problems.append(f"idempotency: a second run in the same directory failed: "
                            f"{type(error).__name__}: {error}")
        else:
            for prop, value in values.items():
                other = again[prop]
                if value is not None and (other is None or not math.isclose(
                        value, other, rel_tol=TOLERANCE, abs_tol=1e-9)):
                    problems.append(f"idempotency: {prop!r} was {value!r}, then {other!r} in "
                                    "the same directory")

        problems += _failure_reporting(cls, parameters, structure, root, timeout)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return problems


def _failure_reporting(cls, parameters, structure, root: Path, timeout: float) -> list[str]:
    problems = []
    if cls.supported_elements is not None:
        foreign = next(e.symbol for e in Element if e.symbol not in cls.supported_elements)
        bad = structure.copy()
        bad.replace(0, foreign)
        try:
            _run(cls, parameters, bad, root / "unsupported", timeout)
            problems.append(f"failure: a structure with {foreign} (not in supported_elements) "
                            "was evaluated instead of refused with EvaluationError")
        except EvaluationError:
            pass
        except Exception as error:
            problems.append(f"failure: {foreign} (not in supported_elements) raised "
                            f"{type(error).__name__}, not EvaluationError: {error}")
    if cls.conformance_unconverged is not None:
        try:
            result = EvaluationResult.model_validate(_run(
                cls, {**parameters, **cls.conformance_unconverged}, structure,
                root / "unconverged", timeout))
            if result.converged:
                problems.append(f"failure: with {cls.conformance_unconverged} the result still "
                                "says converged=True")
        except EvaluationError:
            pass
        except Exception as error:
            problems.append(f"failure: with {cls.conformance_unconverged} it raised "
                            f"{type(error).__name__}, not EvaluationError or converged=False")
    # a deadline stops the evaluation and whatever it started
    try:
        _run(cls, parameters, structure, root / "deadline", 0.05)
    except EvaluationTimeout:
        time.sleep(0.5)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if str(root / "deadline") in ps:
            problems.append("timeout: a process started in the evaluation's directory "
                            "survived its deadline")
    except Exception:
        pass  # finished (or failed) within the deadline: nothing to stop
    return problems
