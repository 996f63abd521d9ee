"""Process-wide settings from ``MATFORGE_*`` variables, and the CPU threads they allow."""

from __future__ import annotations

import os

import numpy  # noqa: F401  (loads numpy's OpenBLAS, so threadpoolctl has a BLAS pool to report)
import pydantic
import pytest
import scipy.linalg  # noqa: F401  (loads SciPy's own OpenBLAS)
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from matforge.engine.settings import MatforgeSettings, SettingsError, get_settings, limit_threads


@pytest.fixture
def env(monkeypatch):
    """monkeypatch, with the caller's own ``MATFORGE_*`` variables removed."""
    for name in list(os.environ):
        if name.upper().startswith("MATFORGE_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def two_threads_everywhere():
    """Start from 2 threads in torch and every BLAS/OpenMP pool; restore the limits after.

    Starting above 1 lets the tests fail when nothing is limited, whatever this machine's
    default is.
    """
    before_torch, before_pools = torch.get_num_threads(), threadpool_info()
    torch.set_num_threads(2)
    threadpool_limits(2)
    yield
    torch.set_num_threads(before_torch)
    threadpool_limits(limits=before_pools)


def test_defaults_when_nothing_is_set(env):
    settings = get_settings()
    assert settings.prefect_api_url is None
    assert (settings.prefect_host, settings.prefect_port) == ("127.0.0.1", 4200)
    assert settings.store == "sqlite:///matforge.db"
    assert settings.workers == 2
    assert settings.threads is None
    assert settings.cores == len(os.sched_getaffinity(0))


def test_read_from_the_environment_each_call(env):
    env.setenv("MATFORGE_PREFECT_API_URL", "http://prefect.lab:4200/api")
    env.setenv("MATFORGE_PREFECT_HOST", "0.0.0.0")
    env.setenv("MATFORGE_PREFECT_PORT", "4300")
    env.setenv("MATFORGE_STORE", "postgresql+psycopg2://lab@db/campaigns")
    env.setenv("MATFORGE_WORKERS", "4")
    env.setenv("MATFORGE_THREADS", "3")
    env.setenv("MATFORGE_CORES", "16")
    settings = get_settings()
    assert settings.prefect_api_url == "http://prefect.lab:4200/api"
    assert (settings.prefect_host, settings.prefect_port) == ("0.0.0.0", 4300)
    assert settings.store == "postgresql+psycopg2://lab@db/campaigns"
    assert (settings.workers, settings.threads, settings.cores) == (4, 3, 16)
    env.setenv("MATFORGE_WORKERS", "1")
    assert get_settings().workers == 1


def test_empty_variable_counts_as_unset(env):
    env.setenv("MATFORGE_THREADS", "")
    assert get_settings().threads is None


def test_other_matforge_variables_are_left_alone(env):
    # MATFORGE_HOME (deploy/prefect.yaml) and MATFORGE_TEST_POSTGRES are not settings
    env.setenv("MATFORGE_HOME", "/srv/matforge")
    env.setenv("MATFORGE_TEST_POSTGRES", "postgresql://localhost/test")
    assert get_settings().workers == 2


def test_misspelt_setting_in_code_is_rejected():
    with pytest.raises(pydantic.ValidationError, match="wrokers"):
        MatforgeSettings(wrokers=3)


@pytest.mark.parametrize(
    "name, value, reason",
    [
        ("MATFORGE_WORKERS", "0", "must be >= 1, got '0'"),
        ("MATFORGE_WORKERS", "abc", "must be a whole number, got 'abc'"),
        ("MATFORGE_THREADS", "-2", "must be >= 1, got '-2'"),
        ("MATFORGE_CORES", "1.5", "must be a whole number, got '1.5'"),
        ("MATFORGE_PREFECT_PORT", "70000", "must be <= 65535, got '70000'"),
    ],
)
def test_bad_value_names_the_variable_and_the_reason(env, name, value, reason):
    env.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        get_settings()
    assert str(error.value) == f"environment variable {name}: {reason}"


def test_two_workers_on_two_cores_get_one_thread_each(env, two_threads_everywhere):
    assert limit_threads(MatforgeSettings(workers=2, cores=2)) == 1
    assert torch.get_num_threads() == 1
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas, "no BLAS library loaded: nothing to check"
    assert [pool["num_threads"] for pool in blas] == [1] * len(blas)
    openmp = [pool for pool in threadpool_info() if pool["user_api"] == "openmp"]
    assert [pool["num_threads"] for pool in openmp] == [1] * len(openmp)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"workers": 1, "cores": 2, "threads": 1}, 1),  # the threads setting wins over the split
        ({"workers": 1, "cores": 3}, 3),
        ({"workers": 2, "cores": 7}, 3),
        ({"workers": 8, "cores": 2}, 1),  # more workers than cores: still one thread
    ],
)
def test_threads_per_process(env, two_threads_everywhere, fields, expected):
    assert limit_threads(MatforgeSettings(**fields)) == expected
    assert torch.get_num_threads() == expected


def test_limit_threads_reads_the_environment_by_default(env, two_threads_everywhere):
    env.setenv("MATFORGE_THREADS", "1")
    assert limit_threads() == 1
    assert torch.get_num_threads() == 1
