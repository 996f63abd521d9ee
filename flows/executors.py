"""Where a campaign's evaluations run: the ``executor`` section, as Prefect task runners.

:func:`dispatcher` gives :func:`~matforge.engine.loop.round.run_campaign` a
dispatcher that lives as long as the campaign: each claimed evaluation becomes a
Prefect task run (``evaluate-<id>-<formula>-<fingerprint>``) on

- ``local``: a thread pool of ``workers`` threads, each evaluation in a child
  process that is killed at its deadline (:mod:`~matforge.engine.loop.isolate`);
- ``dask``: prefect-dask's ``DaskTaskRunner`` on a running scheduler, a
  ``LocalCluster``, or a ``dask_jobqueue.SLURMCluster`` whose workers are Slurm jobs;
- ``slurm``: one ``sbatch`` job per evaluation (:mod:`~matforge.engine.loop.slurm`),
  the task only submitting, polling and committing it; at most ``workers`` jobs queued.

Slots: every evaluation holds one slot of each Prefect global concurrency limit
in ``executor.limits`` (created with those slot counts, or updated to them), and
a GPU evaluation (``resources.gpus``) on ``local`` or ``dask`` holds as many slots
of this host's GPU limit as it needs GPUs, and runs with ``CUDA_VISIBLE_DEVICES``
naming the devices it was given. Slurm jobs ask for GPUs as GRES instead.
"""

from __future__ import annotations

import fcntl
import socket
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from matforge.adapters import load_evaluator
from matforge.adapters.base import Resources
from matforge.engine.config import CampaignConfig, EvaluatorSettings, ExecutorSettings
from matforge.engine.loop.round import Work, describe_error, evaluate_claimed
from matforge.engine.settings import available_cores, get_settings

TASK = dict(cache_policy=NO_CACHE, persist_result=False)


def gpu_limit_name() -> str:
    """The Prefect global concurrency limit of this host's GPUs (one slot per device)."""
    return f"matforge-gpu-{socket.gethostname()}"


@contextmanager
def gpu_devices(devices: list[int], n: int) -> Iterator[list[int]]:
    """Hold ``n`` of this host's GPU ``devices`` for one evaluation (a lock file per device,
    so evaluations in any process of this host never share one). The GPU limit's slots
    guarantee that ``n`` are free; one held by something else is waited for."""
    import time

    directory = Path(tempfile.gettempdir()) / "matforge-gpu-locks"
    directory.mkdir(exist_ok=True)
    held: list[tuple[int, Any]] = []
    try:
        while len(held) < n:
            for device in devices:
                if len(held) == n or any(d == device for d, _ in held):
                    continue
                handle = open(directory / f"{device}.lock", "w")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                held.append((device, handle))
            if len(held) < n:
                time.sleep(0.2)
        yield [d for d, _ in held]
    finally:
        for _, handle in held:
            handle.close()


def ensure_limits(limits: dict[str, int]) -> None:
    """Create each Prefect global concurrency limit with its slots, or set its slots."""
    if not limits:
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name, slots in limits.items():
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots))
                continue
            if limit.limit != slots or not limit.active:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=slots, active=True))


def _threads(resources: Resources, share: int) -> str:
    """Threads for one evaluation: what its slot has (``share`` cores), at most what the
    adapter asks for; ``MATFORGE_THREADS`` wins where it is set."""
    settings = get_settings()
    if settings.threads is not None:
        return str(settings.threads)
    return str(max(1, min(resources.cores, share)))


