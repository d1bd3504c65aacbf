"""Deterministic, vectorized MinHash-LSH for near-duplicate detection (FineWeb settings; DESIGN.md §7).

Pipeline of pure functions: `normalize` -> `shingle_hashes` (64-bit hashes of distinct word n-grams) ->
`signatures` (bands*rows minimums under a seeded family of 64-bit bijective mixers, vectorized over a batch)
-> `band_keys` (one 64-bit key per band) -> `candidate_pairs` (documents sharing a band bucket) ->
`jaccard` (exact verification) -> `clusters` (union-find, root = smallest index).

Every hash is defined here from fixed constants (blake2b for words, the murmur3 64-bit finalizer for
mixing), so results are identical across processes, machines and numpy versions; Python's `hash` is
never used. Empty documents get an all-ones sentinel signature that `candidate_pairs` never pairs.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

U64 = np.uint64
SENTINEL = np.uint64(0xFFFFFFFFFFFFFFFF)
"""Signature value of empty documents and band key of their bands; never put in a bucket."""

_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S33 = np.uint64(33)
# Shingles per slice in `signatures`: bounds the (slice, permutations) temporary to ~30 MB whatever
# the document sizes, while keeping numpy calls large enough to amortize their overhead.
_SLICE = 1 << 15

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Anything that is not a letter, digit or whitespace: punctuation and symbols (underscore counts too).
_NON_WORD = re.compile(r"[^\w\s]|_")
# Only non-ASCII characters can be combining marks: testing just those keeps mostly-ASCII text fast.
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_APOSTROPHES = re.compile(r"['’ʼ`]")


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


def _drop_combining(match: re.Match[str]) -> str:
    """Empty for a combining mark, else the character itself."""
    char = match.group()
    return "" if unicodedata.combining(char) else char


def normalize(text: str) -> str:
    """Lowercase, strip accents, drop punctuation, map numbers to 0 and collapse whitespace."""
    text = text.lower()
    if not text.isascii():
        # NFKD splits accented letters into base + combining mark; dropping the marks strips accents.
        text = _NON_ASCII.sub(_drop_combining, unicodedata.normalize("NFKD", text))
    text = _NUMBER.sub("0", text)
    # Apostrophes join ("don't" == "dont"); other punctuation separates (em dashes, slashes).
    text = _APOSTROPHES.sub("", text)
    text = _NON_WORD.sub(" ", text)
    return " ".join(text.split())


def _fmix64(x: np.ndarray) -> np.ndarray:
    """Murmur3's 64-bit finalizer, in place: a bijection with full avalanche (wrapping uint64 math)."""
    x ^= x >> _S33
    x *= _C1
    x ^= x >> _S33
    x *= _C2
    x ^= x >> _S33
    return x


@lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    """Stable 64-bit hash of one word (blake2b: C-backed, identical in every process)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Sorted distinct 64-bit hashes of the normalized text's word n-grams (short text: one shingle)."""
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    words = normalize(text).split()
    if not words:
        return np.empty(0, dtype=U64)
    width = min(ngram, len(words))
    count = len(words) - width + 1
    word_h = np.fromiter((_word_hash(w) for w in words), dtype=U64, count=len(words))
    # Order-sensitive chain over the window, vectorized over all window positions at once.
    acc = np.full(count, np.uint64(width), dtype=U64)
    for j in range(width):
        acc *= _GOLDEN
        acc ^= word_h[j : j + count]
        _fmix64(acc)
    return np.unique(acc)


def _permutation_params(cfg: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
    """Odd multipliers and xor masks of the permutation family, derived from the seed by splitmix."""
    counter = np.arange(1, 2 * cfg.permutations + 1, dtype=U64) * _GOLDEN
    counter += np.uint64(cfg.seed)
    params = _fmix64(_fmix64(counter))
    mult = params[: cfg.permutations] | np.uint64(1)  # odd => multiplication is a bijection mod 2**64
    return mult, params[cfg.permutations :]


def _signatures_of_hashes(shingles: Sequence[np.ndarray], cfg: MinHashConfig) -> np.ndarray:
    """MinHash signatures of documents given as arrays of shingle hashes."""
    n, perms = len(shingles), cfg.permutations
    sigs = np.full((n, perms), SENTINEL, dtype=U64)
    lengths = np.fromiter((len(s) for s in shingles), dtype=np.int64, count=n)
    docs = np.flatnonzero(lengths)  # empty documents keep the sentinel (reduceat cannot do empty segments)
    if docs.size == 0:
        return sigs
    flat = np.concatenate([shingles[i] for i in docs]).astype(U64, copy=False)
    bounds = np.concatenate(([0], np.cumsum(lengths[docs])))
    mult, mask = _permutation_params(cfg)
    for lo in range(0, flat.size, _SLICE):
        hi = min(lo + _SLICE, flat.size)
        inner = bounds[(bounds > lo) & (bounds < hi)]
        cuts = np.concatenate(([lo], inner))
        owners = docs[np.searchsorted(bounds, cuts, side="right") - 1]
        # h_p(x) = fmix64((x * m_p) ^ a_p): a seeded bijection per permutation, all at once.
        block = flat[lo:hi, None] * mult[None, :]
        block ^= mask[None, :]
        _fmix64(block)
        partial = np.minimum.reduceat(block, cuts - lo, axis=0)
        # Segments of one slice belong to distinct documents, so fancy-index assignment is safe.
        sigs[owners] = np.minimum(sigs[owners], partial)
    return sigs


def signatures(texts: Sequence[str], cfg: MinHashConfig) -> np.ndarray:
    """MinHash signatures (len(texts), bands*rows) uint64 of a batch; empty texts get the sentinel."""
    return _signatures_of_hashes([shingle_hashes(t, cfg.ngram) for t in texts], cfg)


def band_keys(sigs: np.ndarray, cfg: MinHashConfig) -> np.ndarray:
    """One 64-bit key per band (n, bands); all-sentinel bands keep the sentinel key."""
    sigs = np.asarray(sigs, dtype=U64)
    if sigs.ndim != 2 or sigs.shape[1] != cfg.permutations:
        raise ValueError(f"signatures must have shape (n, {cfg.permutations}), got {sigs.shape}")
    cube = sigs.reshape(len(sigs), cfg.bands, cfg.rows)
    keys = np.full((len(sigs), cfg.bands), np.uint64(cfg.rows), dtype=U64)
    for r in range(cfg.rows):
        keys *= _GOLDEN
        keys ^= cube[:, :, r]
        _fmix64(keys)
    # A real band hashing to the sentinel (chance 2**-64) is nudged so it still gets bucketed.
    keys[keys == SENTINEL] = SENTINEL - np.uint64(1)
    keys[(cube == SENTINEL).all(axis=2)] = SENTINEL
    return keys


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """Unique sorted (i, j), i < j, pairs sharing a band bucket: each bucket links its first to the rest."""
    keys = np.asarray(keys, dtype=U64)
    if keys.ndim != 2:
        raise ValueError(f"keys must have shape (n, bands), got {keys.shape}")
    n = keys.shape[0]
    found: list[np.ndarray] = []
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")  # stable: bucket members in increasing index
        col = keys[order, band]
        starts = np.ones(n, dtype=bool)
        starts[1:] = col[1:] != col[:-1]
        first = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
        member = ~starts & (col != SENTINEL)
        # Encode (first, other) as one int64 so np.unique dedupes pairs across bands in one pass.
        found.append(first[member].astype(np.int64) * n + order[member])
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
