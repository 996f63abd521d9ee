"""Find and build evaluators registered under the ``matforge.adapters`` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from matforge.adapters.base import Evaluator

GROUP = "matforge.adapters"


class AdapterError(ValueError):
    """An adapter that cannot be loaded or built; the message names it and why."""


def available_adapters() -> list[str]:
    """Names registered in the ``matforge.adapters`` entry-point group."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load_evaluator(name: str, parameters: dict[str, Any] | None = None) -> Evaluator:
    """Build the adapter registered as ``name`` with ``parameters``.

    Only registered entry points are loaded, never a path or import string from
    a campaign file.
    """
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise AdapterError(
            f"adapter {name!r} is not registered (entry-point group {GROUP!r}); "
            f"available: {', '.join(available_adapters()) or 'none'}"
        )
    try:
        cls = found[0].load()
    except Exception as error:  # a broken plug-in must not take the campaign down with a traceback
        raise AdapterError(f"adapter {name!r} failed to import: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
        raise AdapterError(f"adapter {name!r} ({found[0].value}) is not an Evaluator subclass")
    try:
        return cls(**(parameters or {}))
    except TypeError as error:
        raise AdapterError(f"adapter {name!r}: bad parameters: {error}") from None
