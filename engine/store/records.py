"""Typed records the store keeps beside the evaluations: what each round did."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class RoundResult(BaseModel):
    """What one round did; JSON-serialisable, stored when the round finishes.

    ``claimed`` lists the evaluations claimed in this round, ``evaluated`` counts
    the evaluations dispatched (a resumed round also finishes earlier rounds'
    leftovers), ``flagged`` the results held for review, ``best`` the best
    training objective after the round. ``surrogate_metrics`` is the held-out
    quality of the model that picked this round (RMSE, MAE, NLL, 90 % coverage,
    miscalibration area: leave-one-out for a GP, 5-fold cross-validation otherwise;
    ``engine/loop/campaign.py:model_quality``), ``pareto`` the front and
    hypervolume of a multi-objective campaign.
    """

    model_config = ConfigDict(extra="ignore")

    round: int = Field(ge=0)
    n_pool: int = 0
    model_version: str | None = None
    claimed: list[int] = Field(default_factory=list)
    evaluated: int = 0
    flagged: list[int] = Field(default_factory=list)
    best: float | None = None
    surrogate: str | None = None
    surrogate_metrics: dict[str, float] | None = None
    pareto: dict | None = None
    seconds: float = 0.0
    note: str | None = None
    generated: dict[str, int] = Field(
        default_factory=dict, description="candidates in the pool by generator")
    refused: dict[str, int] = Field(
        default_factory=dict, description="proposals the validity filters refused, by reason")


@dataclass(frozen=True)
class RoundRecord:
    """A round as stored: started, and finished with its :class:`RoundResult` or not yet."""

    round: int
    n_pool: int
    model_version: str | None
    result: RoundResult | None

    @property
    def finished(self) -> bool:
        return self.result is not None
