"""Dedup map step: per-shard signature files (content hash, length, LSH band keys), validated before use.

A signature file records in its Parquet metadata the MinHash settings and the fingerprint and row count of
the shard it was computed from. `validate_signatures` checks all of them (and that the footer is intact),
so a truncated, stale or foreign file is refused with a reason instead of being silently consumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from storage.layout import canonical_json
from storage.schemas import DOCUMENT_SCHEMA, SIGNATURE_SCHEMA
from storage.shards import ShardError, ShardWriter, check_schema, iter_batches
from tasks.dedup_config import DedupConfig
from tasks.minhash import band_keys, signatures

_META = b"crucible.dedup_signatures"


class SignatureError(ShardError):
    """A signature file that must not be used: truncated, stale, or made with other settings."""


class SigRef(BaseModel):
    """Where one shard's signature file is and what it was computed from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    """Absolute path of the signature file."""
    source: str
    """Absolute path of the document shard it describes."""
    source_fingerprint: str
    """Content hash of that document shard."""
    rows: int
    """Documents in the shard (one signature row each)."""


@dataclass(frozen=True)
class Signatures:
    """The columns of one signature file, as arrays."""

    ids: pa.Array
    content_hash: pa.Array
    length: np.ndarray
    band_keys: np.ndarray


def signature_view(cfg: DedupConfig) -> dict[str, object]:
    """The settings that change a signature file (so thresholds and index options never recompute it)."""
    return {"near": cfg.near, "minhash": cfg.minhash.model_dump()}


def signature_name(source_fingerprint: str) -> str:
    """Content-addressed file name: the same shard content reuses its signatures in every later run."""
    return f"sig-{source_fingerprint[:32]}.parquet"


def _schema(source_fingerprint: str, cfg: DedupConfig) -> pa.Schema:
    """The signature schema with this file's provenance in its metadata."""
    meta = {"source_fingerprint": source_fingerprint, "settings": signature_view(cfg)}
    return SIGNATURE_SCHEMA.with_metadata({**SIGNATURE_SCHEMA.metadata, _META: canonical_json(meta)})


def band_list(keys: np.ndarray) -> pa.ListArray:
    """Band keys (n, bands) as an Arrow list column, without a Python loop."""
    offsets = pa.array(np.arange(keys.shape[0] + 1, dtype=np.int32) * keys.shape[1])
    return pa.ListArray.from_arrays(offsets, pa.array(keys.reshape(-1), pa.uint64()))


def _batch_table(batch: pa.RecordBatch, cfg: DedupConfig) -> pa.Table:
    """Signature rows of one batch of documents."""
    texts = batch.column("text")
    if cfg.near:
        keys = band_keys(signatures(texts.to_pylist(), cfg.minhash), cfg.minhash)
    else:
        keys = np.empty((batch.num_rows, 0), dtype=np.uint64)
    return pa.table(
        {
            "id": batch.column("id"),
            "content_hash": batch.column("content_hash"),
            "length": pc.utf8_length(texts).cast(pa.int64()),
            "band_keys": band_list(keys),
        },
        schema=SIGNATURE_SCHEMA,
    )


def signature_shard(in_path: str, in_fingerprint: str, out_dir: str, cfg: DedupConfig) -> SigRef:
    """Compute the signature file of one document shard (streamed in batches)."""
    out = Path(out_dir) / signature_name(in_fingerprint)
    columns = ["id", "text", "content_hash"]
    with ShardWriter(out, _schema(in_fingerprint, cfg)) as writer:
        for batch in iter_batches(Path(in_path), DOCUMENT_SCHEMA, cfg.batch_size, columns=columns):
            writer.write(_batch_table(batch, cfg))
    return SigRef(
        path=str(out),
        source=str(in_path),
        source_fingerprint=in_fingerprint,
        rows=writer.rows,
    )


def validate_signatures(ref: SigRef, cfg: DedupConfig, rows: int | None = None) -> pq.ParquetFile:
    """Open a signature file and check footer, schema, settings, source fingerprint and row count."""
    path = Path(ref.path)
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError as exc:
        raise SignatureError(f"{path} does not exist") from exc
    except (OSError, pa.ArrowException) as exc:
        raise SignatureError(f"{path} is not a complete signature file: {exc}") from exc
    check_schema(pf.schema_arrow, SIGNATURE_SCHEMA, what=str(path))
    raw = (pf.schema_arrow.metadata or {}).get(_META)
    meta = json.loads(raw) if raw else {}
    if meta.get("settings") != json.loads(canonical_json(signature_view(cfg))):
        raise SignatureError(f"{path} was computed with other MinHash settings: {meta.get('settings')}")
    if meta.get("source_fingerprint") != ref.source_fingerprint:
        raise SignatureError(f"{path} was computed from another version of {ref.source}")
    expected = ref.rows if rows is None else rows
    if pf.metadata.num_rows != expected:
        raise SignatureError(f"{path} has {pf.metadata.num_rows} rows, expected {expected}")
    return pf


def read_signatures(ref: SigRef, cfg: DedupConfig) -> Signatures:
    """Validate and read one signature file into arrays."""
    pf = validate_signatures(ref, cfg)
    try:
        table = pf.read()
    except (OSError, pa.ArrowException) as exc:
        raise SignatureError(f"{ref.path} is unreadable: {exc}") from exc
    bands = cfg.minhash.bands if cfg.near else 0
    flat = pc.list_flatten(table.column("band_keys")).to_numpy()
    if flat.size != table.num_rows * bands:
        raise SignatureError(f"{ref.path} has band keys of the wrong width, expected {bands} per document")
    return Signatures(
        ids=table.column("id").combine_chunks(),
        content_hash=table.column("content_hash").combine_chunks(),
        length=table.column("length").to_numpy(),
        band_keys=flat.astype(np.uint64, copy=False).reshape(table.num_rows, bands),
    )
