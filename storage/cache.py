"""Prefect cache policies and where task results are persisted."""

from __future__ import annotations

from pathlib import Path

from prefect.cache_policies import INPUTS, TASK_SOURCE

# Keys on the task's inputs (which carry input fingerprints, the config and the stage directory, itself keyed
# by code version) and on the task's own source. Never INPUTS alone: it collides across tasks.
SHARD_POLICY = INPUTS + TASK_SOURCE


def result_store(run_root: Path | str) -> Path:
    """The Path store for task results inside a run root (a Path, never a str: a str names a block)."""
    return Path(run_root).resolve() / "_prefect" / "results"
