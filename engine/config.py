"""Campaign files: one YAML document validated by pydantic.

A campaign file names everything a run needs, so two runs of the same file do
the same science. Validation happens before anything is written; an invalid
file raises :class:`ConfigError` with one message naming the field and why.
Types are strict (``budget: true`` or ``batch_size: '4'`` are refused, not
coerced), a file is at most :data:`MAX_FILE_BYTES` and, with its YAML aliases
expanded, at most :data:`MAX_NODES` values, and relative paths stay under the
campaign file's directory (:func:`check_paths`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

LATTICES = ("fcc", "bcc", "hcp")
SHARED_GENERATOR_SETTINGS = ("lattices", "max_atoms", "max_species", "charge_balanced")
"""Fields of the ``generator`` section every generator receives when its constructor
takes them, beside the campaign's ``elements``."""


Find = Literal["best", "top_share"]
"""A campaign's goal: the best few the budget can measure, or the top share of all candidates
(``engine.acquisition.strategy.Strategy.find``)."""


class ConfigError(ValueError):
    """A campaign file that cannot be run; the message names the field and the reason."""


MAX_FILE_BYTES = 1_000_000
"""Largest campaign file read; a real one is a few hundred bytes."""
MAX_NODES = 100_000
"""Most values (mappings, lists, scalars) a campaign file may hold once its YAML aliases are
expanded, so that an alias bomb ("billion laughs") is refused instead of expanded."""
MAX_SHOWN = 80
"""Characters of a refused value shown in an error message."""


class _Section(BaseModel):
    # strict: `budget: true` or `batch_size: '4'` are mistakes to name, not values to coerce
    model_config = ConfigDict(extra="forbid", strict=True)


_BASES = {
    "generators": ("matforge.engine.materials.generate", "Generator"),
    "featurizers": ("matforge.engine.materials.featurize", "Featurizer"),
    "surrogates": ("matforge.engine.models.base", "Surrogate"),
    "acquisitions": ("matforge.engine.acquisition.base", "Acquisition"),
}
"""Base class of each engine plug-in group, imported only when a campaign names a kind."""


def _installed(group: str, kind: str) -> type:
    """The class installed as ``kind`` in a plug-in group; a ValueError naming what is installed."""
    from matforge.engine import plugins

    module, name = _BASES[group]
    return plugins.load(group, kind, getattr(importlib.import_module(module), name))


def _adapter_named(name: str) -> str:
    """``name`` if an adapter is installed under it (checked by name: nothing is imported)."""
    from matforge.engine import plugins

    plugins.describe("adapters", name)
    return name


def _check_parameters(section: str, kind: str, cls: type, parameters: dict, given=()) -> None:
    """Refuse constructor arguments ``cls`` does not take (``given`` ones are matforge's)."""
    signature = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        return
    known = set(signature) - {"self", "random_state", *given}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise ValueError(
            f"{section}.parameters: {', '.join(unknown)} not accepted by {kind!r} "
            f"(accepted: {', '.join(sorted(known)) or 'none'})"
        )


class _PluginSection(_Section):
    """A section that names an installed plug-in (``kind``) and its constructor arguments.

    The kind must be installed in ``_group``; ``parameters`` must be arguments its
    constructor takes, beside the ``_given`` ones matforge passes itself.
    """

    _group: ClassVar[str]
    _section: ClassVar[str]
    _given: ClassVar[tuple[str, ...]] = ()

    kind: str
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _kind_installed(cls, kind: str) -> str:
        from matforge.engine import plugins

        plugins.describe(cls._group, kind)  # by name: nothing is imported for a kind
        return kind

    @model_validator(mode="after")
    def _parameters_accepted(self):
        if self.parameters:  # only then is the class needed (importing it takes a while)
            cls = _installed(self._group, self.kind)
            _check_parameters(self._section, self.kind, cls, self.parameters, self._given)
        return self


class GeneratorSource(_PluginSection):
    """A further generator, by its installed name, and the share of the pool it proposes."""

    _group = "generators"
    _section = "generator.sources"
    _given = ("elements", *SHARED_GENERATOR_SETTINGS)

    share: float = Field(gt=0, le=1, description="share of generator.pool_size it proposes")


