"""Curate one shard: score every document (language, heuristic signals, quality), then select the kept ones.

Two steps, so thresholds can change without re-scoring. `score_shard` runs fastText and the heuristics once
and writes the scored documents (text after C4 line cleaning, `lang`/`lang_score` filled) plus a scores
sidecar of signals. `select_shard` reads that sidecar, decides each document's drop reason from the
configured thresholds, and writes the kept documents and the final sidecar with reasons. No Prefect here:
scoring runs in worker processes (tasks/curate.py holds the wrappers).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from storage.refs import ShardRef
from storage.schemas import DOCUMENT_SCHEMA, SCORES_SCHEMA
from storage.shards import ShardWriter, file_fingerprint, iter_batches, read_shard
from tasks.heuristics import FilterConfig, decide, score_text
from tasks.langid import LangIdConfig, detect_languages, lang_drop_reason
from tasks.quality import QualityConfig, quality_scores

QUALITY_LOW = "quality_low"


class CurateConfig(BaseModel):
    """Language ID, heuristic filters and the quality classifier."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    langid: LangIdConfig = Field(default_factory=LangIdConfig)
    """fastText language identification: model, kept languages, minimum score."""
    filters: FilterConfig = Field(default_factory=FilterConfig)
    """Heuristic filters: Gopher quality and repetition, C4, FineWeb, bad words."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    """fastText quality classifier: model and keep threshold (absolute or top percent)."""
    batch_size: int = 1000
    """Documents scored at once (bounds memory per shard)."""

    def scoring_view(self) -> dict[str, Any]:
        """The settings that change scores; thresholds are left out so changing them never re-scores."""
        return {
            "langid_model": self.langid.model_path,
            "filters": self.filters.scoring_view(),
            "quality_model": self.quality.model_path,
        }


def sidecar_name(shard_name: str) -> str:
    """`shard-x.parquet` -> `shard-x.scores.parquet`."""
    return shard_name.removesuffix(".parquet") + ".scores.parquet"


def _score_batch(batch: pa.RecordBatch, cfg: CurateConfig) -> tuple[pa.Table, pa.Table]:
    """Scored documents and their scores rows for one record batch."""
    texts = batch.column("text").to_pylist()
    langs = detect_languages(texts, cfg.langid)
    cleaned, signals = [], []
    for text, (lang, _) in zip(texts, langs, strict=True):
        new_text, sig = score_text(text, cfg.filters, lang)
        cleaned.append(new_text)
        signals.append(sig)
    quality: list[float | None] = [None] * len(texts)
    if cfg.quality.model_path:
        quality = list(quality_scores(cfg.quality.model_path, cleaned))
    docs = pa.Table.from_batches([batch]).cast(DOCUMENT_SCHEMA)
    docs = docs.set_column(
        docs.schema.get_field_index("text"), DOCUMENT_SCHEMA.field("text"), pa.array(cleaned)
    )
    docs = docs.set_column(
        docs.schema.get_field_index("lang"), DOCUMENT_SCHEMA.field("lang"), pa.array([x[0] for x in langs])
    )
    scores = pa.array([x[1] for x in langs], pa.float32())
    docs = docs.set_column(
        docs.schema.get_field_index("lang_score"), DOCUMENT_SCHEMA.field("lang_score"), scores
    )
    rows = pa.table(
        {
            "id": batch.column("id"),
            "drop_reason": pa.nulls(len(texts), pa.string()),
            "lang": pa.array([x[0] for x in langs]),
            "lang_score": scores,
            "quality_score": pa.array(quality, pa.float32()),
            "signals": pa.array([sorted(s.items()) for s in signals], SCORES_SCHEMA.field("signals").type),
        },
        schema=SCORES_SCHEMA,
    )
    return docs, rows


def score_shard(in_path: str, in_fingerprint: str, out_dir: str, cfg: CurateConfig) -> ShardRef:
    """Score every document of one ingest shard; write scored documents and a signals sidecar."""
    start = time.perf_counter()
    name = Path(in_path).name
    out = Path(out_dir)
    with (
        ShardWriter(out / name, DOCUMENT_SCHEMA) as docs_w,
        ShardWriter(out / sidecar_name(name), SCORES_SCHEMA) as sc_w,
    ):
        for batch in iter_batches(Path(in_path), DOCUMENT_SCHEMA, cfg.batch_size):
            docs, rows = _score_batch(batch, cfg)
            docs_w.write(docs)
            sc_w.write(rows)
    return _ref(out / name, out / sidecar_name(name), docs_w.rows, Counter(), [in_path], start)


def _ref(
    shard: Path, sidecar: Path, rows: int, reasons: Counter[str], inputs: list[str], start: float
) -> ShardRef:
    """A ShardRef for a written shard and its sidecar."""
    return ShardRef(
        path=shard.name,
        rows=rows,
        bytes=shard.stat().st_size,
        fingerprint=file_fingerprint(shard),
        drops_path=sidecar.name,
        drops=sum(reasons.values()),
        inputs=inputs,
        per_source={},
        drop_reasons=dict(sorted(reasons.items())),
        seconds=round(time.perf_counter() - start, 3),
    )


def drop_reasons(scores: pa.Table, cfg: CurateConfig, quality_threshold: float | None) -> list[str | None]:
    """Each document's drop reason from its stored scores: language, then heuristics, then quality."""
    reasons: list[str | None] = []
    langs = scores.column("lang").to_pylist()
    lang_scores = scores.column("lang_score").to_pylist()
    quality = scores.column("quality_score").to_pylist()
    for i, signals in enumerate(scores.column("signals").to_pylist()):
        reason = lang_drop_reason(langs[i], lang_scores[i], cfg.langid) or decide(dict(signals), cfg.filters)
        if reason is None and quality_threshold is not None and quality[i] is not None:
            reason = QUALITY_LOW if quality[i] < quality_threshold else None
        reasons.append(reason)
    return reasons


