"""Checks of what comes in: results before they become training data, and whole-number arguments.

A broken calculation (NaN energy, forces of the wrong shape, an energy no
material has, an unconverged relaxation) must never reach the surrogate: such
a result is stored as ``failed`` with the reason from :class:`ResultError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MAX_ABS_ENERGY_PER_ATOM = 1.0e6
"""eV/atom; all-electron total energies of heavy atoms are ~1e5, anything larger is a blow-up."""

MAX_ABS_FORMATION_ENERGY = 20.0
"""eV/atom; the most stable compounds known sit near -5 eV/atom."""


def positive_int(name: str, value) -> int:
    """``value`` as an int where it is a whole number >= 1 (2.0 passes; True, 2.5, "2" do not).

    Raises ValueError naming ``name`` otherwise.
    """
    whole = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and float(value).is_integer()
    )
    if not whole or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


class ResultError(ValueError):
    """A result that cannot be accepted; the message says why."""


def _finite_number(result: Mapping[str, Any], name: str) -> float | None:
    value = result.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultError(f"{name} is {value!r}, not a number")
    if not np.isfinite(value):
        raise ResultError(f"{name} is {value}, not finite")
    return float(value)


def validate_result(result: Mapping[str, Any], n_atoms: int, objective: str) -> float:
    """Check one evaluation result and return its objective value.

    Parameters
    ----------
    result : an :class:`~matforge.adapters.EvaluationResult` as a dict
    n_atoms : number of atoms in the evaluated structure
    objective : name of the property the campaign optimizes, a field of the
        result or an entry of its ``properties``

    Raises
    ------
    ResultError
        A non-finite energy (none is fine: a lab measures a property, not an
        energy), forces not of shape (n_atoms, 3) or not
        finite, energy per atom or formation energy outside physical bounds,
        a ``converged`` flag that is false, or no finite objective.
    """
    if not isinstance(result, Mapping):
        raise ResultError(f"result is a {type(result).__name__}, not a mapping")
    if result.get("converged", True) is False:
        raise ResultError("evaluation did not converge")
    energy = _finite_number(result, "energy")
    per_atom = _finite_number(result, "energy_per_atom")
    if per_atom is None and energy is not None:
        per_atom = energy / n_atoms
    if per_atom is not None and abs(per_atom) > MAX_ABS_ENERGY_PER_ATOM:
        raise ResultError(
            f"energy per atom {per_atom:.4g} eV is beyond ±{MAX_ABS_ENERGY_PER_ATOM:g} eV: "
            "not physical"
        )
    if energy is not None and not np.isclose(energy, per_atom * n_atoms, rtol=1e-6, atol=1e-6):
        raise ResultError(
            f"energy {energy:.6g} eV is not energy_per_atom × {n_atoms} atoms "
            f"({per_atom * n_atoms:.6g} eV)"
        )
    formation = _finite_number(result, "formation_energy_per_atom")
    if formation is not None and abs(formation) > MAX_ABS_FORMATION_ENERGY:
        raise ResultError(
            f"formation energy {formation:.4g} eV/atom is beyond ±{MAX_ABS_FORMATION_ENERGY:g} "
            "eV/atom: not physical"
        )
    forces = result.get("forces")
    if forces is not None:
        try:
            array = np.asarray(forces, dtype=float)
        except (TypeError, ValueError):
            raise ResultError("forces are not a numeric array") from None
        if array.shape != (n_atoms, 3):
            raise ResultError(f"forces have shape {array.shape}, expected ({n_atoms}, 3)")
        if not np.isfinite(array).all():
            raise ResultError("forces contain NaN or infinity")
    properties = result.get("properties") or {}
    if objective in properties:
        value = _finite_number(properties, objective)
    else:
        value = _finite_number(result, objective)
    if value is None:
        raise ResultError(f"result has no {objective!r}")
    return value
