"""Dedup reduce steps: LSH buckets to candidate pairs, then clustering with a deterministic keep rule.

Documents are numbered globally: the index's documents first (earlier runs, in commit order), then this
run's, shard by shard in name order. Keep rule, the same for exact and near duplicates: a document already
in the index wins (it was published by an earlier run), then the longest text (characters), then the
lowest id. Exact-hash groups collapse to their best document; (verified) LSH pairs then link groups, and
each removed document points at the kept document it duplicates (`resolution`: star or component). The
result depends only on the documents, never on the number of workers or the order of the shards.
Rows that are not usable documents (listed by their signature files) keep their place and their reason but
join no exact group and no link, so they never cluster and never displace a document.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.rows import valid_batches
from storage.schemas import DEDUP_SCHEMA, DOCUMENT_SCHEMA
from storage.shards import SchemaError, ShardError, atomic_write
from tasks.dedup_config import DUP_EXACT, DUP_MINHASH, DedupConfig
from tasks.dedup_sigs import SigRef, read_signatures
from tasks.minhash import candidate_pairs, clusters
from tasks.shingles import batch_shingles

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """Every document considered: the index's, then this run's, with where to read each text."""

    ids: pa.Array
    content_hash: pa.Array
    length: np.ndarray
    indexed: np.ndarray
    band_keys: np.ndarray
    location: np.ndarray
    """Position of each document's text file in `files`."""
    row: np.ndarray
    """Row of the document in its file (-1 for index documents, which are looked up by id)."""
    files: list[str]
    runs: list[tuple[int, int]]
    """[start, stop) of each signature file's documents."""
    dropped: np.ndarray
    """Per row, the reason it is not a usable document (its signature file says so), or None."""

    @property
    def unusable(self) -> np.ndarray:
        """Mask of the rows that are not usable documents."""
        return np.not_equal(self.dropped, None)


def load_corpus(refs: list[SigRef], index: pa.Table, cfg: DedupConfig) -> Corpus:
    """Validate and concatenate the index and every signature file into one numbered corpus."""
    bands = cfg.minhash.bands if cfg.near else 0
    idx_keys = pc.list_flatten(index.column("band_keys")).to_numpy().astype(np.uint64)
    keys, ids, hashes, lengths = [idx_keys.reshape(index.num_rows, bands)], [], [], []
    files = sorted(set(index.column("shard").to_pylist()))
    location = [np.searchsorted(files, index.column("shard").to_numpy(zero_copy_only=False))]
    rows, runs, start = [np.full(index.num_rows, -1)], [], index.num_rows
    dropped = [np.full(index.num_rows, None, dtype=object)]
    for ref in refs:
        sig = read_signatures(ref, cfg)
        dropped.append(sig.dropped)
        keys.append(sig.band_keys)
        ids.append(sig.ids)
        hashes.append(sig.content_hash)
        lengths.append(sig.length)
        location.append(np.full(ref.rows, len(files)))
        files.append(ref.source)
        rows.append(np.arange(ref.rows))
        runs.append((start, start + ref.rows))
        start += ref.rows
    return Corpus(
        ids=pa.chunked_array([*index.column("id").chunks, *ids], pa.string()).combine_chunks(),
        content_hash=pa.chunked_array(
            [*index.column("content_hash").chunks, *hashes], pa.string()
        ).combine_chunks(),
        length=np.concatenate([index.column("length").to_numpy(), *lengths]).astype(np.int64),
        indexed=np.arange(start) < index.num_rows,
        band_keys=np.concatenate(keys),
        location=np.concatenate(location).astype(np.int64),
        row=np.concatenate(rows).astype(np.int64),
        files=files,
        runs=runs,
        dropped=np.concatenate(dropped),
    )


def save_pairs(path: Path, pairs: np.ndarray) -> None:
    """Write candidate pairs atomically as a .npy file."""

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, pairs.astype(np.int64))

    atomic_write(path, _write)


def load_pairs(path: Path, n: int) -> np.ndarray:
    """Read candidate pairs, refusing a truncated or foreign file."""
    try:
        pairs = np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ShardError(f"{path} is not a complete candidate-pair file: {exc}") from exc
    if pairs.ndim != 2 or pairs.shape[1] != 2 or (pairs.size and (pairs.min() < 0 or pairs.max() >= n)):
        raise ShardError(f"{path} does not hold candidate pairs for {n} documents")
    return pairs


def bucket_pairs(corpus: Corpus) -> np.ndarray:
    """Candidate pairs from shared LSH buckets, minus pairs of two index documents (never revisited)."""
    if corpus.band_keys.shape[1] == 0:
        return np.empty((0, 2), dtype=np.int64)
    # Centre each bucket on the member the keep rule prefers, so resolution sees its links directly.
    rank = np.empty(corpus.length.size, dtype=np.int64)
    rank[keep_order(corpus)] = np.arange(corpus.length.size)
    pairs = candidate_pairs(corpus.band_keys, rank)
    return pairs[~(corpus.indexed[pairs[:, 0]] & corpus.indexed[pairs[:, 1]])]


