"""Text normalization and word n-gram shingle hashes for MinHash, vectorized over a batch of documents.

Normalization (FineWeb-style): lowercase, accents stripped, apostrophes joined ("don't" == "dont"),
other punctuation, symbols and control characters become spaces, every number (1,234.5 included)
becomes "0". It runs per character in C (str.lower, NFKD, a cached map for non-ASCII characters) and
then on the UTF-8 bytes of the whole batch with numpy, so there is no Python work per word.

Words are hashed by a polynomial hash of their bytes modulo 2**64 (odd base, so its inverse exists and a
word's hash is read off prefix sums in O(1)), finished by the murmur3 64-bit mixer; a shingle is an
order-sensitive chain of its words' hashes. Every constant is fixed here, so hashes are identical across
processes, machines and numpy versions; Python's `hash` is never used.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np

U64 = np.uint64
_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S33 = np.uint64(33)
_BASE = 0x2545F4914F6CDD1D  # odd: invertible modulo 2**64
_BASE_INV = pow(_BASE, -1, 2**64)
_SPACE = 32
# Bytes of batch text handled per numpy pass: bounds the uint64 temporaries (~8 arrays) to ~64 MB.
CHUNK_BYTES = 1 << 20

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_APOSTROPHES = "'`"
_NON_ASCII_APOSTROPHES = "’ʼ‘"


def fmix64(x: np.ndarray) -> np.ndarray:
    """Murmur3's 64-bit finalizer, in place: a bijection with full avalanche (wrapping uint64 math)."""
    x ^= x >> _S33
    x *= _C1
    x ^= x >> _S33
    x *= _C2
    x ^= x >> _S33
    return x


@lru_cache(maxsize=1 << 16)
def _map_char(char: str) -> str:
    """Normalized form of one non-ASCII character after NFKD: mark, apostrophe, separator, digit or itself."""
    if char in _NON_ASCII_APOSTROPHES:
        return ""
    category = unicodedata.category(char)
    if category == "Mn":  # combining marks: dropping them strips accents
        return ""
    if category == "Nd":
        return "0"
    if category[0] in "PSZC":  # punctuation, symbols, separators, control and format characters
        return " "
    return char


def _prepare(text: str) -> str:
    """Lowercased text whose non-ASCII characters are already normalized (ASCII is left to the byte pass)."""
    text = text.lower()
    if text.isascii():
        return text
    return _NON_ASCII.sub(lambda m: _map_char(m.group()), unicodedata.normalize("NFKD", text))


def _byte_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-byte tables: normalized byte, apostrophe, digit, number separator (non-ASCII: letters)."""
    out = np.full(256, _SPACE, dtype=np.uint8)
    for b in range(256):
        c = chr(b)
        if b >= 0x80 or (c.isalpha() and c.isascii()):
            out[b] = ord(c.lower()) if b < 0x80 else b
        elif c.isdigit():
            out[b] = ord("0")
    apostrophe = np.zeros(256, dtype=bool)
    apostrophe[[ord(c) for c in _APOSTROPHES]] = True
    digit = np.zeros(256, dtype=bool)
    digit[ord("0") : ord("9") + 1] = True
    separator = np.zeros(256, dtype=bool)
    separator[[ord(","), ord(".")]] = True
    return out, apostrophe, digit, separator


_MAP, _IS_APOSTROPHE, _IS_DIGIT, _IS_SEPARATOR = _byte_tables()


def _normalized_bytes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Normalized UTF-8 bytes of the batch, documents separated by a space, and each document's start."""
    encoded = [_prepare(t).encode("utf-8") for t in texts]
    raw = np.frombuffer(b" ".join(encoded), dtype=np.uint8)
    starts = np.zeros(len(encoded), dtype=np.int64)
    if len(encoded) > 1:
        starts[1:] = np.cumsum([len(e) + 1 for e in encoded[:-1]])
    digit = _IS_DIGIT[raw]
    # A number such as 1,234.5 is one run: separators between two digits belong to it.
    numeric = digit.copy()
    numeric[1:-1] |= _IS_SEPARATOR[raw[1:-1]] & digit[:-2] & digit[2:]
    drop = _IS_APOSTROPHE[raw]
    drop[1:] |= numeric[1:] & numeric[:-1]  # a number keeps only its first byte, a digit mapped to "0"
    keep = ~drop
    kept_before = np.concatenate(([0], np.cumsum(keep)))
    return _MAP[raw[keep]], kept_before[starts]


