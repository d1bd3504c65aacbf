"""Reruns on a real Prefect server: unchanged input is all cache hits; 10% new input redoes little work.

A watched folder of real documentation pages is run through the whole pipeline with every tenth page held
back; rerun unchanged (every task Cached, every file byte-identical); then the held-back pages arrive and
only they go through ingest, curate and dedup (deduplicated against everything earlier), the tokenizer is
kept, and only shards that changed are re-tokenized.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import docs_pipeline, flow_tree_states

from flows.config import PipelineConfig
from flows.pipeline import pipeline_flow
from storage.layout import find_stage_dirs, read_manifest

pytestmark = pytest.mark.slow


def _config(run_root: Path, watched: Path) -> PipelineConfig:
    """A small pipeline over the watched folder: a tiny tokenizer and a few training steps."""
    train = {"max_steps": 6, "warmup_steps": 2, "batch_size": 2, "eval_batches": 1}
    return PipelineConfig.model_validate(docs_pipeline(run_root, [str(watched)], 8, train))


def _digests(run_root: Path) -> dict[str, str]:
    """Digest of every file under the run root but Prefect's own records."""
    return {
        str(p.relative_to(run_root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_root.rglob("*"))
        if p.is_file() and "_prefect" not in p.parts
    }


def _run(cfg: PipelineConfig) -> tuple[dict, dict[str, Counter]]:
    """Run the pipeline; its summary and the state counts of every stage's task runs."""
    state = pipeline_flow(config=cfg, return_state=True)
    states = flow_tree_states(state.state_details.flow_run_id)
    return state.result(), {name: Counter(s) for name, s in states.items()}


def test_unchanged_rerun_is_cached_and_new_input_redoes_little(
    shared_data: Path, tmp_path: Path, prefect_api: str
) -> None:
    # 44 real pages (40 first, 4 later): each stage has several shards, and the test stays within CI's time.
    pages = sorted((shared_data / "html" / "python-3.11-docs").rglob("*.html"))[:44]
    watched, held_back = tmp_path / "watched", []
    for i, page in enumerate(pages):
        rel = page.relative_to(shared_data / "html" / "python-3.11-docs")
        (held_back if i % 10 == 5 else []).append(rel)
        if i % 10 != 5:
            (watched / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(page, watched / rel)
    cfg = _config(tmp_path / "run", watched)

    first, first_states = _run(cfg)
    old_groups = len(read_manifest(Path(first["ingest"]["stage_dir"]))["shards"])
    before = _digests(tmp_path / "run")
    again, again_states = _run(cfg)
    assert again == first
    for stage, counts in again_states.items():
        assert set(counts) <= {"Cached"}, f"{stage}: {counts}"
    assert (
        sum(c["Cached"] for c in again_states.values())
        >= sum(sum(c.values()) for c in first_states.values()) - 2
    )
    assert _digests(tmp_path / "run") == before
    dedup_manifest = read_manifest(Path(first["dedup"]["stage_dir"]))
    deduped = {e["path"]: e["fingerprint"] for e in dedup_manifest["shards"]}

    for rel in held_back:
        (watched / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shared_data / "html" / "python-3.11-docs" / rel, watched / rel)
    third, states = _run(cfg)
    assert third["ingest"]["documents"] == first["ingest"]["documents"] + len(held_back)
    new_groups = len(read_manifest(Path(third["ingest"]["stage_dir"]))["shards"]) - old_groups
    # Only the groups holding new pages are ingested, scored and hashed; the rest are cache hits.
    assert states["ingest"]["Completed"] == new_groups and states["ingest"]["Cached"] == old_groups
    assert 1 <= new_groups <= len(held_back)
    assert states["curate"]["Completed"] <= 2 * new_groups + 1  # score + select per new shard, threshold
    dedup_redone = states["dedup"]["Completed"]
    # signatures + filter for new shards; buckets, cluster and index commit over the whole corpus.
    assert dedup_redone <= 2 * new_groups + 3
    # The tokenizer is kept (no training task at all) and exactly the new or re-filtered dedup shards are
    # re-tokenized.
    now = read_manifest(Path(third["dedup"]["stage_dir"]))["shards"]
    changed = [e["path"] for e in now if deduped.get(e["path"]) != e["fingerprint"]]
    assert states["tokenize"]["Completed"] == len(changed) >= new_groups
    assert third["tokenize"]["tokenizer"]["hash"] == first["tokenize"]["tokenizer"]["hash"]
    assert third["dedup"]["documents_in"] == third["curate"]["documents"]
    redone = sum(c["Completed"] for name, c in states.items() if name != "train")
    total = sum(sum(c.values()) for name, c in states.items() if name != "train")
    print(f"\n+10% input: {redone} of {total} data-stage tasks recomputed ({redone / total:.0%})")
    assert redone / total <= 0.35
    # The new model is trained on the larger corpus, in a stage of its own.
    assert third["train"]["stage_dir"] != first["train"]["stage_dir"] and third["train"]["step"] == 6
    assert len(find_stage_dirs(tmp_path / "run", "train")) == 2
