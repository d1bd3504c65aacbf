"""Ingest one group of inputs into a raw document shard plus a drops sidecar."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prefect import task

from storage.cache import SHARD_POLICY
from storage.refs import ShardRef
from storage.schemas import DOCUMENT_SCHEMA, DROP_SCHEMA, Document, Drop, documents_table, drops_table
from storage.shards import ShardWriter, file_fingerprint, write_shard
from tasks.extract import SOURCE_OF_KIND, IngestConfig, extract_file
from tasks.fetch import fetch_urls
from tasks.inputs import InputGroup
from tasks.isolate import Failure, run_isolated

# Modules whose source decides what ingest writes; their hash is part of the stage key.
CODE_MODULES = (
    "storage.schemas",
    "storage.shards",
    "tasks.ingest",
    "tasks.extract",
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
