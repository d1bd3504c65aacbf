"""The fixed document schema shared by every stage, and the records extractors produce."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

# 2: drops gained their provenance (input_uri, offset, record_index, page) and documents their input_uri.
# Shards of version 1 still read: storage.shards fills the added (nullable) columns with nulls.
SCHEMA_VERSION = 2

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
        # The input file (file:// URI) or listed URL the document came from: every document names its input.
        pa.field("input_uri", pa.string()),
    ],
    metadata={"crucible.kind": "documents", "crucible.schema_version": str(SCHEMA_VERSION)},
)

# Ingest drops: one row per input item that did not become a document, with its reason and where it was:
# the input file or URL, and the byte offset, record number (WARC records, JSONL lines, from 1) or PDF page
# (from 1) where that applies. Null provenance means "not applicable" (or a version-1 shard).
DROP_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("drop_reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("input_uri", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("record_index", pa.int64()),
        pa.field("page", pa.int32()),
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
    # surrogatepass: a file name with undecodable bytes still gets its own stable id, never an error.
    return hashlib.blake2b(f"{uri}#{part}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# Lone surrogates are the only str values UTF-8 (so Arrow) cannot hold: undecodable bytes carried by
# surrogateescape (file names, MuPDF messages) and broken UTF-16 pairs.
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_str(value: str) -> str:
    """The string with every lone surrogate replaced by U+FFFD, so it always encodes as UTF-8."""
    if value.isascii():  # O(1): CPython knows whether a string is ASCII
        return value
    try:
        value.encode()  # ~3x faster than searching for surrogates with a regex
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", value)
    return value


def _clean_opt(value: str | None) -> str | None:
    """clean_str for optional strings."""
    return None if value is None else clean_str(value)


# Texts longer than this are normalized in pieces: split() holds a str object per word, ~14x the text's
# size for short words, so a 64 MB document would need ~900 MB just to be hashed.
_HASH_PIECE = 1 << 20
_WHITESPACE = re.compile(r"\s")  # the same characters as str.isspace(), so as str.split()


def _normalize_piece(text: str) -> str:
    """NFKC, casefold and collapse whitespace runs to one space."""
    # str.split() with no argument splits on any Unicode whitespace run; ~3x faster than a regex here.
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def normalize_for_hash(text: str, piece: int = _HASH_PIECE) -> str:
    """Normalize text so trivially different copies (case, spacing, NFKC forms) hash alike."""
    if len(text) <= piece:
        return _normalize_piece(text)
    # Cut only before a whitespace character: a starter that composes with nothing before it, so NFKC,
    # casefold and the split give the same result piece by piece as on the whole text.
    parts, start = [], 0
    while start < len(text):
        cut = _WHITESPACE.search(text, start + piece)
        end = cut.start() if cut else len(text)
        parts.append(_normalize_piece(text[start:end]))
        start = end
    return " ".join(p for p in parts if p)


def content_hash(text: str) -> str:
    """Hash of the normalized text, used for exact dedup."""
    digest = hashlib.blake2b(normalize_for_hash(text).encode("utf-8", "surrogatepass"), digest_size=16)
    return digest.hexdigest()


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
    input_uri: str | None = None

    def row(self) -> dict[str, Any]:
        """The Arrow row for this document, every string made encodable (the text by new_document)."""
        return {
            "id": self.id,
            # Already encodable: new_document, which every extractor uses, cleans it before hashing. A
            # Document built otherwise with unencodable text becomes record_unwritable (storable_documents).
            "text": self.text,
            "source": self.source,
            "uri": clean_str(self.uri),
            "title": _clean_opt(self.title),
            "content_hash": self.content_hash,
            "fetched_at": _utc(self.fetched_at),
            "lang": _clean_opt(self.lang),
            "lang_score": self.lang_score,
            # Sorted keys keep shards byte-identical across reruns.
            "meta_json": clean_str(json.dumps(self.meta, sort_keys=True, ensure_ascii=False, default=str)),
            "input_uri": _clean_opt(self.input_uri),
        }


@dataclass(frozen=True)
class Drop:
    """An input item that did not become a document, why, and where it was in its input."""

    uri: str
    source: str
    reason: str
    detail: str = ""
    part: str = ""
    input_uri: str | None = None
    """The input file (file:// URI) or listed URL; ingest fills it in for every drop of a file or URL."""
    offset: int | None = None
    """Byte offset of the record in the input file (WARC records, JSONL lines)."""
    record_index: int | None = None
    """Position of the record in its input, from 1 (WARC records in file order, JSONL lines)."""
    page: int | None = None
    """PDF page (from 1) the drop is about, when it is about one page."""
    known_id: str | None = None
    """The document's id when it was built and then could not be stored (otherwise derived from uri#part)."""

    @property
    def id(self) -> str:
        """The id the document would have had."""
        return self.known_id or doc_id(self.uri, self.part)

    def row(self) -> dict[str, Any]:
        """The Arrow row for this drop, every string made encodable."""
        return {
            "id": self.id,
            "uri": clean_str(self.uri),
            "source": self.source,
            "drop_reason": self.reason,
            "detail": clean_str(self.detail[:2000]),
            "input_uri": _clean_opt(self.input_uri),
            "offset": self.offset,
            "record_index": self.record_index,
            "page": self.page,
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
    """Build a Document, deriving its id and content hash (text made encodable first)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    text = clean_str(text)
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


UNWRITABLE = "record_unwritable"


def _as_str(value: Any) -> str:
    """Any value as an encodable string (for the fields of a record that could not be stored)."""
    return clean_str(value if isinstance(value, str) else repr(value))


def storable_documents(docs: list[Document]) -> tuple[pa.Table, list[Drop]]:
    """The documents as a table; any one that cannot be converted becomes a record_unwritable Drop instead.

    One bad record (a value Arrow refuses, a meta that cannot be serialized) must cost that record, not the
    whole group: the fast path converts all at once, and only a failing batch is converted row by row.
    """
    try:
        return documents_table(docs), []
    except Exception:  # which record failed, and why, is found below
        pass
    rows: list[dict[str, Any]] = []
    drops: list[Drop] = []
    for doc in docs:
        try:
            row = doc.row()
            pa.Table.from_pylist([row], schema=DOCUMENT_SCHEMA)
        except Exception as exc:  # any conversion error is this record's
            detail = f"document could not be stored: {type(exc).__name__}: {exc}"
            drops.append(
                Drop(_as_str(doc.uri), _as_str(doc.source), UNWRITABLE, detail,
                     input_uri=_clean_opt(doc.input_uri and _as_str(doc.input_uri)), known_id=_as_str(doc.id))
            )  # fmt: skip
        else:
            rows.append(row)
    return pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), drops


def storable_drops(drops: list[Drop]) -> pa.Table:
    """The drops as a table; a drop that cannot be converted is stored as record_unwritable with its repr."""
    try:
        return drops_table(drops)
    except Exception:  # found row by row below
        pass
    rows: list[dict[str, Any]] = []
    for drop in drops:
        try:
            row = drop.row()
            pa.Table.from_pylist([row], schema=DROP_SCHEMA)
        except Exception as exc:  # kept, in a form that always converts
            detail = f"drop could not be stored: {type(exc).__name__}: {exc}; {drop!r}"
            uri, input_uri = _as_str(drop.uri), drop.input_uri
            input_uri = _as_str(input_uri) if input_uri is not None else None
            row = Drop(uri, _as_str(drop.source), UNWRITABLE, detail, _as_str(drop.part), input_uri).row()
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=DROP_SCHEMA)