class GeneratorSettings(_Section):
    """How candidates are proposed each round."""

    lattices: list[Literal["fcc", "bcc", "hcp"]] = Field(default_factory=lambda: list(LATTICES))
    max_atoms: int = Field(16, ge=1, le=64, description="largest supercell decorated")
    max_species: int = Field(3, ge=1, le=8, description="most distinct elements in one candidate")
    pool_size: int = Field(200, ge=1, le=100_000, description="candidates screened per round")
    mutation_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="share of the pool made by mutating the best results"
    )
    n_parents: int = Field(5, ge=1, description="best accepted results mutated each round")
    inverse_design: int = Field(
        0, ge=0, le=1000,
        description="candidates per round from inverse design over the composition simplex",
    )
    sources: list[GeneratorSource] = Field(
        default_factory=list,
        description="further generators (installed plug-ins) with the share of the pool each "
                    "proposes; decoration and mutation fill the rest",
    )
    charge_balanced: bool = Field(
        False, description="refuse candidates whose ICSD oxidation states cannot sum to zero")
    fill: bool = Field(
        True, description="decorations (random compositions in a campaign of compositions) "
                          "fill what the other generators left of pool_size; false: the pool is "
                          "only what they made, e.g. a list of what a lab can make")
    ahead: bool = Field(
        False, description="propose the next round's pool while this round's evaluations run; "
                            "its mutation parents are then the results of the rounds before "
                            "this one (one round behind). For evaluations of seconds (EMT, ML "
                            "potentials), where proposing is otherwise a large share of the "
                            "wall time")
    min_distance: float = Field(
        0.6, gt=0, le=2,
        description="least distance between two atoms, as a fraction of their atomic radii")
    volume_per_atom: list[float] = Field(
        default_factory=lambda: [4.0, 80.0], min_length=2, max_length=2,
        description="least and most volume per atom of a candidate, Å^3")

    @model_validator(mode="after")
    def _shares(self) -> GeneratorSettings:
        total = sum(source.share for source in self.sources)
        if total > 1:
            raise ValueError(f"generator.sources: shares add up to {total:g}, more than 1")
        low, high = self.volume_per_atom
        if not 0 < low < high:
            raise ValueError(f"generator.volume_per_atom: [least, most] with 0 < least < most, "
                             f"got {self.volume_per_atom}")
        return self


class FeaturizerSettings(_PluginSection):
    """How candidates become feature vectors: an installed featurizer (``material``,
    composition and structure features, by default) and its constructor arguments."""

    _group = "featurizers"
    _section = "featurizer"
    _given = ("elements",)

    kind: str = "material"


class ObjectiveSettings(_Section):
    property: str = "formation_energy_per_atom"
    direction: Literal["minimize", "maximize"] = "minimize"

    def is_maximized(self) -> bool:
        return self.direction == "maximize"


class ConstraintSettings(_Section):
    """An outcome that must hold for a candidate to count, e.g. formation energy below 0.

    A classifier of the probability that a candidate satisfies it is trained
    each round on the results so far and multiplies the acquisition (expected
    improvement times probability of feasibility).
    """

    property: str = Field(description="a scalar of the evaluator's result")
    below: float | None = Field(None, description="feasible when the property is below this")
    above: float | None = Field(None, description="feasible when the property is above this")

    @model_validator(mode="after")
    def _one_bound(self) -> ConstraintSettings:
        if (self.below is None) == (self.above is None):
            raise ValueError("constraint: give exactly one of 'below' or 'above'")
        return self


class SurrogateSettings(_PluginSection):
    """The model that screens candidates.

    ``gp``: Gaussian process, ARD Matérn-5/2 on rank-transformed targets (the
    default); ``ensemble``: deep ensemble; ``forest``: random forest with
    per-tree spread; ``ridge``: Bayesian ridge baseline; ``auto``: the one with
    the lowest cross-validated NLL, chosen again each round; or any surrogate
    installed as a plug-in (``matforge plugins``). ``parameters`` go to the
    model's constructor (e.g. ``{kernel: rbf, y_transform: none}``).
    """

    _group = "surrogates"
    _section = "surrogate"

    kind: str = "gp"


