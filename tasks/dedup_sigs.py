"""Dedup map step: per-shard signature files (content hash, length, LSH band keys), validated before use.

A signature file records in its Parquet metadata the MinHash settings and the fingerprint and row count of
the shard it was computed from. `validate_signatures` checks all of them (and that the footer is intact),
so a truncated, stale or foreign file is refused with a reason instead of being silently consumed.

Every row of the shard has a signature row, in shard order. A row that is not a usable document (invalid
UTF-8, a null required field, a value over the size cap, or hashing that raised) keeps its place with its
readable id, an empty content hash, length 0 and sentinel band keys (never bucketed), and the metadata lists
it with its reason, so clustering leaves it out and its sidecar row carries the reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from storage.layout import canonical_json
from storage.rows import BadRow, CheckedBatch, per_row, valid_batches
from storage.schemas import DOCUMENT_SCHEMA, SIGNATURE_SCHEMA
from storage.shards import ShardError, check_schema, write_shard
from tasks.dedup_config import DedupConfig
from tasks.minhash import SENTINEL, band_keys, signatures

_META = b"crucible.dedup_signatures"
DEDUP_ERROR = "dedup_error"
"""A document whose signature raised: dropped (the exception is logged), its shard goes on."""

logger = logging.getLogger(__name__)


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
    dropped: np.ndarray
    """Per row, the reason it is not a usable document, or None."""


def signature_view(cfg: DedupConfig) -> dict[str, object]:
    """The settings that change a signature file (so thresholds and index options never recompute it)."""
    return {"near": cfg.near, "minhash": cfg.minhash.model_dump()}


def signature_name(source_fingerprint: str) -> str:
    """Content-addressed file name: the same shard content reuses its signatures in every later run."""
    return f"sig-{source_fingerprint[:32]}.parquet"


def _schema(source_fingerprint: str, cfg: DedupConfig, dropped: list[tuple[int, str]]) -> pa.Schema:
    """The signature schema with this file's provenance and unusable rows in its metadata."""
    meta = {"source_fingerprint": source_fingerprint, "settings": signature_view(cfg), "dropped": dropped}
    return SIGNATURE_SCHEMA.with_metadata({**SIGNATURE_SCHEMA.metadata, _META: canonical_json(meta)})


def band_list(keys: np.ndarray) -> pa.ListArray:
    """Band keys (n, bands) as an Arrow list column, without a Python loop."""
    offsets = pa.array(np.arange(keys.shape[0] + 1, dtype=np.int32) * keys.shape[1])
    return pa.ListArray.from_arrays(offsets, pa.array(keys.reshape(-1), pa.uint64()))


def _keys(texts: list[str], ids: list[str], cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Band keys (one row per text hashing did not raise for) and the mask of those texts."""
    if not cfg.near:
        return np.empty((len(texts), 0), dtype=np.uint64), np.ones(len(texts), dtype=bool)

    def hashed(batch: Sequence[str]) -> np.ndarray:
        """Band keys of a batch, one row per text."""
        return band_keys(signatures(batch, cfg.minhash), cfg.minhash)

    rows = per_row(hashed, texts, ids, logger, "MinHash signature")
    ok = np.fromiter((r is not None for r in rows), dtype=bool, count=len(rows))
    # Unless a text raised, `rows` is the (n, bands) array itself: no copy.
    kept = rows if ok.all() else [r for r in rows if r is not None]
    return np.asarray(kept, dtype=np.uint64).reshape(-1, cfg.minhash.bands), ok


def _usable_rows(batch: pa.RecordBatch, keys: np.ndarray) -> pa.Table:
    """Signature rows of usable documents."""
    return pa.table(
        {
            "id": batch.column("id"),
            "content_hash": batch.column("content_hash"),
            "length": pc.utf8_length(batch.column("text")).cast(pa.int64()),
            "band_keys": band_list(keys),
        },
        schema=SIGNATURE_SCHEMA,
    )


def _unusable_rows(ids: list[str], width: int) -> pa.Table:
    """Placeholder rows of unusable documents: readable id, no content hash, length 0, sentinel keys."""
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "content_hash": pa.array([""] * n, pa.string()),
            "length": pa.array(np.zeros(n, dtype=np.int64)),
            "band_keys": band_list(np.full((n, width), SENTINEL, dtype=np.uint64)),
        },
        schema=SIGNATURE_SCHEMA,
    )


def _batch_table(checked: CheckedBatch, cfg: DedupConfig) -> tuple[pa.Table, list[BadRow]]:
    """Signature rows of every row of one checked batch (shard order), and its unusable rows."""
    batch = checked.batch
    keys, ok = _keys(batch.column("text").to_pylist(), batch.column("id").to_pylist(), cfg)
    usable = batch if ok.all() else batch.filter(pa.array(ok))
    dropped = checked.dropped(ok, DEDUP_ERROR)
    unusable = _unusable_rows([d.id for d in dropped], keys.shape[1])
    return checked.in_order(ok, _usable_rows(usable, keys), dropped, unusable), dropped


def signature_shard(in_path: str, in_fingerprint: str, out_dir: str, cfg: DedupConfig) -> SigRef:
    """Compute the signature file of one document shard (text streamed in batches).

    Signature rows are small (~200 bytes a document), so they are gathered and written once, with the
    unusable rows (known only at the end) listed in the file's metadata.
    """
    out = Path(out_dir) / signature_name(in_fingerprint)
    tables, dropped = [SIGNATURE_SCHEMA.empty_table()], []
    columns = ["id", "text", "content_hash"]
    for checked in valid_batches(Path(in_path), DOCUMENT_SCHEMA, cfg.batch_size, columns=columns):
        table, bad = _batch_table(checked, cfg)
        tables.append(table)
        dropped += [(b.row, b.reason) for b in bad]
    table = pa.concat_tables(tables)
    write_shard(out, table, _schema(in_fingerprint, cfg, dropped))
    return SigRef(
        path=str(out),
        source=str(in_path),
        source_fingerprint=in_fingerprint,
        rows=table.num_rows,
    )


def _metadata(pf: pq.ParquetFile) -> dict[str, Any]:
    """The provenance a signature file records (empty when it has none)."""
    raw = (pf.schema_arrow.metadata or {}).get(_META)
    return json.loads(raw) if raw else {}


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
    meta = _metadata(pf)
    if meta.get("settings") != json.loads(canonical_json(signature_view(cfg))):
        raise SignatureError(f"{path} was computed with other MinHash settings: {meta.get('settings')}")
    if meta.get("source_fingerprint") != ref.source_fingerprint:
        raise SignatureError(f"{path} was computed from another version of {ref.source}")
    expected = ref.rows if rows is None else rows
    if pf.metadata.num_rows != expected:
        raise SignatureError(f"{path} has {pf.metadata.num_rows} rows, expected {expected}")
    _dropped(meta, pf.metadata.num_rows, path)
    return pf


def _dropped(meta: dict[str, Any], rows: int, path: Path) -> np.ndarray:
    """Per row, the reason the metadata gives for it not being a usable document, or None."""
    reasons = np.full(rows, None, dtype=object)
    for entry in meta.get("dropped", []):
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)
        if not ok or not isinstance(entry[0], int) or not 0 <= entry[0] < rows:
            raise SignatureError(f"{path} lists an unusable row that is not one of its rows: {entry!r}")
        reasons[entry[0]] = entry[1]
    return reasons


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
        dropped=_dropped(_metadata(pf), table.num_rows, Path(ref.path)),
    )
