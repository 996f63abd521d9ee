"""Find and build evaluators registered under the ``matforge.adapters`` entry points."""

from __future__ import annotations

from typing import Any

from matforge.adapters.base import Evaluator
from matforge.engine import plugins

GROUP = plugins.GROUPS["adapters"]


class AdapterError(ValueError):
    """An adapter that cannot be loaded or built; the message names it and why."""


def available_adapters() -> list[str]:
    """Names registered in the ``matforge.adapters`` entry-point group."""
    return plugins.available("adapters")


def load_evaluator(name: str, parameters: dict[str, Any] | None = None) -> Evaluator:
    """Build the adapter registered as ``name`` with ``parameters``.

    Only registered entry points are loaded, never a path or import string from
    a campaign file (:func:`matforge.engine.plugins.load`).
    """
    try:
        cls = plugins.load("adapters", name, Evaluator)
    except plugins.PluginError as error:
        raise AdapterError(str(error)) from error.__cause__
    try:
        return cls(**(parameters or {}))
    except TypeError as error:
        raise AdapterError(f"adapter {name!r}: bad parameters: {error}") from None
