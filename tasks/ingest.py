"""Ingest one group of inputs into a raw document shard plus a drops sidecar."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from storage.cache import SHARD_POLICY
from storage.refs import ShardRef
from storage.schemas import DOCUMENT_SCHEMA, DROP_SCHEMA, Document, Drop, documents_table, drops_table
from storage.shards import ShardWriter, file_fingerprint, write_shard
from tasks.fetch import FetchConfig, fetch_urls
from tasks.inputs import InputFile, InputGroup
from tasks.isolate import Failure, run_isolated
from tasks.pdf import PdfConfig, extract_pdf
from tasks.text import TextConfig, extract_text_file
from tasks.warc import WarcConfig, extract_warc
from tasks.web import HtmlConfig, extract_html_file

# Modules whose source decides what ingest writes; their hash is part of the stage key.
CODE_MODULES = (
    "storage.schemas",
    "storage.shards",
    "tasks.ingest",
    "tasks.inputs",
    "tasks.isolate",
    "tasks.pdf",
    "tasks.pdf_layout",
    "tasks.web",
    "tasks.warc",
    "tasks.text",
    "tasks.gutenberg",
    "tasks.markdown_text",
    "tasks.fetch",
    "tasks.netguard",
    "tasks.robots",
    "tasks.demo_corpus",
)

SOURCE_OF_KIND = {
    "pdf": "pdf",
    "html": "html",
    "warc": "warc",
    "text": "text",
    "urls": "url",
    "other": "text",
}


class IngestConfig(BaseModel):
    """How raw inputs become documents."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    pdf: PdfConfig = Field(default_factory=PdfConfig)
    """PDF extraction (PyMuPDF)."""
    html: HtmlConfig = Field(default_factory=HtmlConfig)
    """HTML decoding and main-content extraction (also used for WARC records and fetched URLs)."""
    warc: WarcConfig = Field(default_factory=WarcConfig)
    """WARC/ARC reading."""
    text: TextConfig = Field(default_factory=TextConfig)
    """Plain text, JSONL and Markdown."""
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    """Fetching URL lists over HTTP."""
    file_timeout_s: float = 300.0
    """Hard limit: a worker silent for this long is killed and the file recorded as extract_timeout."""
    worker_memory_mb: int = 6144
    """Address-space cap of each extraction worker; a file that needs more is extract_out_of_memory."""
    max_file_bytes: int = 1 << 30
    """Single-document files (PDF, HTML, text) larger than this are recorded as file_too_large, unopened."""
    group_files: int = 32
    """At most this many files per output shard."""
    group_bytes: int = 256 << 20
    """At most this many input bytes per output shard (one file may exceed it alone)."""
    urls_per_group: int = 500
    """URLs fetched per output shard."""


def extract_file(item: tuple[InputFile, IngestConfig]) -> Iterator[Document | Drop]:
    """Extract every document of one input file (runs inside the isolated worker)."""
    f, cfg = item
    path = Path(f.path)
    if f.kind not in ("warc", "text") and f.size > cfg.max_file_bytes:
        detail = f"{f.size} bytes is over max_file_bytes={cfg.max_file_bytes}"
        yield Drop(uri=path.as_uri(), source=SOURCE_OF_KIND[f.kind], reason="file_too_large", detail=detail)
    elif f.kind == "pdf":
        yield from extract_pdf(path, cfg.pdf)
    elif f.kind == "html":
        yield from extract_html_file(path, cfg.html)
    elif f.kind == "warc":
        yield from extract_warc(path, cfg.warc, cfg.html)
    elif f.kind == "text":
        yield from extract_text_file(path, cfg.text)
    else:
        detail = (
            "no extractor for this file name; supported: .pdf .html .htm .warc(.gz) .arc(.gz) .txt .md .jsonl"
        )
        yield Drop(uri=path.as_uri(), source="text", reason="unsupported_file_type", detail=detail)


def _records(group: InputGroup, cfg: IngestConfig) -> Iterator[Document | Drop]:
    """All records of a group: URLs fetched in-process, files extracted in an isolated worker."""
    if group.kind == "urls":
        yield from fetch_urls(group.urls, cfg.fetch, cfg.html)
        return
    items = [(f, cfg) for f in group.files]
    for event in run_isolated(
        extract_file, items, timeout_s=cfg.file_timeout_s, memory_mb=cfg.worker_memory_mb
    ):
        if isinstance(event, Failure):
            f = group.files[event.index]
            uri = Path(f.path).as_uri()
            yield Drop(uri=uri, source=SOURCE_OF_KIND[f.kind], reason=event.reason, detail=event.detail)
        else:
            yield from event[1]


def ingest_group(group: InputGroup, cfg: IngestConfig, out_dir: str) -> ShardRef:
    """Extract one group of inputs into `<out_dir>/<shard>` and its drops sidecar; return a small ref."""
    start = time.perf_counter()
    out = Path(out_dir)
    drops: list[Drop] = []
    per_source: Counter[str] = Counter()
    buffer: list[Document] = []
    with ShardWriter(out / group.shard_name, DOCUMENT_SCHEMA) as writer:
        for record in _records(group, cfg):
            if isinstance(record, Drop):
                drops.append(record)
                continue
            per_source[record.source] += 1
            buffer.append(record)
            if len(buffer) >= 1000:
                writer.write(documents_table(buffer))
                buffer = []
        writer.write(documents_table(buffer))
    write_shard(out / group.drops_name, drops_table(drops), DROP_SCHEMA)
    shard = out / group.shard_name
    return ShardRef(
        path=group.shard_name,
        rows=writer.rows,
        bytes=shard.stat().st_size,
        fingerprint=file_fingerprint(shard),
        drops_path=group.drops_name,
        drops=len(drops),
        inputs=[Path(f.path).as_uri() for f in group.files] or list(group.urls),
        per_source=dict(sorted(per_source.items())),
        drop_reasons=dict(sorted(Counter(d.reason for d in drops).items())),
        seconds=round(time.perf_counter() - start, 3),
    )


ingest_group_task = task(
    name="ingest-group",
    cache_policy=SHARD_POLICY,
    persist_result=True,
    retries=1,
)(ingest_group)