def select_shard(
    scored_path: str,
    scored_fingerprint: str,
    out_dir: str,
    cfg: CurateConfig,
    quality_threshold: float | None,
) -> ShardRef:
    """Apply thresholds to a scored shard: write the kept documents and the sidecar with drop reasons."""
    start = time.perf_counter()
    scored = Path(scored_path)
    scores = read_shard(scored.with_name(sidecar_name(scored.name)), SCORES_SCHEMA)
    reasons = drop_reasons(scores, cfg, quality_threshold)
    scores = scores.set_column(1, SCORES_SCHEMA.field("drop_reason"), pa.array(reasons, pa.string()))
    out = Path(out_dir)
    keep = pa.array([r is None for r in reasons])
    offset = 0
    per_source: Counter[str] = Counter()
    with (
        ShardWriter(out / scored.name, DOCUMENT_SCHEMA) as docs_w,
        ShardWriter(out / sidecar_name(scored.name), SCORES_SCHEMA) as sc_w,
    ):
        sc_w.write(scores)
        for batch in iter_batches(scored, DOCUMENT_SCHEMA, cfg.batch_size):
            kept = pa.Table.from_batches([batch]).filter(keep.slice(offset, batch.num_rows))
            offset += batch.num_rows
            per_source.update(kept.column("source").to_pylist())
            docs_w.write(kept)
    ref = _ref(
        out / scored.name,
        out / sidecar_name(scored.name),
        docs_w.rows,
        Counter(r for r in reasons if r),
        [scored_path],
        start,
    )
    return ref.model_copy(update={"per_source": dict(sorted(per_source.items()))})


def quality_threshold(sidecars: list[str], cfg: QualityConfig) -> float | None:
    """The quality keep threshold: absolute, or the percentile of every score seen across the shards."""
    from tasks.quality import score_threshold

    if not cfg.model_path:
        return None
    scores: list[float] = []
    for path in sidecars:
        column = read_shard(Path(path), SCORES_SCHEMA, columns=["quality_score"]).column("quality_score")
        scores.extend(pc.drop_null(column).to_pylist())
    return score_threshold(scores, cfg)


def score_shard_item(item: tuple[str, str, str, CurateConfig]) -> Iterator[ShardRef]:
    """Worker-process entry point: score one shard and yield its ref (see tasks.isolate)."""
    yield score_shard(*item)
