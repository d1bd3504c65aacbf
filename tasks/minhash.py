"""Deterministic, vectorized MinHash-LSH for near-duplicate detection (FineWeb settings; DESIGN.md §7).

Pipeline of pure functions: `tasks.shingles` (normalized word n-gram hashes) -> `signatures` (bands*rows
minimums under a seeded family of 64-bit multiply-add permutations, vectorized over a batch) ->
`band_keys` (one 64-bit key per band) -> `candidate_pairs` (documents sharing a band bucket) ->
`jaccard` (exact verification) -> `clusters` (union-find, root = smallest index).

Every hash is defined from fixed constants (here and in `tasks.shingles`), so results are identical
across processes, machines and numpy versions; Python's `hash` is never used. Empty documents get an
all-ones sentinel signature that `candidate_pairs` never pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from tasks.shingles import GOLDEN, U64, batch_shingles, fmix64

SENTINEL = np.uint64(0xFFFFFFFFFFFFFFFF)
"""Signature value of empty documents and band key of their bands; never put in a bucket."""

# Shingles per slice in `signatures`: bounds the (permutations, slice) temporary to ~30 MB whatever
# the document sizes, while keeping numpy calls large enough to amortize their overhead.
_SLICE = 1 << 15


class MinHashConfig(BaseModel):
    """Shingling and LSH banding settings; FineWeb's defaults give 112 permutations (≈0.72 threshold)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    ngram: int = 5
    """Words per shingle (FineWeb: word 5-grams on normalized text)."""
    bands: int = 14
    """LSH bands; two documents are candidates when all rows of any one band agree."""
    rows: int = 8
    """Signature rows (permutations) per band; bands * rows permutations in all."""
    seed: int = 1
    """Seed of the permutation family; signatures are only comparable under the same seed."""

    @field_validator("ngram", "bands", "rows")
    @classmethod
    def _positive(cls, value: int, info: ValidationInfo) -> int:
        """Reject non-positive sizes, naming the field."""
        if value < 1:
            raise ValueError(f"{info.field_name} must be >= 1, got {value}")
        return value

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, value: int) -> int:
        """Keep the seed a 64-bit unsigned value so it maps to the mixers without wrapping."""
        if not 0 <= value < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {value}")
        return value

    @property
    def permutations(self) -> int:
        """Signature length: bands * rows."""
        return self.bands * self.rows


def detection_probability(similarity: float, cfg: MinHashConfig) -> float:
    """Probability that two documents with this Jaccard similarity share at least one band bucket."""
    return 1.0 - (1.0 - similarity**cfg.rows) ** cfg.bands


