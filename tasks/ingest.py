"""Ingest one group of inputs into a raw document shard plus a drops sidecar."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from storage.cache import stage_task
from storage.refs import ShardRef
from storage.schemas import (
    DOCUMENT_SCHEMA,
    DROP_SCHEMA,
    UNWRITABLE,
    Document,
    Drop,
    storable_documents,
    storable_drops,
)
from storage.shards import ShardWriter, file_fingerprint, write_shard
from tasks.extract import SOURCE_OF_KIND, IngestConfig, extract_file
from tasks.fetch import fetch_urls
from tasks.inputs import InputGroup
from tasks.isolate import Failure, Finished, Lost, run_isolated

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


NO_RECORDS = "input_no_records"


@dataclass
class _Tally:
    """What one group produced so far, beyond the rows themselves."""

    seen: Counter[str] = field(default_factory=Counter)
    per_source: Counter[str] = field(default_factory=Counter)
    quirks: Counter[str] = field(default_factory=Counter)
    max_seconds: float = 0.0
    peak_rss_mb: float | None = None

    def finished(self, event: Finished) -> None:
        """Note one input's extraction time and the worker's peak memory."""
        self.max_seconds = max(self.max_seconds, event.seconds)
        if event.peak_rss_mb is not None:
            self.peak_rss_mb = max(self.peak_rss_mb or 0.0, event.peak_rss_mb)


def _input_uris(group: InputGroup) -> list[str]:
    """The URI naming each input of a group: file:// URIs of its files, or its URLs."""
    return [Path(f.path).as_uri() for f in group.files] or list(group.urls)


def _records(group: InputGroup, cfg: IngestConfig, tally: _Tally) -> Iterator[tuple[str, Document | Drop]]:
    """(input URI, record) for every record of a group: URLs fetched here, files in an isolated worker."""
    inputs = _input_uris(group)
    if group.kind == "urls":
        # fetch_urls returns one record per listed URL, in order.
        yield from zip(inputs, fetch_urls(group.urls, cfg.fetch, cfg.html), strict=False)
        return
    items = [(f, cfg) for f in group.files]
    for event in run_isolated(
        extract_file, items, timeout_s=cfg.file_timeout_s, memory_mb=cfg.worker_memory_mb
    ):
        if isinstance(event, Finished):
            tally.finished(event)
        elif isinstance(event, Failure | Lost):
            # A whole file that failed, or one of its records that could not leave the worker.
            reason = event.reason if isinstance(event, Failure) else UNWRITABLE
            source, uri = SOURCE_OF_KIND[group.files[event.index].kind], inputs[event.index]
            yield uri, Drop(uri=uri, source=source, reason=reason, detail=event.detail)
        else:
            index, batch = event
            for record in batch:
                yield inputs[index], record


def _stamped(record: Document | Drop, input_uri: str) -> Document | Drop:
    """The record with the input it came from filled in (the group, not the extractor, knows it for sure)."""
    return record if record.input_uri else replace(record, input_uri=input_uri)


def _flush(writer: ShardWriter, docs: list[Document], tally: _Tally) -> list[Drop]:
    """Write a batch of documents; those Arrow cannot hold come back as record_unwritable drops."""
    table, unwritable = storable_documents(docs)
    writer.write(table)
    bad = {d.id for d in unwritable}
    for doc in docs:
        if doc.id not in bad:
            tally.per_source[doc.source] += 1
            tally.quirks.update(doc.meta.get("quirks") or ())
    return unwritable


def _silent_inputs(group: InputGroup, seen: Counter[str]) -> list[Drop]:
    """One drop for each input that produced no record at all, so every input is accounted for."""
    kinds = [SOURCE_OF_KIND[f.kind] for f in group.files] or ["url"] * len(group.urls)
    detail = "the input produced neither documents nor drops"
    return [
        Drop(uri, source, NO_RECORDS, detail, input_uri=uri)
        for uri, source in zip(_input_uris(group), kinds, strict=True)
        if not seen[uri]
    ]


def ingest_group(group: InputGroup, cfg: IngestConfig, out_dir: str) -> ShardRef:
    """Extract one group of inputs into `<out_dir>/<shard>` and its drops sidecar; return a small ref.

    Every input ends as documents or drop rows naming it (`input_uri`); a record that cannot be stored
    becomes a `record_unwritable` drop, and an input that yields nothing an `input_no_records` drop.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    tally = _Tally()
    drops: list[Drop] = []
    buffer: list[Document] = []
    with ShardWriter(out / group.shard_name, DOCUMENT_SCHEMA) as writer:
        for input_uri, record in _records(group, cfg, tally):
            tally.seen[input_uri] += 1
            if isinstance(record, Drop):
                drops.append(_stamped(record, input_uri))  # type: ignore[arg-type]
                continue
            buffer.append(_stamped(record, input_uri))  # type: ignore[arg-type]
            if len(buffer) >= 1000:
                drops.extend(_flush(writer, buffer, tally))
                buffer = []
        drops.extend(_flush(writer, buffer, tally))
    drops.extend(_silent_inputs(group, tally.seen))
    write_shard(out / group.drops_name, storable_drops(drops), DROP_SCHEMA)
    shard = out / group.shard_name
    return ShardRef(
        path=group.shard_name,
        rows=writer.rows,
        bytes=shard.stat().st_size,
        fingerprint=file_fingerprint(shard),
        drops_path=group.drops_name,
        drops=len(drops),
        inputs=_input_uris(group),
        per_source=dict(sorted(tally.per_source.items())),
        drop_reasons=dict(sorted(Counter(d.reason for d in drops).items())),
        seconds=round(time.perf_counter() - start, 3),
        quirks=dict(sorted(tally.quirks.items())),
        max_input_seconds=tally.max_seconds if group.files else None,
        peak_worker_rss_mb=tally.peak_rss_mb and round(tally.peak_rss_mb, 1),
    )


ingest_group_task = stage_task(ingest_group, "ingest-group")