@task(**TASK, task_run_name="evaluate-{label}")
def evaluate_task(store_url: str, work: Work, objective: str, adapter: str, parameters: dict,
                  label: str, limits: list[str] = (), gpus: list[int] | None = None,
                  need_gpus: int = 0, threads: str | None = None) -> str:
    """Run the adapter on one claimed structure, holding its slots, and store the outcome;
    returns its status. Exceptions propagate so the task's retry policy can act on them."""
    from prefect.concurrency.sync import concurrency

    env = {"MATFORGE_THREADS": threads, "OMP_NUM_THREADS": threads} if threads else {}
    with ExitStack() as stack:
        if limits:
            stack.enter_context(concurrency(limits, occupy=1, strict=True))
        if gpus and need_gpus:
            stack.enter_context(concurrency(gpu_limit_name(), occupy=need_gpus, strict=True))
            held = stack.enter_context(gpu_devices(gpus, need_gpus))
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, held))
            get_run_logger().info("evaluation %s runs on GPU %s", label,
                                  env["CUDA_VISIBLE_DEVICES"])
        store = _store(store_url)
        worker = _dask_worker()
        # set_job changes nothing for a finished claim or another run's
        if worker is not None and store.set_job(work.evaluation_id,
                                                {"kind": "dask", "worker": worker}, work.owner):
            get_run_logger().info("evaluation %s runs on Dask worker %s", label, worker)
        return evaluate_claimed(store, work, objective,
                                partial(load_evaluator, adapter, parameters), env)


def _dask_worker() -> str | None:
    """The address of the Dask worker this runs on (None: not on one)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


@task(**TASK, task_run_name="evaluate-{label}")
def slurm_task(store_url: str, work: Work, objective: str, adapter: str, parameters: dict,
               label: str, limits: list[str], executor: ExecutorSettings, resources: Resources,
               campaign: str) -> str:
    """Run one claimed evaluation as a Slurm job (submitted, or re-attached to) and commit
    its result; the job's id, state changes and log path go to this task's log."""
    from prefect.concurrency.sync import concurrency

    from matforge.engine.loop.slurm import run_job

    logger = get_run_logger()
    with ExitStack() as stack:
        if limits:
            stack.enter_context(concurrency(limits, occupy=1, strict=True))
        return run_job(_store(store_url), work, objective,
                       partial(load_evaluator, adapter, parameters), executor.slurm, resources,
                       _queue(executor.slurm.poll_interval), campaign, logger.info)


_queues: dict[float, Any] = {}


def _queue(interval: float):
    from matforge.engine.loop.slurm import SlurmQueue

    if interval not in _queues:
        _queues[interval] = SlurmQueue(interval)
    return _queues[interval]


def _store(url: str):
    from matforge.flows.campaign import _store as store

    return store(url)


def retry_policy(settings: EvaluatorSettings) -> dict[str, Any]:
    """Prefect task options for an adapter's retries.

    Retries wait ``retry_backoff`` seconds, doubling each time, and happen only for
    exceptions whose class or a base class is named in ``retry_on`` (for an exception
    raised in a Slurm job, the classes it reports). The timeout is not Prefect's (a
    thread cannot be stopped): the evaluation's own process is killed at its deadline
    and raises ``TimeoutError``.
    """
    retryable = set(settings.retry_on)

    def should_retry(task, task_run, state) -> bool:
        try:
            state.result()
        except Exception as error:
            names = {cls.__name__ for cls in type(error).__mro__}
            names.update(getattr(error, "bases", ()))
            return bool(names & retryable)
        return False

    options: dict[str, Any] = {"retries": settings.retries}
    if settings.retries:
        options["retry_delay_seconds"] = [
            settings.retry_backoff * 2**i for i in range(settings.retries)
        ]
        options["retry_condition_fn"] = should_retry
    return options


def _dask_cluster(executor: ExecutorSettings, resources: Resources, stack: ExitStack,
                  logs: Path) -> str:
    """The scheduler address of the run's Dask cluster, started here unless given."""
    import dask

    settings = executor.dask
    if settings.address:
        return settings.address
    # worker processes start each evaluation's child process: they must not be daemons
    stack.enter_context(dask.config.set({"distributed.worker.daemon": False}))
    if settings.cluster == "local":
        from distributed import LocalCluster

        cluster = stack.enter_context(LocalCluster(
            n_workers=settings.n_workers, threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=40))
        return cluster.scheduler_address
    from dask_jobqueue import SLURMCluster

    from matforge.engine.loop.slurm import sbatch_time

    slurm = executor.slurm
    minutes = sbatch_time(resources.walltime)
    cluster = stack.enter_context(SLURMCluster(
        cores=resources.cores, processes=1, memory=f"{resources.memory_gb}GiB",
        walltime=f"{minutes // 60:02d}:{minutes % 60:02d}:00", queue=slurm.partition,
        account=slurm.account, python=slurm.python,
        job_extra_directives=[d for d in (f"--qos={slurm.qos}" if slurm.qos else "",
                                          f"--gres=gpu:{resources.gpus}" if resources.gpus
                                          else "", *slurm.directives) if d],
        job_script_prologue=[*slurm.setup, "export DASK_DISTRIBUTED__WORKER__DAEMON=False",
                             f"export MATFORGE_THREADS={resources.cores}"],
        scheduler_options={"dashboard_address": None},
        log_directory=str(logs),  # the workers' Slurm logs, not the current directory
    ))
    cluster.scale(jobs=settings.n_workers)
    return cluster.scheduler_address