class AcquisitionSettings(_PluginSection):
    """How a batch is chosen: ``ptop`` (default), ``pucb``, ``qlogei``, ``qlognei``,
    ``ucb``, ``thompson``, ``greedy``, ``explore``, ``random`` (the baseline), or any
    acquisition installed as a plug-in."""

    _group = "acquisitions"
    _section = "acquisition"
    _given = ("beta", "top_share")

    kind: str = "ptop"
    beta: float = Field(1.0, ge=0, le=100, description="exploration weight of ucb and pucb")
    top_share: float = Field(
        0.05, gt=0, lt=1,
        description="share of all candidates ptop aims for, the best 5 % by default; where "
                    "candidates and results outnumber the budget, the share of as many rows "
                    "as the budget can measure, among the rows still to measure",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="further constructor arguments (a plug-in's)"
    )


class EnvFromBlock(_Section):
    """An environment variable filled from a Prefect Secret block (the block's name and the
    variable's are not secret; the value is never stored)."""

    variable: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    block: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")


class EvaluatorSettings(_Section):
    """Which adapter evaluates candidates and how its failures are handled.

    Secrets (tokens, passwords) never go in ``parameters``: adapters read them
    from environment variables, and parameters whose names look secret are
    stored redacted.
    """

    adapter: str = "emt"

    @field_validator("adapter")
    @classmethod
    def _adapter_installed(cls, adapter: str) -> str:
        return _adapter_named(adapter)
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(
        None, gt=0,
        description="seconds one attempt may take; then its processes are killed (TimeoutError)",
    )
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="what one evaluation needs, over the adapter's own declaration: cores, "
                    "gpus, memory_gb, walltime (seconds)",
    )
    retries: int = Field(0, ge=0, le=100, description="extra attempts after a retryable error")
    retry_backoff: float = Field(
        1.0,
        ge=0,
        le=86_400,
        description="seconds before the first retry, doubled for each next one",
    )
    retry_on: list[str] = Field(
        default_factory=lambda: ["TimeoutError", "ConnectionError"],
        description="exception class names (or base class names) that are retried",
    )
    env_from_blocks: list[EnvFromBlock] = Field(
        default_factory=list,
        description="environment variables an adapter reads its secrets from, each filled "
                    "from a Prefect Secret block, where the variable is unset, before the "
                    "campaign's evaluations start",
    )

    @field_serializer("parameters", when_used="json")
    def _redact_secrets(self, parameters: dict[str, Any]) -> dict[str, Any]:
        # JSON copies (the Prefect API's flow parameters, the store) never carry secrets
        from matforge.engine.store.sql import redact

        return redact(parameters)


class ScreenSettings(_Section):
    """A cheap evaluator (an ML potential, a tight-binding code) run on every proposed
    candidate before the expensive one picks: its value joins the features the surrogate
    sees, and ``keep`` passes only the best candidates by it on to selection.

    Each candidate's screen result is kept in its own directory under the campaign's
    workdir (``screen/``), so a resumed round screens nothing twice. A candidate the
    screen cannot evaluate is not selected.
    """

    adapter: str

    @field_validator("adapter")
    @classmethod
    def _adapter_installed(cls, adapter: str) -> str:
        return _adapter_named(adapter)
    parameters: dict[str, Any] = Field(default_factory=dict)
    property: str | None = Field(
        None, description="the screen's result used (default: the objective's property)")
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="which screen values are best (default: the objective's direction)")
    keep: int | None = Field(
        None, ge=1, le=100_000, description="only the best this many go on to selection")
    as_feature: bool = Field(True, description="the screen's value is a feature of the surrogate")
    timeout: float = Field(600.0, gt=0, description="seconds one candidate's screen may take")

    @field_serializer("parameters", when_used="json")
    def _redact_secrets(self, parameters: dict[str, Any]) -> dict[str, Any]:
        from matforge.engine.store.sql import redact

        return redact(parameters)


