"""The dedup flow on a real Prefect server: caching, re-run of damaged signatures, incremental index, CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import task_runs, write_doc_stage
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.task_runners import ThreadPoolTaskRunner
from test_dedup import _edit, _family, _text

from flows.dedup import dedup_flow
from flows.inspect_run import inspect_run
from storage.layout import manifest_shards, read_manifest
from storage.schemas import DEDUP_SCHEMA, DOCUMENT_SCHEMA, new_document
from storage.shards import read_shard
from tasks.dedup import filter_task
from tasks.dedup_config import DUP_EXACT, DUP_MINHASH, DedupConfig


def _run(
    root: Path, curate_dir: Path, workers: int = 2, cfg: DedupConfig | None = None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Run the dedup flow; return its summary and each task run's (name, state)."""
    flow = dedup_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    cfg = cfg or DedupConfig()
    state = flow(run_root=str(root), config=cfg, curate_dir=str(curate_dir), return_state=True)
    return state.result(), _states_by_name(state.state_details.flow_run_id)


def _states_by_name(flow_run_id: object) -> list[tuple[str, str]]:
    """(task run name, state name) of every task run of a flow run."""
    return sorted((r.name, r.state.name) for r in task_runs(flow_run_id))


def _decisions(stage: Path) -> dict[str, tuple[Any, ...]]:
    """id -> (reason, cluster, kept id) over a dedup stage's sidecars."""
    rows = [
        r for p in manifest_shards(stage, key="drops_path") for r in read_shard(p, DEDUP_SCHEMA).to_pylist()
    ]
    return {r["id"]: (r["drop_reason"], r["cluster_id"], r["kept_id"]) for r in rows}


@pytest.fixture()
def curated(tmp_path: Path) -> tuple[Path, Path, list[Any]]:
    """A run root with one curate stage of three shards holding duplicate families."""
    rng = random.Random(7)
    docs = [d for k in range(3) for d in _family(rng, f"{k}-")]
    stage = write_doc_stage(tmp_path / "run" / "curate" / "c1", [docs[:10], docs[10:21], docs[21:]])
    return tmp_path / "run", stage, docs


def test_flow_caches_reruns_damaged_signatures_and_filters(
    curated: tuple[Path, Path, list[Any]], prefect_api: str
) -> None:
    root, stage, docs = curated
    first, states = _run(root, stage)
    assert {s for _, s in states} == {"Completed"}
    assert first["documents_in"] == len(docs) == first["documents"] + first["drops"]
    assert first["drop_reasons"] == {DUP_EXACT: 3, DUP_MINHASH: 6}
    out = Path(first["stage_dir"])
    kept = {d["id"] for p in manifest_shards(out) for d in read_shard(p, DOCUMENT_SCHEMA).to_pylist()}
    decisions = _decisions(out)
    assert kept == {i for i, (reason, _, _) in decisions.items() if reason is None}

    again, states = _run(root, stage)
    assert again == first
    assert {s for n, s in states} == {"Cached"}
    # The cluster summary: each kept document with its removed copies, largest first.
    with get_client(sync_client=True) as client:
        filt = ArtifactFilter(key=ArtifactFilterKey(any_=["dedup-clusters"]))
        table = json.loads(client.read_artifacts(artifact_filter=filt, limit=1)[0].data)
    assert sum(row["removed"] for row in table) == 9 and table[0]["removed"] >= table[-1]["removed"]
    assert sum(row[DUP_EXACT] for row in table) == 3 and all(
        row["kept"].startswith("mem://") for row in table
    )

    # A truncated signature file is refused and only its producer re-runs; the output is unchanged.
    sig = sorted((root / "dedup-signatures").rglob("sig-*.parquet"))[0]
    sig.write_bytes(sig.read_bytes()[:100])
    third, states = _run(root, stage, workers=1)
    signature_states = [s for n, s in states if n.startswith("signatures:")]
    # Three cache hits (one of them the damaged file, refused by validation), then one re-computation.
    assert signature_states.count("Completed") == 1 and signature_states.count("Cached") == 3
    assert third == first and _decisions(out) == decisions

    shown = inspect_run(root, "dedup", DUP_MINHASH, 2, 0)
    example = shown["examples"][0]
    assert example["kept_text"] and example["text"] and 0.8 <= example["similarity"] < 1.0


