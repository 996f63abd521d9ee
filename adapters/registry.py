"""Find and build evaluators registered under the ``matforge.adapters`` entry points."""

from __future__ import annotations

from pathlib import Path
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


def build_evaluators(config, base: str | Path | None = None, source: str = "campaign"):
    """The campaign's evaluator and screener (None without ``screen``), checked against it.

    The objectives, constraints and the screen's property must be reported by the
    adapters, the elements supported, the resources valid, and (with ``base``, the
    campaign file's directory) path parameters kept under ``base``. Returns
    ``(config, evaluator, screener)``, the config with its paths resolved. Raises
    :class:`~matforge.engine.config.ConfigError` naming the field.
    """
    from matforge.adapters.base import check_resources
    from matforge.engine.config import (
        ConfigError,
        check_elements,
        check_executor,
        check_paths,
        check_plugins,
        check_properties,
        check_screen,
    )

    check_plugins(config, source)

    try:
        evaluator = load_evaluator(config.evaluator.adapter, config.evaluator.parameters)
    except (AdapterError, ValueError) as error:
        raise ConfigError(f"{source}: field 'evaluator': {error}") from None
    screener = None
    if config.screen is not None:
        try:
            screener = load_evaluator(config.screen.adapter, config.screen.parameters)
        except (AdapterError, ValueError) as error:
            raise ConfigError(f"{source}: field 'screen': {error}") from None
        check_screen(config, screener, source)
    adapter = type(evaluator)
    for field, settings, instance in (("evaluator", config.evaluator, evaluator),
                                      ("screen", config.screen, screener)):
        inputs = getattr(type(instance), "inputs", ("structure",))
        if instance is not None and config.candidates not in inputs:
            raise ConfigError(
                f"{source}: field '{field}': adapter {settings.adapter!r} takes "
                f"{' or '.join(i + 's' for i in inputs)}, and this campaign's candidates are "
                f"{config.candidates}s (candidates: {config.candidates})")
    check_properties(config, config.evaluator.adapter, evaluator.implemented_properties, source)
    check_elements(config, config.evaluator.adapter, adapter.supported_elements, source)
    if base is not None:
        config = check_paths(config, base, adapter.path_parameters, source,
                             type(screener).path_parameters if screener else ())
    check_resources(config, adapter, source)
    check_executor(config, source)
    return config, evaluator, screener
