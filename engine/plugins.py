"""One factory for every plug-in: generators, featurizers, surrogates, acquisitions, adapters.

A plug-in is a class registered under an entry-point group in its package's
``pyproject.toml``; matforge's own built-ins register the same way. Only
registered entry points are loaded, never a path or an import string from a
campaign file, and the loaded class must subclass the group's base.
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points

GROUPS = {
    "generators": "matforge.generators",
    "featurizers": "matforge.featurizers",
    "surrogates": "matforge.surrogates",
    "acquisitions": "matforge.acquisitions",
    "adapters": "matforge.adapters",
}
"""Entry-point groups by the short name a campaign file's section uses."""


class PluginError(ValueError):
    """A plug-in that is not installed or cannot be loaded; the message names it and why."""


def _check_group(group: str) -> str:
    if group not in GROUPS:
        raise PluginError(f"unknown plug-in group {group!r}; groups: {', '.join(GROUPS)}")
    return GROUPS[group]


def available(group: str) -> list[str]:
    """Names installed in a group (``"surrogates"``, ...), sorted."""
    return sorted({ep.name for ep in entry_points(group=_check_group(group))})


def describe(group: str, name: str) -> str:
    """``module:Class`` a registered name points at."""
    for ep in entry_points(group=_check_group(group)):
        if ep.name == name:
            return ep.value
    raise PluginError(_not_installed(group, name))


def _not_installed(group: str, name: str) -> str:
    kind = group.removesuffix("s")
    installed = available(group)
    close = difflib.get_close_matches(str(name), installed, n=1)
    return (
        f"{kind} {name!r} is not installed (entry-point group {GROUPS[group]!r})"
        + (f" (did you mean {close[0]!r}?)" if close else "")
        + f"; installed: {', '.join(installed) or 'none'}"
    )


def load(group: str, name: str, base: type) -> type:
    """The class registered as ``name`` in ``group``, checked to subclass ``base``.

    Raises :class:`PluginError` naming the plug-in when it is not installed, fails
    to import or is not a ``base``. A class once loaded is kept: reading the installed
    entry points costs ~30 ms, and a round asks for its generators every time (6 s of a
    200-evaluation campaign's proposals, ``benchmarks/orchestration.py``); a name not yet
    loaded is looked up afresh, so a plug-in installed meanwhile is found.
    """
    if isinstance(name, str) and (group, name, base) in _LOADED:
        return _LOADED[group, name, base]
    found = [ep for ep in entry_points(group=_check_group(group)) if ep.name == name]
    if not isinstance(name, str) or not found:
        raise PluginError(_not_installed(group, str(name)))
    kind = group.removesuffix("s")
    try:
        cls = found[0].load()
    except Exception as error:  # a broken plug-in must not take the campaign down with a traceback
        raise PluginError(
            f"{kind} {name!r} ({found[0].value}) failed to import: {error}"
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"{kind} {name!r} ({found[0].value}) is not a subclass of {base.__name__}"
        )
    _LOADED[group, name, base] = cls
    return cls


_LOADED: dict[tuple[str, str, type], type] = {}
