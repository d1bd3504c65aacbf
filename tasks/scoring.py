"""Curate one shard: score every document (language, heuristic signals, quality), then select the kept ones.

Two steps, so thresholds can change without re-scoring. `score_shard` runs fastText and the heuristics once
and writes the scored documents (text after C4 line cleaning, `lang`/`lang_score` filled) plus a scores
sidecar of signals. `select_shard` reads that sidecar, decides each document's drop reason from the
configured thresholds, and writes the kept documents and the final sidecar with reasons. No Prefect here:
scoring runs in worker processes (tasks/curate.py holds the wrappers).

The sidecar has a row for every input row. A row that cannot be scored (unusable: invalid UTF-8, a null
required field, a value over the size cap; or a scoring step raised for it) is left out of the scored shard
and gets its reason and null scores in the sidecar; selection keeps that reason whatever the thresholds.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from storage.layout import sidecar_name as layout_sidecar
from storage.refs import ShardRef
from storage.rows import BadRow, CheckedBatch, per_row, valid_batches
from storage.schemas import DOCUMENT_SCHEMA, SCORES_SCHEMA
from storage.shards import ShardWriter, file_fingerprint, read_shard
from tasks.heuristics import FilterConfig, decide, score_text
from tasks.langid import LangIdConfig, detect_languages, lang_drop_reason, load_fasttext, resolve_model_path
from tasks.quality import QualityConfig, quality_scores

QUALITY_LOW = "quality_low"
CURATE_ERROR = "curate_error"
"""A document whose scoring raised: dropped (the exception is logged), its shard goes on."""

logger = logging.getLogger(__name__)
R = TypeVar("R")


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
    return layout_sidecar(shard_name, "scores")


def _each(fn: Callable[[list[int]], Sequence[R]], todo: list[int], ids: list[str], what: str) -> dict[int, R]:
    """`fn` over the documents `todo` (by position), isolated per document: those it fails are left out."""
    results = per_row(fn, todo, [ids[i] for i in todo], logger, what)
    return {i: r for i, r in zip(todo, results, strict=True) if r is not None}


class Scored(NamedTuple):
    """One document's scores and its C4-cleaned text."""

    lang: str
    lang_score: float
    text: str
    signals: dict[str, float]
    quality: float | None


def _score_texts(texts: list[str], ids: list[str], cfg: CurateConfig) -> list[Scored | None]:
    """Each text's scores, or None when a scoring step raised for it."""
    every = list(range(len(texts)))
    langs = _each(
        lambda todo: detect_languages([texts[i] for i in todo], cfg.langid), every, ids, "language ID"
    )
    heur = _each(
        lambda todo: [score_text(texts[i], cfg.filters, langs[i][0]) for i in todo],
        sorted(langs),
        ids,
        "heuristics",
    )
    quality: dict[int, float | None] = dict.fromkeys(heur)
    if cfg.quality.model_path:
        model = cfg.quality.model_path
        quality = dict(
            _each(
                lambda todo: quality_scores(model, [heur[i][0] for i in todo]), sorted(heur), ids, "quality"
            )
        )
    return [Scored(*langs[i], *heur[i], quality[i]) if i in quality else None for i in every]


def _scores_rows(ids: list[str], scored: list[Scored]) -> pa.Table:
    """Scores sidecar rows of scored documents (no drop reason yet: thresholds decide it at selection)."""
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "drop_reason": pa.nulls(len(ids), pa.string()),
            "lang": pa.array([s.lang for s in scored], pa.string()),
            "lang_score": pa.array([s.lang_score for s in scored], pa.float32()),
            "quality_score": pa.array([s.quality for s in scored], pa.float32()),
            "signals": pa.array(
                [sorted(s.signals.items()) for s in scored], SCORES_SCHEMA.field("signals").type
            ),
        },
        schema=SCORES_SCHEMA,
    )


def _dropped_rows(ids: list[str], reasons: list[str]) -> pa.Table:
    """Scores sidecar rows of documents that were never scored: their reason, every score null."""
    n = len(ids)
    columns = [pa.array(ids, pa.string()), pa.array(reasons, pa.string())]
    columns += [pa.nulls(n, f.type) for f in list(SCORES_SCHEMA)[2:]]
    return pa.Table.from_arrays(columns, schema=SCORES_SCHEMA)


def _scored_docs(batch: pa.RecordBatch, ok: np.ndarray, scored: list[Scored]) -> pa.Table:
    """The batch's scored documents: cleaned text, language and its score filled in."""
    docs = pa.Table.from_batches([batch]).cast(DOCUMENT_SCHEMA)
    docs = docs if ok.all() else docs.filter(pa.array(ok))
    filled = {
        "text": pa.array([s.text for s in scored], pa.string()),
        "lang": pa.array([s.lang for s in scored], pa.string()),
        "lang_score": pa.array([s.lang_score for s in scored], pa.float32()),
    }
    for name, values in filled.items():
        docs = docs.set_column(docs.schema.get_field_index(name), DOCUMENT_SCHEMA.field(name), values)
    return docs


