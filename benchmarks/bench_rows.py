"""What reliability costs on clean data: row checks and encodable rows, against the bare reads they wrap.

Two paired measurements on the same real text (paragraphs of ../shared/data/text recombined into documents
by benchmarks/dedup_corpus.py), in `--rounds` rounds whose order alternates:

- reading a document shard's `id` and `text` into Python, as every later stage does: the bare
  `storage.shards.iter_batches` against `storage.rows.valid_batches`, which also checks every string column
  for invalid UTF-8, nulls and oversized values;
- building the Arrow table of a batch of documents at ingest: pyarrow's `Table.from_pylist` on the rows as
  they were built before (no cleaning) against `storage.schemas.storable_documents`, which makes every
  string encodable and falls back to row by row only when the batch fails.

    python benchmarks/bench_rows.py --docs 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pyarrow as pa  # noqa: E402
from dedup_corpus import build_corpus  # noqa: E402

from storage.rows import valid_batches  # noqa: E402
from storage.schemas import (  # noqa: E402
    DOCUMENT_SCHEMA,
    Document,
    documents_table,
    new_document,
    storable_documents,
)
from storage.shards import iter_batches, write_shard  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def _bare_read(path: Path) -> int:
    """Characters of text read with the plain batch reader."""
    total = 0
    for batch in iter_batches(path, DOCUMENT_SCHEMA, 1000, columns=["id", "text"]):
        batch.column("id").to_pylist()
        total += sum(map(len, batch.column("text").to_pylist()))
    return total


def _checked_read(path: Path) -> int:
    """Characters of text read through the row checks."""
    total = 0
    for checked in valid_batches(path, DOCUMENT_SCHEMA, 1000, columns=["id", "text"]):
        checked.batch.column("id").to_pylist()
        total += sum(map(len, checked.batch.column("text").to_pylist()))
    return total


def _plain_row(doc: Document) -> dict[str, Any]:
    """A document's row built as before strings were made encodable (the same fields, no cleaning)."""
    return {
        "id": doc.id,
        "text": doc.text,
        "source": doc.source,
        "uri": doc.uri,
        "title": doc.title,
        "content_hash": doc.content_hash,
        "fetched_at": doc.fetched_at,
        "lang": doc.lang,
        "lang_score": doc.lang_score,
        "meta_json": json.dumps(doc.meta, sort_keys=True, ensure_ascii=False, default=str),
        "input_uri": doc.input_uri,
    }


def _bare_tables(batches: list[list[Document]]) -> int:
    """Rows built and converted as before, by pyarrow alone."""
    return sum(
        pa.Table.from_pylist([_plain_row(d) for d in batch], schema=DOCUMENT_SCHEMA).num_rows
        for batch in batches
    )


def _timed(fn: Callable[[], Any]) -> float:
    """CPU seconds of one call."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    """Build the corpus, run the paired rounds, print a JSON summary."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    texts, _ = build_corpus(args.docs, seed=0, data_dir=DATA)
    docs = [new_document(t, source="text", uri=f"bench://{i}") for i, t in enumerate(texts)]
    batches = [docs[k : k + 1000] for k in range(0, len(docs), 1000)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.parquet"
        write_shard(path, documents_table(docs), DOCUMENT_SCHEMA)
        assert _bare_read(path) == _checked_read(path)
        pairs = {
            "read": (lambda: _bare_read(path), lambda: _checked_read(path)),
            "build": (
                lambda: _bare_tables(batches),
                lambda: [storable_documents(b) for b in batches],
            ),
        }
        result: dict[str, Any] = {
            "docs": len(docs),
            "mb": round(sum(len(t.encode()) for t in texts) / 1e6, 1),
        }
        for name, (bare, ours) in pairs.items():
            ratios, bares, ourss = [], [], []
            for r in range(args.rounds):
                first, second = (bare, ours) if r % 2 == 0 else (ours, bare)
                a, b = _timed(first), _timed(second)
                t_bare, t_ours = (a, b) if r % 2 == 0 else (b, a)
                bares.append(t_bare)
                ourss.append(t_ours)
                ratios.append(t_ours / t_bare)
            result[name] = {
                "bare_cpu_s": round(min(bares), 3),
                "ours_cpu_s": round(min(ourss), 3),
                "median_ratio": round(statistics.median(ratios), 3),
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
