"""Settings of a matforge process: what is not per campaign, read from ``MATFORGE_*`` variables.

A campaign file says what a campaign does; these settings say where this process reports
(the Prefect API), which store a bare campaign name refers to, and how much of the machine
it may use. Every field ``name`` is read from the environment variable ``MATFORGE_<NAME>``;
an empty variable counts as unset. :func:`get_settings` reads them afresh on each call and
raises :class:`SettingsError` with one line naming the variable and why it cannot be used.

:func:`limit_threads` gives torch and the BLAS/OpenMP pools the process's share of the
cores. Their defaults start one thread per core in every process; beside ``workers``
concurrent evaluations, or a second process, that oversubscribes the CPUs and the small
matrices of a surrogate fit then run many times slower than on one thread.
"""

from __future__ import annotations

import os

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MATFORGE_"


class SettingsError(ValueError):
    """A ``MATFORGE_*`` variable that cannot be used; the message names it and the reason."""


def available_cores() -> int:
    """CPU cores this process may run on.

    The affinity mask rather than ``os.cpu_count()``: ``taskset``, a batch scheduler or a
    container's cpuset may give the process fewer cores than the machine has.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


class MatforgeSettings(BaseSettings):
    """What a matforge process uses that is not part of any one campaign."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", env_ignore_empty=True, validate_default=True
    )

    prefect_api_url: str | None = Field(
        None,
        description="Prefect API to report to; unset: Prefect's own PREFECT_API_URL if set, "
        "otherwise a local server at prefect_host:prefect_port (started when none answers)",
    )
    prefect_host: str = Field("127.0.0.1", description="host of the local Prefect server")
    prefect_port: int = Field(4200, ge=1, le=65535, description="port of the local Prefect server")
    store: str = Field(
        "sqlite:///matforge.db",
        description="SQLAlchemy URL of the store used when a campaign is named without a file",
    )
    workers: int = Field(2, ge=1, description="concurrent evaluations per campaign process")
    threads: int | None = Field(
        None, ge=1,
        description="CPU threads per process for torch and BLAS; unset: cores // workers",
    )
    cores: int = Field(
        default_factory=available_cores, ge=1, description="CPU cores matforge may use"
    )
    profiles: str | None = Field(
        None,
        description="YAML file of per-machine profiles of file-based codes (executable, MPI "
                    "launcher, ranks, data directory, environment), one mapping per adapter",
    )
    lease: float = Field(
        60.0, ge=1.0, le=86_400.0,
        description="seconds a run keeps its campaign without a heartbeat; a second run "
                    "takes over a dead run's campaign only after this",
    )

    def threads_per_process(self) -> int:
        """``threads`` if set, else an equal share of ``cores`` per worker (at least 1)."""
        if self.threads is not None:
            return self.threads
        return max(1, self.cores // self.workers)


def _describe(error: ValidationError) -> str:
    """One line naming the first bad variable, the reason and the value given."""
    first = error.errors()[0]
    name = ENV_PREFIX + "_".join(str(part) for part in first["loc"]).upper()
    context = first.get("ctx", {})
    if first["type"] == "greater_than_equal":
        reason = f"must be >= {context['ge']}"
    elif first["type"] == "less_than_equal":
        reason = f"must be <= {context['le']}"
    elif first["type"] in ("int_parsing", "int_from_float", "int_type"):
        reason = "must be a whole number"
    else:
        reason = first["msg"][:1].lower() + first["msg"][1:]
    more = len(error.errors()) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''})" if more else ""
    message = f"environment variable {name}: {reason}, got {first.get('input')!r}{tail}"
    # one line, whatever the variable holds
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def get_settings() -> MatforgeSettings:
    """The settings from the environment as it is now.

    Raises
    ------
    SettingsError
        When a ``MATFORGE_*`` variable holds a value its setting cannot take.
    """
    try:
        return MatforgeSettings()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


_thread_limit = None
"""The threadpoolctl limiter in force; kept so that the BLAS/OpenMP limit outlives the call."""


def limit_threads(settings: MatforgeSettings | None = None) -> int:
    """Run torch and the BLAS/OpenMP pools of this process on its share of the cores.

    Parameters
    ----------
    settings
        Where ``threads``, ``cores`` and ``workers`` come from; read from the environment
        when not given.

    Returns
    -------
    int
        Threads per pool: ``settings.threads`` if set, else ``max(1, cores // workers)``.
    """
    global _thread_limit
    settings = settings or get_settings()
    n = settings.threads_per_process()
    # threadpoolctl reaches only libraries already loaded, so load every one matforge
    # computes with (NumPy's and SciPy's OpenBLAS, torch's and scikit-learn's OpenMP) first;
    # one imported later would start with a thread per core.
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    import sklearn  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    # torch applies this to every thread, the task runner's workers included; OpenBLAS's
    # limit is process-wide, scikit-learn's OpenMP limit holds in this thread only
    torch.set_num_threads(n)
    _thread_limit = threadpool_limits(limits=n)
    return n
