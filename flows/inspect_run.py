"""`crucible inspect`: read a run's manifests and sidecars (no Prefect needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from storage.layout import find_stage_dirs, manifest_shards, read_manifest
from storage.schemas import DOCUMENT_SCHEMA, DROP_SCHEMA, SCORES_SCHEMA
from storage.shards import read_shard


def _drop_examples(stage: Path, reason: str, n: int) -> list[dict[str, Any]]:
    """Up to n drops with the given reason, across the stage's drops sidecars."""
    out: list[dict[str, Any]] = []
    for path in manifest_shards(stage, key="drops_path"):
        table = read_shard(path, DROP_SCHEMA)
        out.extend(table.filter(pc.equal(table["drop_reason"], reason)).slice(0, n - len(out)).to_pylist())
        if len(out) >= n:
            break
    return out


def _scored_examples(stage: Path, reason: str, n: int) -> list[dict[str, Any]]:
    """Up to n documents a curate stage dropped for `reason`, with their text and signals."""
    out: list[dict[str, Any]] = []
    for entry in (read_manifest(stage) or {})["shards"]:
        scores = read_shard(stage / entry["drops_path"], SCORES_SCHEMA)
        hits = scores.filter(pc.equal(scores["drop_reason"], reason)).slice(0, n - len(out))
        if not hits.num_rows:
            continue
        # The scored shard (all documents, before selection) is the curate shard's input.
        docs = read_shard(Path(entry["inputs"][0]), DOCUMENT_SCHEMA, columns=["id", "uri", "title", "text"])
        by_id = {d["id"]: d for d in docs.filter(pc.is_in(docs["id"], hits["id"])).to_pylist()}
        for row in hits.to_pylist():
            doc = by_id[row["id"]]
            out.append(
                {**doc, "text": doc["text"][:500], "drop_reason": reason, "signals": dict(row["signals"])}
            )
        if len(out) >= n:
            break
    return out


def _doc_examples(stage: Path, n: int) -> list[dict[str, Any]]:
    """The first n documents of the stage, text cut to 300 characters."""
    out: list[dict[str, Any]] = []
    for path in manifest_shards(stage):
        cols = ["id", "source", "uri", "title", "text"]
        for row in read_shard(path, DOCUMENT_SCHEMA, columns=cols).slice(0, n - len(out)).to_pylist():
            out.append({**row, "text": row["text"][:300]})
        if len(out) >= n:
            break
    return out


def inspect_run(run_root: Path, stage: str, reason: str | None, n: int, docs: int) -> dict[str, Any]:
    """Summarize the newest complete directory of a stage; optionally show drop and document examples."""
    dirs = find_stage_dirs(run_root, stage)
    if not dirs:
        raise FileNotFoundError(f"no complete {stage!r} stage under {run_root}")
    manifest = read_manifest(dirs[0]) or {}
    result: dict[str, Any] = {
        "stage_dir": str(dirs[0]),
        "shards": len(manifest["shards"]),
        **manifest["counts"],
    }
    if reason:
        examples = _scored_examples if manifest["stage"] == "curate" else _drop_examples
        result["examples"] = examples(dirs[0], reason, n)
    if docs:
        result["documents"] = _doc_examples(dirs[0], docs)
    return result
