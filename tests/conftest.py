"""Shared fixtures: the real data folder beside the project, skipped when absent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test data in ../shared/data; skip the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (a user's clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real temporary Prefect server (SQLite) for the session; yields its API URL."""
    import contextlib
    import os

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # The session's server records task runs for hundreds of tests. The services that only persist
    # events, evaluate automations or watch schedules add SQLite writes the tests never read, and under
    # that load later tests ran several times slower ("database is locked"). They are switched off in
    # the environment this server starts with, restored right after: the server and UI tests start
    # servers of their own, from the restored environment, with every service on.
    idle = ("EVENT_PERSISTER", "TRIGGERS", "SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS")
    idle += ("REPOSSESSOR", "CANCELLATION_CLEANUP", "CLEANUP_RECONCILER")
    quiet = {f"PREFECT_SERVER_SERVICES_{s}_ENABLED": "false" for s in idle}
    quiet["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with contextlib.ExitStack() as stack:
        saved = {k: os.environ.get(k) for k in quiet}
        os.environ.update(quiet)
        try:
            stack.enter_context(prefect_test_harness(server_startup_timeout=120))  # starts the server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        yield PREFECT_API_URL.value()


def task_runs(flow_run_id: object, timeout_s: float = 60.0) -> list[Any]:
    """Every task run of a flow run, once the server has recorded each one's final state.

    Task-run states reach the server as events that its recorder service writes a moment later (and
    retries when SQLite is busy), so a read right after the flow returns may still see "Running".
    """
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            runs = client.read_task_runs(flow_run_filter=flt)
            if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


def task_states(flow_run_id: object) -> list[str]:
    """Sorted state names of every task run of a flow run (Completed, Cached, ...)."""
    return sorted(r.state.name for r in task_runs(flow_run_id))


def write_doc_stage(directory: Path, shards: list[list[object]], stage: str = "curate") -> Path:
    """A complete stage directory (shards + manifest) holding the given Documents, one list per shard."""
    from storage.layout import stage_manifest, write_manifest
    from storage.refs import ShardRef
    from storage.schemas import DOCUMENT_SCHEMA, documents_table
    from storage.shards import file_fingerprint, write_shard

    refs = []
    for k, docs in enumerate(shards):
        path = directory / f"shard-{k:05d}.parquet"
        write_shard(path, documents_table(docs), DOCUMENT_SCHEMA)
        refs.append(
            ShardRef(
                path=path.name,
                rows=len(docs),
                bytes=path.stat().st_size,
                fingerprint=file_fingerprint(path),
                drops_path=path.name,
                drops=0,
                inputs=[],
                per_source={},
                drop_reasons={},
                seconds=0.0,
            )
        )
    write_manifest(directory, stage_manifest(stage, directory.name, "test", None, {}, refs))
    return directory


def flow_tree_states(flow_run_id: object) -> dict[str, list[str]]:
    """Task-run state names of a flow run and of all its subflows, by flow name (e.g. `ingest`).

    The task runs Prefect records in a parent for each subflow call are left out: they mirror the subflow.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    out: dict[str, list[str]] = {}
    pending = [flow_run_id]
    with get_client(sync_client=True) as client:
        while pending:
            run = client.read_flow_run(pending.pop())
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id]))
            )
            wrappers = {c.parent_task_run_id for c in children}
            tasks = task_runs(run.id)
            name = client.read_flow(run.flow_id).name
            out.setdefault(name, []).extend(t.state.name for t in tasks if t.id not in wrappers)
            pending.extend(c.id for c in children)
    return {name: sorted(states) for name, states in out.items()}


def docs_pipeline(
    run_root: Path, inputs: list[str], group_files: int, train: dict[str, Any]
) -> dict[str, Any]:
    """Settings of a small whole pipeline over documentation pages: the demo's curation, a tiny tokenizer
    and model, and the given training settings."""
    return {
        "run_root": str(run_root),
        "inputs": inputs,
        "workers": 2,
        "ingest": {"group_files": group_files},
        "curate": {
            "filters": {
                "gopher_quality": {"min_alpha_words_ratio": 0.6},
                "gopher_repetition": {f"max_top_{n}_gram_frac": 0.25 for n in (2, 3, 4)},
            }
        },
        "tokenize": {"tokenizer": {"vocab_size": 400}, "val_fraction": 0.1},
        "train": {"model": {"block_size": 32}, "device": "cpu", "train": train},
    }