def _permutation_params(cfg: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
    """Odd multipliers and addends of the permutation family, derived from the seed by splitmix."""
    counter = np.arange(1, 2 * cfg.permutations + 1, dtype=U64) * GOLDEN
    counter += np.uint64(cfg.seed)
    params = fmix64(fmix64(counter))
    mult = params[: cfg.permutations] | np.uint64(1)  # odd => multiplication is a bijection mod 2**64
    return mult, params[cfg.permutations :]


def _signatures_of_flat(flat: np.ndarray, counts: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
    """MinHash signatures of documents given as their shingle hashes, concatenated, and counts."""
    n, perms = len(counts), cfg.permutations
    sigs = np.full((n, perms), SENTINEL, dtype=U64)
    docs = np.flatnonzero(counts)  # empty documents keep the sentinel (reduceat cannot do empty segments)
    if docs.size == 0:
        return sigs
    bounds = np.concatenate(([0], np.cumsum(counts[docs])))
    mult, add = _permutation_params(cfg)
    for lo in range(0, flat.size, _SLICE):
        hi = min(lo + _SLICE, flat.size)
        inner = bounds[(bounds > lo) & (bounds < hi)]
        cuts = np.concatenate(([lo], inner))
        owners = docs[np.searchsorted(bounds, cuts, side="right") - 1]
        # h_p(x) = x * m_p + a_p (mod 2**64): shingle hashes are already fully mixed, so a multiply-add
        # per permutation orders them independently; (permutations, shingles) keeps the rows contiguous.
        block = mult[:, None] * flat[None, lo:hi]
        block += add[:, None]
        partial = np.minimum.reduceat(block, cuts - lo, axis=1).T
        # Segments of one slice belong to distinct documents, so fancy-index assignment is safe.
        sigs[owners] = np.minimum(sigs[owners], partial)
    return sigs


def signatures(texts: Sequence[str], cfg: MinHashConfig) -> np.ndarray:
    """MinHash signatures (len(texts), bands*rows) uint64 of a batch; empty texts get the sentinel."""
    flat, counts = batch_shingles(texts, cfg.ngram)
    return _signatures_of_flat(flat, counts, cfg)


def band_keys(sigs: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
    """One 64-bit key per band (n, bands); all-sentinel bands keep the sentinel key."""
    sigs = np.asarray(sigs, dtype=U64)
    if sigs.ndim != 2 or sigs.shape[1] != cfg.permutations:
        raise ValueError(f"signatures must have shape (n, {cfg.permutations}), got {sigs.shape}")
    cube = sigs.reshape(len(sigs), cfg.bands, cfg.rows)
    keys = np.full((len(sigs), cfg.bands), np.uint64(cfg.rows), dtype=U64)
    for r in range(cfg.rows):
        keys *= GOLDEN
        keys ^= cube[:, :, r]
        fmix64(keys)
    # A real band hashing to the sentinel (chance 2**-64) is nudged so it still gets bucketed.
    keys[keys == SENTINEL] = SENTINEL - np.uint64(1)
    keys[(cube == SENTINEL).all(axis=2)] = SENTINEL
    return keys


def candidate_pairs(keys: np.ndarray, priority: np.ndarray | None = None) -> np.ndarray:
    """Unique sorted (i, j), i < j, pairs sharing a band bucket: each bucket links its first member to
    every other member, and each member to the next one.

    A bucket's first member is the one with the lowest `priority` (default: the lowest index), so a
    caller can make every bucket centre on the document it would keep. The links between neighbours
    (at most as many again) let verification find two members similar to each other but not to the
    first, which a star alone never compares.
    """
    keys = np.asarray(keys, dtype=U64)
    if keys.ndim != 2:
        raise ValueError(f"keys must have shape (n, bands), got {keys.shape}")
    n = keys.shape[0]
    priority = np.arange(n) if priority is None else np.asarray(priority)
    found: list[np.ndarray] = []
    for band in range(keys.shape[1]):
        order = np.lexsort((priority, keys[:, band]))  # by key, then members by priority
        col = keys[order, band]
        starts = np.ones(n, dtype=bool)
        starts[1:] = col[1:] != col[:-1]
        first = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
        member = ~starts & (col != SENTINEL)
        prev = np.roll(order, 1)  # the member before, in the same bucket wherever `member` holds
        for other in (first, prev):
            low = np.minimum(other[member], order[member]).astype(np.int64)
            high = np.maximum(other[member], order[member])
            # Encode (low, high) as one int64 so np.unique dedupes pairs across bands in one pass.
            found.append(low * n + high)
    if not found or n == 0:
        return np.empty((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack((codes // n, codes % n), axis=1)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash sets; 0.0 when both are empty (never duplicates)."""
    a, b = np.unique(a), np.unique(b)
    union = np.union1d(a, b).size
    if union == 0:
        return 0.0
    return np.intersect1d(a, b, assume_unique=True).size / union


def clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Cluster root of each index under union-find over pairs; the root is the cluster's smallest index."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pair indices must be in [0, {n})")
    parent = list(range(n))

    def find(i: int) -> int:
        """Root of i, pointing every node on the path straight at it (path compression)."""
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for i, j in pairs.tolist():
        ri, rj = find(i), find(j)
        # Always hang the larger root under the smaller: the root is the minimum whatever the pair order.
        if ri < rj:
            parent[rj] = ri
        elif rj < ri:
            parent[ri] = rj
    return np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