@contextmanager
def dispatcher(config: CampaignConfig, store, resources: Resources):
    """The campaign's dispatcher (see the module's docstring), with its task runner (and
    Dask cluster) started for the run and stopped at its end."""
    executor = config.executor
    ev = config.evaluator
    settings = get_settings()
    limits = dict(executor.limits)
    if executor.gpus and executor.kind != "slurm":
        limits[gpu_limit_name()] = len(executor.gpus)
    with ExitStack() as stack:
        ensure_limits(limits)
        if executor.kind == "dask":
            from prefect_dask import DaskTaskRunner

            address = _dask_cluster(executor, resources, stack,
                                    Path(config.workdir) / config.name / "dask-workers")
            runner = DaskTaskRunner(address=address)
            workers = executor.dask.n_workers
            share = (resources.cores if executor.dask.cluster == "slurm" or executor.dask.address
                     else available_cores() // workers)
        else:
            workers = executor.workers or (
                config.batch_size if executor.kind == "slurm" else settings.workers)
            runner = ThreadPoolTaskRunner(max_workers=workers)
            share = settings.cores // workers
        stack.enter_context(runner)
        options = retry_policy(ev)
        # one task object for the run: ``with_options`` builds a new Task, about 2 ms a call
        if executor.kind == "slurm":
            slurm = slurm_task.with_options(**options)

            def submit(item: Work):
                return runner.submit(slurm, dict(
                    store_url=config.store, work=item, objective=config.objective.property,
                    adapter=ev.adapter, parameters=ev.parameters, label=item.label,
                    limits=list(executor.limits), executor=executor, resources=resources,
                    campaign=config.name))
        else:
            threads = _threads(resources, share)
            evaluate = evaluate_task.with_options(**options)

            def submit(item: Work):
                return runner.submit(evaluate, dict(
                    store_url=config.store, work=item, objective=config.objective.property,
                    adapter=ev.adapter, parameters=ev.parameters, label=item.label,
                    limits=list(executor.limits), gpus=executor.gpus,
                    need_gpus=resources.gpus, threads=threads))

        def dispatch(work: list[Work]) -> None:
            """Evaluate claimed work concurrently; an evaluation that still fails after its
            retries is stored as ``failed`` with the error, and the campaign goes on."""
            logger = get_run_logger()
            futures = {submit(item): item for item in work}
            for future in as_completed(list(futures)):
                item = futures[future]
                future.wait()
                if future.state.is_completed():
                    continue
                try:
                    future.result()
                    error = future.state.message or "evaluation failed"
                except Exception as exc:
                    error = describe_error(exc)
                store.complete(item.evaluation_id, "failed", error=error, owner=item.owner)
                logger.warning("evaluation %s failed: %s", item.evaluation_id, error)

        yield dispatch