def _score_batch(checked: CheckedBatch, cfg: CurateConfig) -> tuple[pa.Table, pa.Table, list[BadRow]]:
    """Scored documents, the scores rows of every row of the batch (shard order) and the dropped rows."""
    ids = checked.batch.column("id").to_pylist()
    results = _score_texts(checked.batch.column("text").to_pylist(), ids, cfg)
    ok = np.array([r is not None for r in results], dtype=bool)
    scored = [r for r in results if r is not None]
    dropped = checked.dropped(ok, CURATE_ERROR)
    rows = checked.in_order(
        ok,
        _scores_rows([ids[i] for i in np.flatnonzero(ok)], scored),
        dropped,
        _dropped_rows([d.id for d in dropped], [d.reason for d in dropped]),
    )
    return _scored_docs(checked.batch, ok, scored), rows, dropped


def _check_models(cfg: CurateConfig) -> None:
    """Load the models up front: a missing or wrong model fails the shard, not every document."""
    load_fasttext(str(resolve_model_path(cfg.langid)))
    if cfg.quality.model_path:
        quality_scores(cfg.quality.model_path, [])


def score_shard(in_path: str, in_fingerprint: str, out_dir: str, cfg: CurateConfig) -> ShardRef:
    """Score every usable document of one ingest shard; write them and a sidecar row for every input row."""
    start = time.perf_counter()
    _check_models(cfg)
    name = Path(in_path).name
    out = Path(out_dir)
    drops: Counter[str] = Counter()
    with (
        ShardWriter(out / name, DOCUMENT_SCHEMA) as docs_w,
        ShardWriter(out / sidecar_name(name), SCORES_SCHEMA) as sc_w,
    ):
        for checked in valid_batches(Path(in_path), DOCUMENT_SCHEMA, cfg.batch_size):
            docs, rows, dropped = _score_batch(checked, cfg)
            docs_w.write(docs)
            sc_w.write(rows)
            drops.update(d.reason for d in dropped)
    return _ref(out / name, out / sidecar_name(name), docs_w.rows, drops, [in_path], start)


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
    """Each document's drop reason from its stored scores: language, then heuristics, then quality.

    A row without signals was never scored (unreadable, or its scoring raised) and keeps its stored reason.
    """
    reasons: list[str | None] = []
    stored = scores.column("drop_reason").to_pylist()
    langs = scores.column("lang").to_pylist()
    lang_scores = scores.column("lang_score").to_pylist()
    quality = scores.column("quality_score").to_pylist()
    for i, signals in enumerate(scores.column("signals").to_pylist()):
        if signals is None:
            reasons.append(stored[i])
            continue
        reason = lang_drop_reason(langs[i], lang_scores[i], cfg.langid) or decide(dict(signals), cfg.filters)
        if reason is None and quality_threshold is not None and quality[i] is not None:
            reason = QUALITY_LOW if quality[i] < quality_threshold else None
        reasons.append(reason)
    return reasons


def _select_docs(
    scored: Path, reasons: list[str | None], present: np.ndarray, cfg: CurateConfig, writer: ShardWriter
) -> Counter[str]:
    """Write the scored documents whose reason is None; returns the kept documents per source.

    `present` maps the scored shard's rows to their sidecar rows (the rows that have signals). A row found
    unusable here (the scored shard damaged since) is dropped with its reason like any other.
    """
    per_source: Counter[str] = Counter()
    rows = 0
    for checked in valid_batches(scored, DOCUMENT_SCHEMA, cfg.batch_size):
        rows += checked.size
        if rows > present.size:
            break
        for bad in checked.bad:
            reasons[present[bad.row]] = bad.reason
        keep = pa.array([reasons[i] is None for i in present[checked.rows()]], pa.bool_())
        kept = pa.Table.from_batches([checked.batch]).filter(keep)
        per_source.update(kept.column("source").to_pylist())
        writer.write(kept)
    if rows != present.size:
        raise ValueError(f"{scored} does not match its scores sidecar ({present.size} scored documents)")
    return per_source


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
    present = np.flatnonzero(pc.is_valid(scores.column("signals")).to_numpy(zero_copy_only=False))
    out = Path(out_dir)
    with (
        ShardWriter(out / scored.name, DOCUMENT_SCHEMA) as docs_w,
        ShardWriter(out / sidecar_name(scored.name), SCORES_SCHEMA) as sc_w,
    ):
        per_source = _select_docs(scored, reasons, present, cfg, docs_w)
        sc_w.write(scores.set_column(1, SCORES_SCHEMA.field("drop_reason"), pa.array(reasons, pa.string())))
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