class SlurmSettings(_Section):
    """How evaluations (``executor.kind: slurm``) or Dask workers (``executor.dask.cluster:
    slurm``) are submitted to Slurm. Each job asks for the adapter's resources (cores,
    memory, walltime, GPUs); these fields add what a site needs."""

    partition: str | None = Field(None, pattern=r"^[A-Za-z0-9_.,\-]+$")
    account: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$")
    qos: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$")
    directives: list[str] = Field(
        default_factory=list,
        description="further sbatch options, one per entry, e.g. '--constraint=cpu'")
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines run before the evaluation, e.g. 'module load vasp/6.4'")
    template: str | None = Field(
        None, description="a job script template replacing the built-in one (fields as in "
                          "matforge.engine.loop.slurm.TEMPLATE)")
    python: str | None = Field(
        None, description="Python interpreter on the compute nodes (default: this one)")
    poll_interval: float = Field(5.0, ge=0.1, le=3600,
                                 description="seconds between looks at the queue")

    @field_validator("directives")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        for option in v:
            if not re.fullmatch(r"--?[A-Za-z][A-Za-z0-9\-]*(=\S+| \S+)?", option):
                raise ValueError(f"{option!r} is not one sbatch option ('--name=value')")
        return v


class DaskSettings(_Section):
    """A Dask cluster for ``executor.kind: dask``: a running scheduler (``address``), or one
    started for the run: a ``LocalCluster`` or a ``dask_jobqueue.SLURMCluster`` whose
    workers are Slurm jobs (sized by the adapter's resources, submitted per ``slurm``)."""

    address: str | None = Field(None, description="a running scheduler, e.g. tcp://host:8786")
    cluster: Literal["local", "slurm"] = "local"
    n_workers: int = Field(2, ge=1, le=10_000, description="worker processes (or Slurm jobs)")


