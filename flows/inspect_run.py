"""`crucible inspect`: read a run's manifests and sidecars (no Prefect needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage.layout import find_stage_dirs, manifest_shards, read_manifest
from storage.schemas import DEDUP_SCHEMA, DOCUMENT_SCHEMA, DROP_SCHEMA, SCORES_SCHEMA
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
            # A row scoring could not use (unreadable, or a step raised) has no scored document or signals.
            doc = by_id.get(row["id"], {"id": row["id"], "uri": None, "title": None, "text": ""})
            signals = dict(row["signals"]) if row["signals"] is not None else None
            out.append({**doc, "text": doc["text"][:500], "drop_reason": reason, "signals": signals})
        if len(out) >= n:
            break
    return out


def _texts_by_id(paths: list[Path], ids: list[str]) -> dict[str, dict[str, Any]]:
    """uri and text of the given documents, looked up in the given shards."""
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        if not path.exists():
            continue
        docs = read_shard(path, DOCUMENT_SCHEMA, columns=["id", "uri", "text"])
        found.update({d["id"]: d for d in docs.filter(pc.is_in(docs["id"], pa.array(ids))).to_pylist()})
    return found


def _dedup_examples(stage: Path, reason: str, n: int) -> list[dict[str, Any]]:
    """Up to n documents a dedup stage removed for `reason`, each beside the document kept in its place."""
    manifest = read_manifest(stage) or {}
    hits: list[dict[str, Any]] = []
    for entry in manifest["shards"]:
        side = read_shard(stage / entry["drops_path"], DEDUP_SCHEMA)
        hits += side.filter(pc.equal(side["drop_reason"], reason)).slice(0, n - len(hits)).to_pylist()
        if len(hits) >= n:
            break
    removed = _texts_by_id([Path(e["inputs"][0]) for e in manifest["shards"]], [h["id"] for h in hits])
    # The kept document is in this stage's output, or (incremental runs) in an earlier run's output.
    earlier = [Path(p["stage"]) / s for p in manifest.get("index", {}).get("parts", []) for s in _names(p)]
    kept = _texts_by_id([*manifest_shards(stage), *earlier], [h["kept_id"] for h in hits])
    out = []
    for hit in hits:
        doc, keep = removed.get(hit["id"], {}), kept.get(hit["kept_id"], {})
        out.append(
            {
                **hit,
                "uri": doc.get("uri"),
                "text": (doc.get("text") or "")[:300],
                "kept_uri": keep.get("uri"),
                "kept_text": (keep.get("text") or "")[:300],
            }
        )
    return out


def _names(part: dict[str, Any]) -> list[str]:
    """Shard file names of the dedup stage that committed an index part."""
    manifest = read_manifest(Path(part["stage"])) or {"shards": []}
    return [s["path"] for s in manifest["shards"]]


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


def _named_inputs(path: Path, schema: pa.Schema) -> set[str]:
    """Every input a shard's rows name (version-1 shards have no input_uri: their uri stands in)."""
    table = read_shard(path, schema, columns=["uri", "input_uri"])
    named = pc.coalesce(table["input_uri"], table["uri"])
    return set(pc.unique(named).to_pylist())


def unaccounted_inputs(stage: Path) -> dict[str, Any]:
    """Inputs an ingest stage planned that no document and no drop row names (expected: none)."""
    manifest = read_manifest(stage) or {}
    if manifest.get("stage") != "ingest":
        raise ValueError(f"--unaccounted reads an ingest stage; {stage} is a {manifest.get('stage')!r} stage")
    missing: list[str] = []
    planned = 0
    for entry in manifest["shards"]:
        named = _named_inputs(stage / entry["path"], DOCUMENT_SCHEMA)
        named |= _named_inputs(stage / entry["drops_path"], DROP_SCHEMA)
        planned += len(entry["inputs"])
        missing += [uri for uri in entry["inputs"] if uri not in named]
    return {"inputs": planned, "unaccounted": sorted(missing)}


def inspect_run(
    run_root: Path, stage: str, reason: str | None, n: int, docs: int, unaccounted: bool = False
) -> dict[str, Any]:
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
        examples = {"curate": _scored_examples, "dedup": _dedup_examples}.get(
            manifest["stage"], _drop_examples
        )
        result["examples"] = examples(dirs[0], reason, n)
    if docs:
        result["documents"] = _doc_examples(dirs[0], docs)
    if unaccounted:
        result |= unaccounted_inputs(dirs[0])
    return result
