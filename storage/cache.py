"""Prefect cache policies and where task results are persisted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from storage.schemas import clean_str

# Keys on the task's inputs (which carry input fingerprints, the config and the stage directory, itself keyed
# by code version) and on the task's own source. Never INPUTS alone: it collides across tasks.
SHARD_POLICY = INPUTS + TASK_SOURCE


def result_store(run_root: Path | str) -> Path:
    """The Path store for task results inside a run root (a Path, never a str: a str names a block)."""
    return Path(run_root).resolve() / "_prefect" / "results"


def cached_options(task_obj: Any, name: str, run_root: Path | str, out_dir: Path, *outputs: str) -> Any:
    """A task with its run name and result store, forced to recompute when an output it wrote is gone.

    A cache record outlives the files it points at (someone deletes a shard); serving it would hand the
    next stage a missing path, so a missing output turns the cache lookup into a refresh.
    """
    complete = all((Path(out_dir) / name_).exists() for name_ in outputs)
    return task_obj.with_options(
        task_run_name=literal_run_name(name),
        result_storage=result_store(run_root),
        refresh_cache=not complete,
    )


def literal_run_name(name: str) -> str:
    """A run name Prefect shows as written, whatever file name it holds."""
    # Prefect formats a run name as a template of the task's parameters (a file named `x{a,b}.txt` failed
    # the stage) and sends it in JSON events (a lone surrogate from an undecodable name failed each one).
    return clean_str(name).replace("{", "{{").replace("}", "}}")


# Faults a second attempt can fix: I/O (a full disk freed, a flaky network file system, a dropped
# connection), memory pressure from other work, a pipe closed from outside. Anything else is deterministic
# (a bug, or an input the code cannot handle yet) and would fail the same way again: bad inputs are turned
# into drop rows where they are read, so a retry of a whole group only repeats the failure.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, MemoryError, EOFError)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry a task only after a transient fault, never a deterministic error."""
    return isinstance(state.data, TRANSIENT_ERRORS)


def stage_task(fn: Any, name: str, cache_policy: Any = SHARD_POLICY, retries: int = 1, **options: Any) -> Any:
    """A data-stage Prefect task: cached, its result persisted, retried only after a transient fault."""
    return task(
        name=name,
        cache_policy=cache_policy,
        persist_result=True,
        retries=retries,
        retry_condition_fn=retry_transient,
        **options,
    )(fn)