class ExecutorSettings(_Section):
    """Where evaluations run.

    ``local``: child processes of the campaign's process, ``workers`` at a time.
    ``dask``: tasks on a Dask cluster (``dask``). ``slurm``: one ``sbatch`` job per
    evaluation, at most ``workers`` in the queue at once. ``limits`` names Prefect global
    concurrency limits (with their slots) each evaluation holds one slot of, e.g. a
    licence; ``gpus`` lists this host's GPU devices for GPU evaluations (resources.gpus):
    each holds a slot of a limit with one slot per device and runs with
    ``CUDA_VISIBLE_DEVICES`` set to the device(s) it was given. Under Slurm, GPUs are
    GRES instead (``--gres=gpu:N``).
    """

    kind: Literal["local", "dask", "slurm"] = "local"
    workers: int | None = Field(
        None, ge=1, le=10_000,
        description="concurrent evaluations (local) or jobs in the queue (slurm); "
                    "default MATFORGE_WORKERS (local), batch_size (slurm)")
    limits: dict[str, int] = Field(default_factory=dict)
    gpus: list[int] | None = Field(None, min_length=1)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    dask: DaskSettings = Field(default_factory=DaskSettings)

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: dict[str, int]) -> dict[str, int]:
        for name, slots in v.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", name):
                raise ValueError(f"limit name {name!r}: letters, digits, '_', '.', '-' only")
            if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
                raise ValueError(f"limit {name!r}: slots must be a whole number >= 1")
        return v

    @field_validator("gpus")
    @classmethod
    def _devices(cls, v):
        if v is not None and (len(set(v)) != len(v) or min(v) < 0):
            raise ValueError("GPU devices are distinct whole numbers >= 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorSettings:
        if self.gpus is not None and self.kind == "slurm":
            raise ValueError("gpus: Slurm gives jobs their GPUs (GRES, from resources.gpus); "
                             "list devices for the local and dask executors only")
        if self.dask.address and self.dask.cluster == "slurm":
            raise ValueError("dask: give a running scheduler's address or cluster: slurm, "
                             "not both")
        return self


class ReviewSettings(_Section):
    """What a campaign does while results wait for a person's review (``needs_review``)."""

    pause: bool = Field(
        False, description="before a round, wait for the decisions (Prefect UI: the paused "
                           "flow run's input form; or matforge review); false: go on, the "
                           "results stay out of training until reviewed")
    timeout: float = Field(3600.0, gt=0, description="seconds to wait for the decisions")
    on_timeout: Literal["continue", "accept", "reject"] = Field(
        "continue", description="after the timeout: go on leaving them for later, or accept "
                                "or reject them all")
    poll_interval: int = Field(10, ge=1, le=600,
                               description="seconds between looks for the decisions")


class StopSettings(_Section):
    """When a campaign has found enough, besides its ``budget``: a scheduled campaign
    stops spending once one of these holds."""

    target: float | None = Field(
        None, description="stop once the best objective reaches this value (in the "
                          "objective's direction)")
    patience: int | None = Field(
        None, ge=1, description="stop after this many rounds in a row without a better best")


class AnomalySettings(_Section):
    enabled: bool = True
    min_samples: int = Field(4, ge=2, description="DBSCAN min_samples")
    eps: float | Literal["auto"] = Field(
        "auto",
        description="DBSCAN radius; 'auto' takes a quantile of k-nearest-neighbour distances",
    )
    eps_quantile: float = Field(0.98, gt=0.0, lt=1.0)
    n_components: int = Field(4, ge=1, description="principal components of the features used")
    residual_weight: float = Field(1.0, ge=0.0, description="weight of the surrogate residual")
    min_results: int = Field(12, ge=3, description="no flagging before this many results")

    @field_validator("eps")
    @classmethod
    def _positive_eps(cls, v):
        if v != "auto" and not v > 0:
            raise ValueError("must be > 0 or 'auto'")
        return v


class CampaignConfig(_Section):
    """Everything a campaign needs; see ``examples/alloys_emt.yaml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
    elements: list[str] = Field(min_length=1)
    candidates: Literal["structure", "composition"] = Field(
        "structure", description="what a candidate is: a crystal structure, or a composition "
                                 "only (featurizer, generators and evaluator must take it)")
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    objectives: list[ObjectiveSettings] = Field(
        default_factory=list,
        description="further objectives optimized jointly with 'objective' (qLogNEHVI)",
    )
    constraints: list[ConstraintSettings] = Field(default_factory=list)
    featurizer: FeaturizerSettings = Field(default_factory=FeaturizerSettings)
    surrogate: SurrogateSettings = Field(default_factory=SurrogateSettings)
    acquisition: AcquisitionSettings = Field(default_factory=AcquisitionSettings)
    find: Find = Field(
        "best", description="the campaign's goal: the best materials the budget can measure "
                            "('best': where candidates outnumber the budget, ptop aims for "
                            "the best top_share x budget rows still to measure), or the top "
                            "share of all candidates ('top_share')")
    batch_size: int = Field(8, ge=1, le=10_000)
    budget: int = Field(40, ge=1, le=10_000_000, description="maximum number of evaluations")
    evaluator: EvaluatorSettings = Field(default_factory=EvaluatorSettings)
    screen: ScreenSettings | None = Field(
        None, description="a cheap evaluator run on every candidate before selection")
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)
    stop: StopSettings = Field(default_factory=StopSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    store: str = Field("sqlite:///matforge.db", repr=False,  # a repr may reach a log line
                       description="SQLAlchemy URL of the campaign store")
    workdir: str = Field("matforge-runs", description="where each evaluation gets its directory")
    seed: int = Field(0, ge=0)

    def summary(self) -> dict[str, Any]:
        """What the campaign is and what it may spend, for people (the parameters its flow
        run shows in the Prefect UI): not generator settings, evaluator parameters, paths or
        hosts; the store without its password."""
        from matforge.engine.store.sql import redact_url

        return {
            "campaign": self.name,
            "objective": ", ".join(f"{o.direction} {o.property}"
                                   for o in [self.objective, *self.objectives]),
            "evaluator": self.evaluator.adapter,
            "budget": self.budget,
            "batch_size": self.batch_size,
            "acquisition": self.acquisition.kind,
            "find": self.find,
            "store": redact_url(self.store),
        }

    @field_serializer("store", when_used="json")
    def _redact_store_password(self, store: str) -> str:
        # JSON copies (the Prefect API's flow parameters, the store) never carry the password;
        # a flow finds it again with matforge.engine.store.sql.runtime_url
        from matforge.engine.store.sql import redact_url

        return redact_url(store)

    @field_validator("elements")
    @classmethod
    def _known_elements(cls, v: list[str]) -> list[str]:
        from pymatgen.core.periodic_table import Element

        for symbol in v:
            if not isinstance(symbol, str) or symbol not in Element.__members__:
                raise ValueError(f"{symbol!r} is not a chemical element symbol")
        if len(set(v)) != len(v):
            raise ValueError("lists an element twice")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CampaignConfig:
        names = [o.property for o in [self.objective, *self.objectives]]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: a property is listed twice ({', '.join(names)})")
        if self.objectives and self.acquisition.kind != "random" and self.surrogate.kind == "auto":
            raise ValueError("surrogate.kind: 'auto' is single-objective; pick one kind")
        if self.generator.inverse_design > self.generator.pool_size:
            raise ValueError(
                f"generator.inverse_design: {self.generator.inverse_design} is larger than "
                f"generator.pool_size ({self.generator.pool_size})"
            )
        if self.batch_size > self.generator.pool_size:
            raise ValueError(
                f"batch_size: {self.batch_size} is larger than generator.pool_size "
                f"({self.generator.pool_size}): a round cannot pick more than it screens"
            )
        return self

    def resolved(self, base: Path) -> CampaignConfig:
        """Return a copy whose relative SQLite path and workdir are relative to ``base``."""
        store = self.store
        prefix = "sqlite:///"
        if store.startswith(prefix) and not store.startswith(prefix + "/"):
            path = store[len(prefix) :]
            if path and path != ":memory:":
                store = prefix + str((base / path).resolve())
        workdir = Path(self.workdir)
        if not workdir.is_absolute():
            workdir = (base / workdir).resolve()
        return self.model_copy(update={"store": store, "workdir": str(workdir)})


def check_plugins(config: CampaignConfig, source: str = "campaign") -> None:
    """Every plug-in the campaign names imports and is of its kind, and featurizer and
    generators take the campaign's kind of candidate. Run before a campaign starts (it
    imports them: seconds); :func:`parse_config` checks names and parameters only."""
    sections = [("featurizer", "featurizers", config.featurizer.kind),
                ("surrogate", "surrogates", config.surrogate.kind),
                ("acquisition", "acquisitions", config.acquisition.kind)]
    sections += [(f"generator.sources.{i}", "generators", s.kind)
                 for i, s in enumerate(config.generator.sources)]
    classes = {}
    for field, group, kind in sections:
        try:
            classes[field] = _installed(group, kind)
        except ValueError as error:
            raise ConfigError(f"{source}: field '{field}': {error}") from None
    kind = config.candidates
    if kind not in getattr(classes["featurizer"], "inputs", ("structure",)):
        raise ConfigError(
            f"{source}: field 'featurizer': {config.featurizer.kind!r} describes structures; a "
            f"campaign of compositions (candidates: composition) needs one such as "
            f"'composition'")
    for i, s in enumerate(config.generator.sources):
        makes = getattr(classes[f"generator.sources.{i}"], "makes", ("structure",))
        if kind not in makes:
            raise ConfigError(
                f"{source}: field 'generator.sources.{i}': {s.kind!r} makes {makes[0]}s, and "
                f"this campaign's candidates are {kind}s (candidates: {kind})")


def check_properties(config: CampaignConfig, adapter: str, offered, source: str = "campaign"):
    """Refuse objectives and constraints the adapter does not report.

    ``offered`` are the adapter's ``implemented_properties``. A misspelled
    objective would fail every evaluation and spend the budget; a misspelled
    constraint would be dropped silently. Raises :class:`ConfigError` naming the
    field, the property and what the adapter offers.
    """
    offered = sorted(offered)
    named = [("objective.property", config.objective.property)]
    named += [(f"objectives.{i}.property", o.property) for i, o in enumerate(config.objectives)]
    named += [(f"constraints.{i}.property", c.property) for i, c in enumerate(config.constraints)]
    for field, name in named:
        if name not in offered:
            raise ConfigError(
                f"{source}: field '{field}': adapter {adapter!r} does not report {name!r} "
                f"(it reports: {', '.join(offered) or 'nothing it declares'})"
            )


def check_elements(config: CampaignConfig, adapter: str, supported, source: str = "campaign"):
    """Refuse elements the adapter has no parameters for (``supported``; None: any element).

    Raises :class:`ConfigError` naming ``elements``, the elements and what the
    adapter supports, before a budget is spent on evaluations that must fail.
    """
    if supported is None:
        return
    missing = [element for element in config.elements if element not in supported]
    if missing:
        raise ConfigError(
            f"{source}: field 'elements': adapter {adapter!r} has no parameters for "
            f"{', '.join(missing)} (it supports: {', '.join(sorted(supported))})"
        )


def check_screen(config: CampaignConfig, screener, source: str = "campaign") -> None:
    """Refuse a screen whose adapter does not report the screen's property or has no
    parameters for the campaign's elements; :class:`ConfigError` names the field."""
    screen = config.screen
    name = screen.property or config.objective.property
    offered = sorted(screener.implemented_properties)
    if name not in offered:
        field = "screen.property" if screen.property else "screen (the objective's property)"
        raise ConfigError(f"{source}: field '{field}': adapter {screen.adapter!r} does not "
                          f"report {name!r} (it reports: {', '.join(offered) or 'nothing'})")
    supported = getattr(screener, "supported_elements", None)
    missing = [e for e in config.elements if supported is not None and e not in supported]
    if missing:
        raise ConfigError(f"{source}: field 'screen.adapter': adapter {screen.adapter!r} has no "
                          f"parameters for {', '.join(missing)}")


