"""Data stages on a real Dask cluster (a LocalCluster of two worker processes) write the same bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dask
import pytest
from conftest import task_states
from distributed import Client, LocalCluster, get_task_stream

from flows.curate import curate_flow, run_curate
from flows.ingest import run_ingest
from flows.runners import DaskWorkerError, check_can_spawn, task_runner
from storage.layout import read_manifest
from tasks.demo_corpus import build_demo_corpus
from tasks.ingest import IngestConfig
from tasks.scoring import CurateConfig


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two single-threaded worker processes, non-daemonic so ingest can start its extraction processes."""
    # The setting is read when the nanny starts each worker process, so it applies only while creating.
    with dask.config.set({"distributed.worker.daemon": False}):
        c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with c:
        yield c


def _files(directory: Path) -> dict[str, bytes]:
    """Every Parquet file (shards and sidecars) under a folder, by relative path."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def roots(prefect_api: str, tmp_path_factory: pytest.TempPathFactory, cluster: LocalCluster) -> dict:
    """The demo corpus ingested twice: with the default thread runner and on the Dask cluster."""
    corpus = build_demo_corpus(tmp_path_factory.mktemp("corpus"))
    local, remote = tmp_path_factory.mktemp("threads"), tmp_path_factory.mktemp("dask")
    threads = run_ingest([str(corpus)], str(local), IngestConfig(), workers=2)
    on_dask = run_ingest([str(corpus)], str(remote), IngestConfig(), dask_address=cluster.scheduler_address)
    return {"local": local, "dask": remote, "ingest": (threads, on_dask)}


def test_ingest_on_dask_matches_threads(roots: dict) -> None:
    threads, on_dask = roots["ingest"]
    assert on_dask["documents"] == threads["documents"] > 150 and on_dask["drops"] == threads["drops"]
    a, b = Path(threads["stage_dir"]), Path(on_dask["stage_dir"])
    assert a.name == b.name and _files(a) and _files(a) == _files(b)


def test_curate_on_dask_is_byte_identical(roots: dict, cluster: LocalCluster) -> None:
    local = run_curate(str(roots["local"]), CurateConfig(), workers=2)
    flow = curate_flow.with_options(task_runner=task_runner(0, cluster.scheduler_address))
    with Client(cluster.scheduler_address, set_as_default=False) as client, get_task_stream(client) as stream:
        state = flow(run_root=str(roots["dask"]), config=CurateConfig(), return_state=True)
    remote = state.result()
    shards = len(read_manifest(Path(remote["stage_dir"]))["shards"])
    # Every score and select task ran as a real Prefect task run, on a Dask worker process.
    states = task_states(state.state_details.flow_run_id)
    assert set(states) == {"Completed"} and len(states) == 2 * shards + 1
    ran = [r["key"] for r in stream.data]
    assert sum(k.startswith("score_shard") for k in ran) == shards
    assert sum(k.startswith("select_shard") for k in ran) == shards
    assert {r["worker"] for r in stream.data} <= set(cluster.scheduler_info["workers"])
    # Same outputs, byte for byte: kept shards and scores sidecars, and the scoring stage under them.
    for stage in ("curate", "curate-scores"):
        a, b = Path(roots["local"]) / stage, Path(roots["dask"]) / stage
        assert _files(a) and _files(a) == _files(b)
    assert {k: v for k, v in remote.items() if "dir" not in k} == {
        k: v for k, v in local.items() if "dir" not in k
    }


def test_ingest_refuses_daemonic_workers(prefect_api: str, tmp_path: Path) -> None:
    # Dask's default nanny makes worker processes daemonic, and Python forbids those to start children.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        with pytest.raises(DaskWorkerError, match="--no-nanny"):
            check_can_spawn(c.scheduler_address)
        corpus = tmp_path / "in"
        corpus.mkdir()
        (corpus / "a.txt").write_text("Some text. " * 50)
        with pytest.raises(DaskWorkerError, match="DASK_DISTRIBUTED__WORKER__DAEMON=False"):
            run_ingest([str(corpus)], str(tmp_path / "run"), IngestConfig(), dask_address=c.scheduler_address)
        assert not (tmp_path / "run" / "ingest").exists()


def test_dask_needs_a_prefect_server() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Without one, every worker would start its own temporary server and keep its task runs there.
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(DaskWorkerError, match="API_URL"),
    ):
        task_runner(0, "tcp://127.0.0.1:9")


def test_thread_runner_is_the_default() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    runner = task_runner(3)
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 3
    assert task_runner(0, default=2)._max_workers == 2
