"""The curate flow on a real Prefect server, over the ingested demo corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import task_states
from prefect.task_runners import ThreadPoolTaskRunner
from test_bad_rows import _break, _good_docs

from flows.curate import curate_flow
from flows.ingest import run_ingest
from flows.inspect_run import inspect_run
from storage.layout import manifest_shards, stage_manifest, write_manifest
from storage.refs import ShardRef
from storage.schemas import DOCUMENT_SCHEMA, SCORES_SCHEMA, documents_table
from storage.shards import file_fingerprint, read_shard, write_shard
from tasks.demo_corpus import build_demo_corpus
from tasks.ingest import IngestConfig
from tasks.scoring import CurateConfig


def _curate(run_root: Path, cfg: CurateConfig) -> tuple[dict[str, Any], list[str]]:
    """Run the curate flow; return its summary and its task-run states."""
    flow = curate_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    state = flow(run_root=str(run_root), config=cfg, return_state=True)
    return state.result(), task_states(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def ingested(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run root holding the ingested demo corpus."""
    root = tmp_path_factory.mktemp("run")
    corpus = build_demo_corpus(tmp_path_factory.mktemp("corpus"))
    run_ingest([str(corpus)], str(root), IngestConfig(), workers=2)
    return root


def test_curate_counts_sidecars_cache_and_rethreshold(ingested: Path) -> None:
    first, states = _curate(ingested, CurateConfig())
    assert set(states) == {"Completed"}
    stage = Path(first["stage_dir"])
    assert first["documents"] + first["drops"] == first["documents_in"] > 150
    assert 0 < first["drops"] < first["documents_in"]
    kept = [r for p in manifest_shards(stage) for r in read_shard(p, DOCUMENT_SCHEMA).to_pylist()]
    side = [
        r for p in manifest_shards(stage, key="drops_path") for r in read_shard(p, SCORES_SCHEMA).to_pylist()
    ]
    assert len(kept) == first["documents"] and len(side) == first["documents_in"]
    assert {d["lang"] for d in kept} == {"en"} and all(d["lang_score"] >= 0.65 for d in kept)
    assert {s["id"] for s in side if s["drop_reason"] is None} == {d["id"] for d in kept}
    assert all(len(dict(s["signals"])) > 10 for s in side)

    again, states = _curate(ingested, CurateConfig())
    assert set(states) == {"Cached"} and again == first

    # A stricter threshold re-applies stored signals: scoring is all cache hits, only selection runs.
    strict = CurateConfig.model_validate({"filters": {"gopher_quality": {"min_doc_words": 400}}})
    third, states = _curate(ingested, strict)
    assert states.count("Cached") >= len(manifest_shards(stage)) and "Completed" in states
    assert third["documents"] < first["documents"] and third["drop_reasons"]["gopher_short_doc"] > 0

    shown = inspect_run(ingested, "curate", "gopher_short_doc", 2, 0)
    assert len(shown["examples"]) == 2 and shown["examples"][0]["text"]
    assert shown["examples"][0]["signals"]["gopher_quality.word_count"] < 400


def test_cli_curate_and_inspect(ingested: Path, prefect_api: str) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    root = Path(__file__).parents[1]
    args = ["curate", "--run-root", str(ingested), "curate.langid.threshold=0.3", "workers=1"]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env, cwd=root
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["documents"] + summary["drops"] == summary["documents_in"]
    assert "lang_low_score" not in summary["drop_reasons"] or summary["drop_reasons"]["lang_low_score"] < 15
    # The override reached the stage: its manifest records it, and no kept document is below it.
    manifest = json.loads((Path(summary["stage_dir"]) / "_manifest.json").read_text())
    assert manifest["config"]["langid"]["threshold"] == 0.3
    kept = [
        d
        for p in manifest_shards(Path(summary["stage_dir"]))
        for d in read_shard(p, DOCUMENT_SCHEMA).to_pylist()
    ]
    assert kept and min(d["lang_score"] for d in kept) >= 0.3
    args = ["inspect", str(ingested), "--stage", "curate", "--reason", "gopher_few_alpha_words", "-n", "1"]
    shown = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=root
    )
    assert shown.returncode == 0, shown.stderr
    example = json.loads(shown.stdout)["examples"][0]
    assert example["drop_reason"] == "gopher_few_alpha_words" and example["text"]
    bad = subprocess.run(
        [sys.executable, "-m", "flows.cli", "curate", "--run-root", str(ingested / "nothing-here")],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    assert bad.returncode == 1 and "no complete ingest stage" in bad.stderr


def test_unreadable_rows_of_an_outside_stage_are_drops_with_reasons(prefect_api: str, tmp_path: Path) -> None:
    # An external --ingest-dir (or a shard from another tool) with invalid UTF-8 in one row: the flow
    # completes, the row is a drop with its reason, counts add up, and inspect shows it.
    docs = _good_docs()
    table = _break(documents_table(docs), 2, "text")
    stage = tmp_path / "outside" / "ingest" / "k"
    path = stage / "shard-00000.parquet"
    write_shard(path, table, DOCUMENT_SCHEMA)
    ref = ShardRef(
        path=path.name, rows=len(docs), bytes=path.stat().st_size, fingerprint=file_fingerprint(path),
        drops_path=path.name, drops=0, inputs=[], per_source={}, drop_reasons={}, seconds=0.0,
    )  # fmt: skip
    write_manifest(stage, stage_manifest("ingest", "k", "test", None, {}, [ref]))
    flow = curate_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    result = flow(run_root=str(tmp_path / "run"), config=CurateConfig(), ingest_dir=str(stage))
    assert result["documents_in"] == len(docs) == result["documents"] + result["drops"]
    assert result["drop_reasons"]["doc_invalid_utf8"] == 1
    shown = inspect_run(tmp_path / "run", "curate", "doc_invalid_utf8", 5, 0)
    assert [e["id"] for e in shown["examples"]] == [docs[2].id] and shown["examples"][0]["signals"] is None