def check_paths(
    config: CampaignConfig, base: str | Path, path_parameters=(), source: str = "campaign",
    screen_path_parameters=(),
) -> CampaignConfig:
    """Keep the workdir and the adapter's path parameters under the campaign's directory.

    A relative path resolves against ``base`` (the campaign file's directory) and
    must stay under it; an absolute path is the file's explicit choice and is
    kept. ``path_parameters`` are the names of the adapter's parameters that
    are paths (``Evaluator.path_parameters``; ``screen_path_parameters`` those of the
    screen's adapter). Returns a copy with these paths
    absolute; raises :class:`ConfigError` naming the field for one that leaves.
    """
    base = Path(base).resolve()

    def under(field: str, value) -> str:
        path = Path(value).expanduser()
        if path.is_absolute():
            return str(path)
        resolved = (base / path).resolve()
        if not resolved.is_relative_to(base):
            raise ConfigError(
                f"{source}: field '{field}': {str(value)!r} leads outside the campaign's "
                f"directory {base} (write an absolute path to mean it)"
            )
        return str(resolved)

    workdir = under("workdir", config.workdir)
    parameters = dict(config.evaluator.parameters)
    for name in path_parameters:
        if isinstance(parameters.get(name), (str, os.PathLike)):
            parameters[name] = under(f"evaluator.parameters.{name}", parameters[name])
    evaluator = config.evaluator.model_copy(update={"parameters": parameters})
    update = {"workdir": workdir, "evaluator": evaluator}
    if config.screen is not None:
        parameters = dict(config.screen.parameters)
        for name in screen_path_parameters:
            if isinstance(parameters.get(name), (str, os.PathLike)):
                parameters[name] = under(f"screen.parameters.{name}", parameters[name])
        update["screen"] = config.screen.model_copy(update={"parameters": parameters})
    sources = []
    for i, source in enumerate(config.generator.sources):
        names = getattr(_installed("generators", source.kind), "path_parameters", ())
        parameters = dict(source.parameters)
        for name in names:
            field = f"generator.sources.{i}.parameters.{name}"
            value = parameters.get(name)
            if isinstance(value, (str, os.PathLike)):
                parameters[name] = under(field, value)
            elif isinstance(value, list):
                parameters[name] = [under(field, v) for v in value]
        sources.append(source.model_copy(update={"parameters": parameters}))
    if sources:
        update["generator"] = config.generator.model_copy(update={"sources": sources})
    slurm = config.executor.slurm
    if slurm.template is not None:
        slurm = slurm.model_copy(update={
            "template": under("executor.slurm.template", slurm.template)})
        update["executor"] = config.executor.model_copy(update={"slurm": slurm})
    return config.model_copy(update=update)