def keep_order(corpus: Corpus) -> np.ndarray:
    """Documents from most to least preferred: indexed first, then longest, then lowest id."""
    table = pa.table({"indexed": corpus.indexed, "length": corpus.length, "id": corpus.ids})
    keys = [("indexed", "descending"), ("length", "descending"), ("id", "ascending")]
    return pc.sort_indices(table, sort_keys=keys).to_numpy()


def _group_best(groups: np.ndarray, rank: np.ndarray, order: np.ndarray) -> np.ndarray:
    """For each document, the best-ranked document of its group."""
    best = np.full(groups.max() + 1 if groups.size else 0, len(rank), dtype=np.int64)
    np.minimum.at(best, groups, rank)
    return order[best[groups]]


def _texts(corpus: Corpus, docs: np.ndarray) -> dict[int, str | None]:
    """Texts of the given documents, streamed file by file (None when an index document's file is gone or
    can no longer be read: verification then keeps the LSH verdict)."""
    out: dict[int, str | None] = {int(d): None for d in docs}
    for loc in np.unique(corpus.location[docs]):
        mine = docs[corpus.location[docs] == loc]
        path = Path(corpus.files[loc])
        try:
            out.update(_read_texts(path, corpus, mine) if path.exists() else {})
        except (ShardError, SchemaError, pa.ArrowException) as exc:
            logger.warning("dedup: texts of %s are unavailable for verification: %s", path, exc)
    return out


def _read_texts(path: Path, corpus: Corpus, mine: np.ndarray) -> dict[int, str]:
    """Texts of some documents of one shard, found by row (this run) or by id (index), batch by batch."""
    by_row = corpus.row[mine[0]] >= 0
    wanted = (
        dict(zip(corpus.row[mine].tolist(), mine.tolist(), strict=True))
        if by_row
        else {corpus.ids[int(d)].as_py(): int(d) for d in mine}
    )
    found: dict[int, str] = {}
    # Batches keep memory to one row group of text, not the whole shard; unusable rows are never wanted.
    for checked in valid_batches(path, DOCUMENT_SCHEMA, 1000, columns=["id", "text"], max_bytes=None):
        batch = checked.batch
        keys = checked.rows().tolist() if by_row else batch.column("id").to_pylist()
        hits = [(k, j) for j, k in enumerate(keys) if k in wanted]
        if hits:
            texts = batch.column("text").take(pa.array([j for _, j in hits])).to_pylist()
            found.update((wanted[k], t) for (k, _), t in zip(hits, texts, strict=True))
    return found


def _shingle_sets(corpus: Corpus, docs: np.ndarray, ngram: int) -> dict[int, np.ndarray | None]:
    """Distinct shingle hashes of each given document (None when its text is unavailable)."""
    texts = _texts(corpus, docs)
    known = [d for d, t in texts.items() if t is not None]
    flat, counts = batch_shingles([texts[d] or "" for d in known], ngram)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    sets: dict[int, np.ndarray | None] = {d: None for d in texts}
    for k, d in enumerate(known):
        sets[d] = np.unique(flat[bounds[k] : bounds[k + 1]])
    return sets