def _word_spans(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the maximal runs of non-space bytes."""
    word = data != _SPACE
    edges = np.flatnonzero(np.diff(np.concatenate(([False], word, [False])).astype(np.int8)))
    return edges[0::2], edges[1::2]


def _word_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mixed polynomial hash of each word's bytes (position-independent via the base's inverse)."""
    n = data.size
    powers = np.empty(n + 1, dtype=U64)
    powers[0] = 1
    powers[1:] = _BASE
    np.cumprod(powers, out=powers)  # wraps modulo 2**64, as intended
    prefix = np.zeros(n + 1, dtype=U64)
    np.cumsum(data.astype(U64) * powers[:n], out=prefix[1:])
    inverse = np.empty(n + 1, dtype=U64)
    inverse[0] = 1
    inverse[1:] = _BASE_INV
    np.cumprod(inverse, out=inverse)
    hashes = (prefix[ends] - prefix[starts]) * inverse[starts]
    hashes ^= (ends - starts).astype(U64) * GOLDEN  # length in the hash: no word is a prefix-collision
    return fmix64(hashes)


def _chain(word_h: np.ndarray, width: int, count: int) -> np.ndarray:
    """Order-sensitive hashes of the `count` windows of `width` consecutive word hashes."""
    acc = np.full(count, np.uint64(width), dtype=U64)
    for j in range(width):
        acc *= GOLDEN
        acc ^= word_h[j : j + count]
        fmix64(acc)
    return acc


def _chunks(texts: Sequence[str]) -> Iterator[tuple[int, int]]:
    """Consecutive [lo, hi) document ranges of about CHUNK_BYTES characters each (at least one document)."""
    lo, size = 0, 0
    for i, text in enumerate(texts):
        size += len(text) + 1
        if size >= CHUNK_BYTES:
            yield lo, i + 1
            lo, size = i + 1, 0
    if lo < len(texts):
        yield lo, len(texts)


def _batch_shingles(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of one chunk, grouped by document (repeats kept), and each document's count."""
    data, doc_starts = _normalized_bytes(texts)
    starts, ends = _word_spans(data)
    word_h = _word_hashes(data, starts, ends)
    word_doc = np.searchsorted(doc_starts, starts, side="right") - 1
    words_per_doc = np.bincount(word_doc, minlength=len(texts))
    first_word = np.concatenate(([0], np.cumsum(words_per_doc)))[:-1]
    parts: list[np.ndarray] = []
    if word_h.size >= ngram:
        full = _chain(word_h, ngram, word_h.size - ngram + 1)
        # A window belongs to a document when its first and last word do.
        inside = word_doc[: full.size] == word_doc[ngram - 1 :]
        parts.append(full[inside])
    counts = np.maximum(words_per_doc - ngram + 1, 0)
    short = np.flatnonzero((words_per_doc > 0) & (words_per_doc < ngram))
    if short.size:
        # Documents shorter than one shingle get a single shingle of all their words, placed in order.
        flat = parts[0] if parts else np.empty(0, dtype=U64)
        pieces, offset = [], 0
        bounds = np.concatenate(([0], np.cumsum(counts)))
        for d in short:
            pieces += [flat[offset : bounds[d]], _chain(word_h[first_word[d] :], int(words_per_doc[d]), 1)]
            offset = bounds[d]
        parts = [np.concatenate([*pieces, flat[offset:]])]
        counts[short] = 1
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=U64)
    return flat, counts


def batch_shingles(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """All shingle hashes of a batch grouped by document (repeats kept) and the shingle count per document."""
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    flats: list[np.ndarray] = [np.empty(0, dtype=U64)]
    counts: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    for lo, hi in _chunks(texts):
        flat, count = _batch_shingles(texts[lo:hi], ngram)
        flats.append(flat)
        counts.append(count)
    return np.concatenate(flats), np.concatenate(counts)


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Sorted distinct shingle hashes of one document (short text: one shingle; empty: none)."""
    return np.unique(batch_shingles([text], ngram)[0])


def normalize(text: str) -> str:
    """The normalized text the shingles are taken from: its words joined by single spaces."""
    data, _ = _normalized_bytes([text])
    return " ".join(data.tobytes().decode("utf-8", errors="replace").split())
