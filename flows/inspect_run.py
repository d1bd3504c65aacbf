"""`crucible inspect`: read a run's manifests and sidecars (no Prefect needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from storage.layout import find_stage_dirs, manifest_shards, read_manifest
from storage.schemas import DOCUMENT_SCHEMA, DROP_SCHEMA
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
        result["examples"] = _drop_examples(dirs[0], reason, n)
    if docs:
        result["documents"] = _doc_examples(dirs[0], docs)
    return result
