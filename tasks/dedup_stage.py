"""Dedup stage steps over files: LSH buckets, clustering into sidecars, per-shard filtering, index rows.

Each function takes paths and settings and returns a small summary or ref, so the Prefect wrappers in
tasks/dedup.py stay one line each and tests call these directly.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from storage.layout import sidecar_name as layout_sidecar
from storage.refs import ShardRef
from storage.rows import CheckedBatch, valid_batches
from storage.schemas import DEDUP_SCHEMA, DOCUMENT_SCHEMA, INDEX_SCHEMA
from storage.shards import ShardWriter, file_fingerprint, read_shard, write_shard
from tasks.dedup_config import DedupConfig
from tasks.dedup_index import commit, load_parts
from tasks.dedup_resolve import (
    bucket_pairs,
    load_corpus,
    load_pairs,
    resolve,
    save_pairs,
    sidecar_tables,
    summary,
)
from tasks.dedup_sigs import SigRef, band_list, read_signatures


def sidecar_name(shard_name: str) -> str:
    """`shard-x.parquet` -> `shard-x.dedup.parquet`."""
    return layout_sidecar(shard_name, "dedup")


def bucket_step(
    refs: list[SigRef], index_dir: str, parts: list[dict[str, Any]], pairs_path: str, cfg: DedupConfig
) -> dict[str, int]:
    """Group every document by LSH band key and save the candidate pairs."""
    corpus = load_corpus(refs, load_parts(Path(index_dir), parts), cfg)
    pairs = bucket_pairs(corpus)
    save_pairs(Path(pairs_path), pairs)
    return {"documents": int(corpus.length.size), "candidate_pairs": len(pairs)}


def cluster_step(
    refs: list[SigRef],
    index_dir: str,
    parts: list[dict[str, Any]],
    pairs_path: str,
    out_dir: str,
    cfg: DedupConfig,
) -> dict[str, Any]:
    """Resolve clusters over the whole corpus and write one dedup sidecar per shard of this run."""
    start = time.perf_counter()
    corpus = load_corpus(refs, load_parts(Path(index_dir), parts), cfg)
    decisions = resolve(corpus, load_pairs(Path(pairs_path), corpus.length.size), cfg)
    sidecars = {}
    for ref, table in zip(refs, sidecar_tables(corpus, decisions), strict=True):
        path = Path(out_dir) / sidecar_name(Path(ref.source).name)
        write_shard(path, table, DEDUP_SCHEMA)
        sidecars[path.name] = file_fingerprint(path)
    seconds = round(time.perf_counter() - start, 3)
    return {**summary(decisions, corpus), "seconds": seconds, "sidecars": sidecars}


def _kept_rows(
    checked: CheckedBatch, ids: pa.ChunkedArray, reasons: list[str | None], in_path: str
) -> pa.Table:
    """The rows of one checked batch that the sidecar keeps, after checking the batch matches it."""
    rows = checked.rows()
    if rows.size and not checked.batch.column("id").equals(ids.take(pa.array(rows)).combine_chunks()):
        raise ValueError(f"{in_path} no longer matches its dedup sidecar (rows differ)")
    # An unusable row must have been dropped for it by the signatures (they check rows the same way).
    if any(reasons[b.row] is None for b in checked.bad):
        raise ValueError(f"{in_path} has unusable rows its dedup sidecar keeps")
    return pa.Table.from_batches([checked.batch]).filter(
        pa.array([reasons[i] is None for i in rows], pa.bool_())
    )


def filter_shard(
    in_path: str, in_fingerprint: str, sidecar_fingerprint: str, out_dir: str, batch_size: int
) -> ShardRef:
    """Write the documents of one shard that its dedup sidecar (of the given fingerprint) keeps."""
    start = time.perf_counter()
    name = Path(in_path).name
    out = Path(out_dir)
    # The fingerprint is in the task's cache key, so new decisions (a later run's documents joining a
    # cluster) re-filter the shard; checking it here refuses a sidecar rewritten by another run meanwhile.
    if file_fingerprint(out / sidecar_name(name)) != sidecar_fingerprint:
        raise ValueError(f"{out / sidecar_name(name)} changed while this run was filtering")
    decisions = read_shard(out / sidecar_name(name), DEDUP_SCHEMA, columns=["id", "drop_reason"])
    reasons = decisions.column("drop_reason").to_pylist()
    rows, per_source = 0, Counter[str]()
    with ShardWriter(out / name, DOCUMENT_SCHEMA) as writer:
        for checked in valid_batches(Path(in_path), DOCUMENT_SCHEMA, batch_size):
            rows += checked.size
            if rows > decisions.num_rows:
                break
            kept = _kept_rows(checked, decisions.column("id"), reasons, in_path)
            per_source.update(kept.column("source").to_pylist())
            writer.write(kept)
    if rows != decisions.num_rows:
        raise ValueError(f"{in_path} does not have the {decisions.num_rows} rows of its dedup sidecar")
    counts = Counter(r for r in reasons if r)
    return ShardRef(
        path=name,
        rows=writer.rows,
        bytes=(out / name).stat().st_size,
        fingerprint=file_fingerprint(out / name),
        drops_path=sidecar_name(name),
        drops=sum(counts.values()),
        inputs=[in_path],
        per_source=dict(sorted(per_source.items())),
        drop_reasons=dict(sorted(counts.items())),
        seconds=round(time.perf_counter() - start, 3),
    )


def index_rows(refs: list[SigRef], out_dir: str, cfg: DedupConfig) -> pa.Table:
    """This run's kept documents as index rows: hash, length, band keys and the output shard holding them."""
    tables = [INDEX_SCHEMA.empty_table()]
    for ref in refs:
        name = Path(ref.source).name
        kept = pc.is_null(read_shard(Path(out_dir) / sidecar_name(name), DEDUP_SCHEMA).column("drop_reason"))
        sig = read_signatures(ref, cfg)
        mask = kept.to_numpy(zero_copy_only=False)
        columns = [
            sig.ids.filter(pa.array(mask)),
            sig.content_hash.filter(pa.array(mask)),
            pa.array(sig.length[mask], pa.int64()),
            band_list(sig.band_keys[mask]),
            pa.array([str(Path(out_dir).resolve() / name)] * int(mask.sum()), pa.string()),
        ]
        tables.append(pa.Table.from_arrays(columns, schema=INDEX_SCHEMA))
    return pa.concat_tables(tables)


def commit_step(
    refs: list[SigRef], out_dir: str, index_dir: str, cfg: DedupConfig, base: str, run_root: str
) -> dict[str, Any]:
    """Add this run's kept documents to the persistent index (replacing the run's earlier part)."""
    rows = index_rows(refs, out_dir, cfg)
    return commit(Path(index_dir), cfg, base, rows, stage=str(Path(out_dir).resolve()), run_root=run_root)
