"""The fixed document schema shared by every stage, and the records extractors produce."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1

SOURCES = ("pdf", "html", "warc", "text", "url")

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
        pa.field("lang", pa.string()),
        pa.field("lang_score", pa.float32()),
        pa.field("meta_json", pa.string(), nullable=False),
    ],
    metadata={"crucible.kind": "documents", "crucible.schema_version": str(SCHEMA_VERSION)},
)

# Ingest drops: one row per input item that did not become a document, with its reason.
DROP_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("drop_reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ],
    metadata={"crucible.kind": "drops", "crucible.schema_version": str(SCHEMA_VERSION)},
)


# Curation sidecar: every input document's scores and its drop reason (null when kept). Signals are a map so
# filters can add ratios without a schema change; re-thresholding reads them and never re-scores.
SCORES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("drop_reason", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("lang_score", pa.float32()),
        pa.field("quality_score", pa.float32()),
        pa.field("signals", pa.map_(pa.string(), pa.float64())),
    ],
    metadata={"crucible.kind": "scores", "crucible.schema_version": str(SCHEMA_VERSION)},
)

# Dedup signatures of one input shard: per document its exact-dedup hash, length (for the keep rule) and LSH
# band keys. The MinHash settings and the input fingerprint are in the file's metadata (tasks.dedup_sigs).
SIGNATURE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("length", pa.int64(), nullable=False),
        pa.field("band_keys", pa.list_(pa.uint64()), nullable=False),
    ],
    metadata={"crucible.kind": "signatures", "crucible.schema_version": str(SCHEMA_VERSION)},
)

# Dedup sidecar: every input document, its drop reason (null when kept), its duplicate cluster (null when it
# has no duplicate), the id of the document kept for that cluster and the exact Jaccard similarity to it.
DEDUP_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("drop_reason", pa.string()),
        pa.field("cluster_id", pa.string()),
        pa.field("kept_id", pa.string()),
        pa.field("similarity", pa.float32()),
    ],
    metadata={"crucible.kind": "dedup", "crucible.schema_version": str(SCHEMA_VERSION)},
)

# One part of the persistent dedup index: the documents a dedup run kept, with where their text lives.
INDEX_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("length", pa.int64(), nullable=False),
        pa.field("band_keys", pa.list_(pa.uint64()), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
    ],
    metadata={"crucible.kind": "dedup-index", "crucible.schema_version": str(SCHEMA_VERSION)},
)


def doc_id(uri: str, part: str = "") -> str:
    """Stable document id: a hash of the source URI and the part within it."""
    return hashlib.blake2b(f"{uri}#{part}".encode(), digest_size=16).hexdigest()


def normalize_for_hash(text: str) -> str:
    """Normalize text so trivially different copies (case, spacing, NFKC forms) hash alike."""
    # str.split() with no argument splits on any Unicode whitespace run; ~3x faster than a regex here.
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_hash(text: str) -> str:
    """Hash of the normalized text, used for exact dedup."""
    return hashlib.blake2b(normalize_for_hash(text).encode(), digest_size=16).hexdigest()


def _utc(ts: datetime | None) -> datetime | None:
    """Make a timestamp timezone-aware UTC (naive values are taken as UTC)."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@dataclass(frozen=True)
class Document:
    """One document as every stage sees it."""

    id: str
    text: str
    source: str
    uri: str
    title: str | None
    content_hash: str
    fetched_at: datetime | None = None
    lang: str | None = None
    lang_score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The Arrow row for this document."""
        return {
            "id": self.id,
            "text": self.text,
            "source": self.source,
            "uri": self.uri,
            "title": self.title,
            "content_hash": self.content_hash,
            "fetched_at": _utc(self.fetched_at),
            "lang": self.lang,
            "lang_score": self.lang_score,
            # Sorted keys keep shards byte-identical across reruns.
            "meta_json": json.dumps(self.meta, sort_keys=True, ensure_ascii=False, default=str),
        }


@dataclass(frozen=True)
class Drop:
    """An input item that did not become a document, and why."""

    uri: str
    source: str
    reason: str
    detail: str = ""
    part: str = ""

    @property
    def id(self) -> str:
        """The id the document would have had."""
        return doc_id(self.uri, self.part)

    def row(self) -> dict[str, Any]:
        """The Arrow row for this drop."""
        return {
            "id": self.id,
            "uri": self.uri,
            "source": self.source,
            "drop_reason": self.reason,
            "detail": self.detail[:2000],
        }


def new_document(
    text: str,
    *,
    source: str,
    uri: str,
    part: str = "",
    title: str | None = None,
    fetched_at: datetime | None = None,
    meta: dict[str, Any] | None = None,
) -> Document:
    """Build a Document, deriving its id and content hash."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    return Document(
        id=doc_id(uri, part),
        text=text,
        source=source,
        uri=uri,
        title=title or None,
        content_hash=content_hash(text),
        fetched_at=fetched_at,
        meta=dict(meta or {}),
    )


def documents_table(docs: list[Document]) -> pa.Table:
    """An Arrow table of documents in the pinned schema."""
    return pa.Table.from_pylist([d.row() for d in docs], schema=DOCUMENT_SCHEMA)


def drops_table(drops: list[Drop]) -> pa.Table:
    """An Arrow table of drops in the pinned schema."""
    return pa.Table.from_pylist([d.row() for d in drops], schema=DROP_SCHEMA)