def test_same_output_whatever_the_number_of_workers(
    curated: tuple[Path, Path, list[Any]], prefect_api: str, tmp_path: Path
) -> None:
    """Fresh run roots on one and on three workers write byte-identical shards and sidecars."""
    _, stage, _ = curated
    outputs = []
    for workers in (1, 3):
        result, states = _run(tmp_path / f"workers-{workers}", stage, workers=workers)
        assert {s for _, s in states} == {"Completed"}  # computed, not served from the other's cache
        out = Path(result["stage_dir"])
        outputs.append((out.name, {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet"))}))
    assert outputs[0] == outputs[1] and len(outputs[0][1]) == 6


def test_a_failed_task_is_retried_and_the_stage_completes(
    curated: tuple[Path, Path, list[Any]], prefect_api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A transient error in one shard's task costs a retry of that task, not the stage."""
    _, stage, _ = curated
    real, calls = filter_task.fn, []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        if len(calls) == 1:
            raise OSError("a transient I/O error")
        return real(*args, **kwargs)

    monkeypatch.setattr(filter_task, "fn", flaky)
    monkeypatch.setattr(filter_task, "retry_delay_seconds", 0)
    retried, states = _run(tmp_path / "flaky", stage)
    runs = task_runs(_last_flow_run(tmp_path / "flaky"))
    assert sorted(r.run_count for r in runs if r.name.startswith("filter:")) == [1, 1, 2]
    assert {s for _, s in states} == {"Completed"} and len(calls) == 4
    monkeypatch.setattr(filter_task, "fn", real)
    clean, _ = _run(tmp_path / "clean", stage)

    def files(result: dict[str, Any]) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(Path(result["stage_dir"]).glob("*.parquet"))}

    assert files(retried) == files(clean) and retried["drop_reasons"] == clean["drop_reasons"]


def _last_flow_run(root: Path) -> Any:
    """The id of the newest dedup flow run over a run root."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        flt = FlowRunFilter(name=FlowRunFilterName(any_=[f"dedup {root}"]))
        return client.read_flow_runs(flow_run_filter=flt, sort=FlowRunSort.START_TIME_DESC, limit=1)[0].id


def test_later_run_dedups_against_the_index(
    curated: tuple[Path, Path, list[Any]], prefect_api: str, tmp_path: Path
) -> None:
    """A second run root (a nightly inbox, another crawl) sharing the index dedups against the first."""
    root, stage, docs = curated
    cfg = DedupConfig(index={"path": str(tmp_path / "shared-index")})
    first, _ = _run(root, stage, cfg=cfg)
    rng = random.Random(8)
    kept_first = [d for d in docs if _decisions(Path(first["stage_dir"]))[d.id][0] is None]
    fresh = [new_document(_text(rng), source="text", uri=f"mem://fresh-{i}") for i in range(4)]
    near = new_document(_edit(kept_first[0].text, rng), source="text", uri="mem://near-old")
    inbox = tmp_path / "inbox-run"
    stage2 = write_doc_stage(inbox / "curate" / "c2", [[near, *fresh]])
    second, states = _run(inbox, stage2, cfg=cfg)
    # Only the new shard is signed; the earlier run's documents come from the index.
    assert sum(n.startswith("signatures:") for n, _ in states) == 1
    manifest = read_manifest(Path(second["stage_dir"]))
    assert manifest["dedup"]["indexed_documents"] == len(kept_first)
    assert [p["rows"] for p in manifest["index"]["parts"]] == [len(kept_first)]
    decisions = _decisions(Path(second["stage_dir"]))
    assert decisions[near.id][0] == DUP_MINHASH and decisions[near.id][2] == kept_first[0].id
    assert all(decisions[d.id][0] is None for d in fresh)
    # The first run, repeated, ignores its own index part: same key, all cached, same result.
    repeat, _ = _run(root, stage, cfg=cfg)
    assert repeat == first
    shown = inspect_run(inbox, "dedup", DUP_MINHASH, 1, 0)
    assert shown["examples"][0]["kept_text"] == kept_first[0].text[:300]
    # The first run root re-deduped with other settings keeps what it kept: its own part is superseded.
    other, _ = _run(root, stage, cfg=cfg.model_copy(update={"verify_threshold": 0.85}))
    assert other["documents"] == first["documents"] and other["dedup"]["indexed_documents"] == len(fresh)


def test_cli_dedup(curated: tuple[Path, Path, list[Any]], prefect_api: str) -> None:
    root, _, docs = curated
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    args = ["dedup", "--run-root", str(root), "dedup.minhash=conservative", "dedup.index.enabled=false"]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["documents_in"] == len(docs) and summary["drop_reasons"][DUP_EXACT] == 3
    manifest = read_manifest(Path(summary["stage_dir"]))
    assert manifest["config"]["minhash"]["rows"] == 13 and manifest["index"]["path"] is None
    assert not (root / "dedup-index").exists()