def _similarity(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Exact Jaccard of two distinct-hash sets; NaN when either text is unavailable."""
    if a is None or b is None:
        return float("nan")
    union = a.size + b.size
    if union == 0:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (union - inter)


@dataclass(frozen=True)
class Decisions:
    """Per document of the corpus: drop reason, the kept document (its cluster) and similarity to it."""

    reason: np.ndarray
    keeper: np.ndarray
    similarity: np.ndarray
    clustered: np.ndarray
    stats: dict[str, int]


def _links(corpus: Corpus, pairs: np.ndarray, rep: np.ndarray) -> np.ndarray:
    """Candidate pairs moved onto exact-group representatives: unique, ordered, never within one group."""
    links = np.sort(rep[pairs], axis=1)
    links = links[(links[:, 0] != links[:, 1]) & ~(corpus.indexed[links].all(axis=1))]
    links = links[~corpus.unusable[links].any(axis=1)]
    return np.unique(links, axis=0) if links.size else links.reshape(0, 2)


def _verify(
    corpus: Corpus, links: np.ndarray, cfg: DedupConfig
) -> tuple[np.ndarray, dict[int, np.ndarray | None]]:
    """Exact Jaccard of every link (NaN when a text is unavailable) and the shingle sets it used."""
    if not cfg.verify or links.size == 0:
        return np.full(len(links), np.nan), {}
    sets = _shingle_sets(corpus, np.unique(links), cfg.minhash.ngram)
    return np.array([_similarity(sets[a], sets[b]) for a, b in links.tolist()]), sets


def _star_keepers(
    n: int, links: np.ndarray, rank: np.ndarray, similar: Callable[[int, int], bool]
) -> np.ndarray:
    """Greedy keep in rank order: a document is removed for its best-ranked kept neighbour, else kept.

    Every removed document is then similar to the very document kept in its place, which union-find
    components do not guarantee (a chain A~B~C keeps A and removes C even when A and C differ). Buckets
    link their first member and neighbouring members, not all pairs, so a document whose neighbour was
    removed is also tried against that neighbour's kept document.
    """
    keeper = np.arange(n)
    if links.size == 0:
        return keeper
    first = rank[links[:, 0]] < rank[links[:, 1]]
    early = np.where(first, links[:, 0], links[:, 1])
    late = np.where(first, links[:, 1], links[:, 0])
    # Links by the later document's rank: every earlier document's fate is settled before it is used.
    for e, lt in zip(
        *(a[np.lexsort((rank[early], rank[late]))].tolist() for a in (early, late)), strict=True
    ):
        if keeper[lt] != lt:
            continue
        target = int(keeper[e])
        if target == e or similar(lt, target):
            keeper[lt] = target
    return keeper


def resolve(corpus: Corpus, pairs: np.ndarray, cfg: DedupConfig) -> Decisions:
    """Exact groups, verified near links, then every document's kept document (DedupConfig.resolution)."""
    n = corpus.length.size
    order = keep_order(corpus)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    codes = pc.dictionary_encode(corpus.content_hash).indices.to_numpy().astype(np.int64)
    unusable = corpus.unusable
    # An unusable row is an exact group of its own (their placeholder hashes are all equal).
    codes[unusable] = n + np.arange(int(unusable.sum()))
    rep = _group_best(codes, rank, order) if cfg.exact else np.arange(n)
    links = _links(corpus, pairs, rep) if cfg.near else np.empty((0, 2), dtype=np.int64)
    sims, sets = _verify(corpus, links, cfg)
    verified = ~(sims < cfg.verify_threshold)  # NaN (text unavailable) keeps the LSH verdict
    if cfg.resolution == "component":
        keeper = _group_best(clusters(n, links[verified])[rep], rank, order)
    else:

        def similar(a: int, b: int) -> bool:
            """Whether a document is similar enough to another's kept document (unknown counts as yes)."""
            return not cfg.verify or not _similarity(sets.get(a), sets.get(b)) < cfg.verify_threshold

        keeper = _star_keepers(n, links[verified], rank, similar)[rep]
    clustered = np.bincount(keeper, minlength=n)[keeper] > 1
    same_text = codes == codes[keeper]
    reason = np.full(n, None, dtype=object)
    removed = keeper != np.arange(n)
    reason[removed & same_text] = DUP_EXACT
    reason[removed & ~same_text] = DUP_MINHASH
    reason[unusable] = corpus.dropped[unusable]
    similarity = np.where(removed & same_text, 1.0, np.nan)
    for i in np.flatnonzero(removed & ~same_text).tolist():
        similarity[i] = _similarity(sets.get(int(rep[i])), sets.get(int(keeper[i])))
    stats = {
        "candidate_pairs": len(pairs),
        "links": len(links),
        "links_rejected": int((~verified).sum()),
        "clusters": int(np.unique(keeper[clustered]).size),
    }
    return Decisions(reason, keeper, similarity, clustered, stats)


def cluster_ids(corpus: Corpus, decisions: Decisions) -> pa.Array:
    """Each document's cluster id: the smallest id among a kept document and those removed for it."""
    by_id = pc.sort_indices(corpus.ids).to_numpy()
    id_rank = np.empty_like(by_id)
    id_rank[by_id] = np.arange(by_id.size)
    smallest = np.full(by_id.size, by_id.size, dtype=np.int64)
    np.minimum.at(smallest, decisions.keeper, id_rank)
    ids = corpus.ids.take(pa.array(by_id[smallest[decisions.keeper]]))
    return pc.if_else(pa.array(decisions.clustered), ids, pa.nulls(by_id.size, pa.string()))


def sidecar_tables(corpus: Corpus, decisions: Decisions) -> list[pa.Table]:
    """One dedup sidecar table per signature file of this run, rows in shard order."""
    cluster = cluster_ids(corpus, decisions) if corpus.length.size else pa.array([], pa.string())
    kept = pc.if_else(
        pa.array(decisions.clustered),
        corpus.ids.take(pa.array(decisions.keeper)),
        pa.nulls(corpus.length.size, pa.string()),
    )
    similarity = pa.array(decisions.similarity.astype(np.float32), mask=np.isnan(decisions.similarity))
    reason = pa.array(decisions.reason.tolist(), pa.string())
    out = []
    for start, stop in corpus.runs:
        columns = [corpus.ids, reason, cluster, kept, similarity]
        out.append(pa.Table.from_arrays([c.slice(start, stop - start) for c in columns], schema=DEDUP_SCHEMA))
    return out


def summary(decisions: Decisions, corpus: Corpus) -> dict[str, Any]:
    """Counts for the manifest: documents of this run, removals per reason, pair statistics."""
    mine = ~corpus.indexed
    reasons = decisions.reason[mine]
    return {
        "documents": int(mine.sum()),
        "indexed_documents": int(corpus.indexed.sum()),
        DUP_EXACT: int((reasons == DUP_EXACT).sum()),
        DUP_MINHASH: int((reasons == DUP_MINHASH).sum()),
        "unusable": int((corpus.unusable & mine).sum()),
        **decisions.stats,
    }
