"""Evaluators behind one contract: ``Evaluator(**params).evaluate(structure, workdir)``.

Adapters register under the entry-point group ``matforge.adapters`` and are loaded
by name through :func:`load_evaluator`. Nothing here imports Prefect.
"""

from matforge.adapters.base import EvaluationError, EvaluationResult, Evaluator
from matforge.adapters.registry import AdapterError, available_adapters, load_evaluator

__all__ = [
    "AdapterError",
    "EvaluationError",
    "EvaluationResult",
    "Evaluator",
    "available_adapters",
    "load_evaluator",
]