def check_executor(config: CampaignConfig, source: str = "campaign") -> None:
    """What the ``executor`` section needs on this machine: Slurm's commands for Slurm
    jobs or workers, a readable job script template that runs the evaluation. Raises
    :class:`ConfigError` naming the field."""
    import shutil

    executor = config.executor
    on_slurm = executor.kind == "slurm" or (
        executor.kind == "dask" and executor.dask.cluster == "slurm" and not executor.dask.address)
    if on_slurm:
        field = "executor.kind" if executor.kind == "slurm" else "executor.dask.cluster"
        for command in ("sbatch", "squeue", "scontrol", "scancel"):
            if shutil.which(command) is None:
                raise ConfigError(f"{source}: field '{field}': slurm, but {command} is not on "
                                  f"PATH (run on a Slurm login node, or load Slurm's module)")
    template = executor.slurm.template
    if template is not None:
        try:
            text = Path(template).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{source}: field 'executor.slurm.template': cannot read "
                              f"{template} ({type(error).__name__})") from None
        if "${spec}" not in text:
            raise ConfigError(f"{source}: field 'executor.slurm.template': {template} never "
                              f"uses ${{spec}}, so its job would not run the evaluation")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _shown(value: Any) -> str:
    return _clip(repr(value))


def _fields_at(loc: tuple) -> list[str]:
    """The field names a campaign file may give at ``loc`` (a section's path)."""
    model: Any = CampaignConfig
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list of sections
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = next((t for t in _types(field.annotation)
                      if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _types(annotation) -> list:
    """``annotation`` and the types inside it (``list[X]``, ``X | None``)."""
    out = [annotation]
    for arg in typing.get_args(annotation):
        out += _types(arg)
    return out


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if not first["loc"] and ": " in msg:
        field, msg = msg.split(": ", 1)
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
        close = difflib.get_close_matches(str(first["loc"][-1]), _fields_at(first["loc"][:-1]),
                                          n=1)
        if close:
            msg += f"; did you mean {close[0]!r}?"
    elif first["type"] == "missing":
        msg = "required field is missing"
    more = len(error.errors()) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''})" if more else ""
    got = first.get("input")
    quiet = first["type"] in ("missing", "extra_forbidden") or isinstance(got, dict)
    shown = "" if quiet else f", got {_shown(got)}"
    message = f"{source}: field '{field}': {msg}{shown}{tail}"
    # one line, whatever the file's keys contain
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def parse_config(data: Any, source: str = "campaign") -> CampaignConfig:
    """Validate a mapping as a campaign; raise :class:`ConfigError` naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


class _CampaignLoader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-3`` as a number (YAML 1.2), as people write it."""


_CampaignLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _check_expanded_size(data: Any, source: str) -> None:
    """Refuse data with more than MAX_NODES values, counting every alias as a copy.

    The walk stops once past the limit, so it costs at most MAX_NODES steps
    however large the expansion (or a self-referencing alias) would be.
    """
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(
                f"{source}: too large once its YAML aliases are expanded (more than "
                f"{MAX_NODES} values); a campaign file holds a few dozen"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a YAML campaign file; relative paths resolve beside the file."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read campaign file ({error.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_FILE_BYTES} bytes; a campaign file is a few hundred"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    try:
        data = yaml.load(text, Loader=_CampaignLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise ConfigError(f"{path}: not valid YAML{line}: {_clip(problem)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a campaign file") from None
    _check_expanded_size(data, str(path))
    base = path.parent.resolve()
    return check_paths(parse_config(data, str(path)), base, (), str(path)).resolved(base)
