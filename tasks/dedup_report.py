"""The dedup cluster summary: the kept documents with the most duplicates removed for them, with examples."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage.rows import valid_batches
from storage.schemas import DEDUP_SCHEMA, DOCUMENT_SCHEMA
from storage.shards import read_shard
from tasks.dedup_config import DUP_EXACT, DUP_MINHASH
from tasks.dedup_stage import sidecar_name


def _removed(out_dir: Path, shard_paths: list[str]) -> pa.Table:
    """Every removed document of this run: id, reason, kept id and similarity."""
    tables = [
        read_shard(
            out_dir / sidecar_name(Path(p).name), DEDUP_SCHEMA, ["id", "drop_reason", "kept_id", "similarity"]
        )
        for p in shard_paths
    ]
    table = pa.concat_tables(tables) if tables else DEDUP_SCHEMA.empty_table()
    # Only duplicates name a kept document; unusable rows are dropped with a reason but for no document.
    return table.filter(
        pc.and_(pc.is_valid(table.column("kept_id")), pc.is_valid(table.column("drop_reason")))
    )


def _describe(shard_paths: list[str], ids: set[str]) -> dict[str, tuple[str, str]]:
    """(uri, title) of the wanted ids found in the input shards."""
    found: dict[str, tuple[str, str]] = {}
    wanted = pa.array(sorted(ids), pa.string())
    for path in shard_paths:
        for checked in valid_batches(
            Path(path), DOCUMENT_SCHEMA, columns=["id", "uri", "title"], max_bytes=None
        ):
            docs = checked.batch.filter(pc.is_in(checked.batch.column("id"), wanted))
            for row in docs.to_pylist():
                found[row["id"]] = (row["uri"] or "", row["title"] or "")
    return found


def cluster_summary(out_dir: str, shard_paths: list[str], top: int = 20) -> list[dict[str, Any]]:
    """The `top` kept documents by number of duplicates removed for them (ties by id), described."""
    removed = _removed(Path(out_dir), shard_paths).to_pylist()
    by_kept: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in removed:
        by_kept[row["kept_id"]].append(row)
    largest = sorted(by_kept.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
    wanted = {kept for kept, _ in largest} | {rows[0]["id"] for _, rows in largest}
    info = _describe(shard_paths, wanted)
    out = []
    for kept, rows in largest:
        reasons = Counter(r["drop_reason"] for r in rows)
        near = [
            r["similarity"] for r in rows if r["drop_reason"] == DUP_MINHASH and r["similarity"] is not None
        ]
        uri, title = info.get(kept, ("(kept by an earlier run)", ""))
        out.append(
            {
                "kept": uri,
                "title": title,
                "removed": len(rows),
                DUP_EXACT: reasons.get(DUP_EXACT, 0),
                DUP_MINHASH: reasons.get(DUP_MINHASH, 0),
                "lowest similarity": round(min(near), 3) if near else None,
                "example removed": info.get(rows[0]["id"], (rows[0]["id"], ""))[0],
            }
        )
    return out
