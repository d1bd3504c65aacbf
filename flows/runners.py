"""Where a stage's tasks run: a thread pool on this machine, or a Dask cluster at a scheduler address."""

from __future__ import annotations

import multiprocessing
import os

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner


class DaskWorkerError(RuntimeError):
    """The Dask cluster cannot run this stage as configured."""


def task_runner(
    workers: int, dask_address: str | None = None, *, default: int = 0, spawns: bool = False
) -> TaskRunner:
    """A DaskTaskRunner on the cluster at `dask_address`, else `workers` threads (0: `default`, or one a CPU).

    `spawns` marks a stage whose tasks start child processes (ingest's isolated extraction): those need
    non-daemonic Dask workers, checked before the flow starts so the run fails at once with the fix.
    """
    if not dask_address:
        return ThreadPoolTaskRunner(max_workers=workers or default or os.cpu_count() or 1)
    # Imported here: distributed costs ~0.5 s of import time that local runs should not pay.
    from prefect_dask import DaskTaskRunner

    check_api()
    if spawns:
        check_can_spawn(dask_address)
    # The cluster decides the parallelism (its workers and threads); `workers` applies to local runs only.
    return DaskTaskRunner(address=dask_address)


def check_api() -> None:
    """Refuse Dask without a Prefect server: each worker would record its task runs in a temporary one."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise DaskWorkerError(
            "Dask workers need a Prefect server they can reach: start one (`prefect server start`) and set "
            "PREFECT_API_URL (the flow hands it to the workers)"
        )


def _is_daemon() -> bool:
    """Whether this (Dask worker) process is daemonic; runs on every worker."""
    return multiprocessing.current_process().daemon


def check_can_spawn(dask_address: str) -> None:
    """Refuse a cluster whose worker processes are daemonic: Python forbids them to start children."""
    from distributed import Client

    with Client(dask_address, set_as_default=False, timeout=30) as client:
        daemonic = sorted(worker for worker, flag in client.run(_is_daemon).items() if flag)
    if daemonic:
        raise DaskWorkerError(
            f"ingest extracts each file in a child process, which daemonic Dask workers cannot start "
            f"({', '.join(daemonic)}): start the workers with `dask worker --no-nanny ...` or with "
            "DASK_DISTRIBUTED__WORKER__DAEMON=False"
        )
