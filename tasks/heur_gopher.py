"""Gopher's quality and repetition signals (Rae et al. 2021), computed in full so any threshold can change.

Definitions follow datatrove's GopherQualityFilter and GopherRepetitionFilter, the reference FineWeb was
built with: ratios over tokens count punctuation tokens, lines split at every newline, paragraphs at
blank lines; see docs/heuristics.md for where and why we differ.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from operator import itemgetter

import numpy as np

from tasks.heur_config import GopherQualityConfig
from tasks.heur_text import count_alpha, word_stats

_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAK = re.compile(r"\n+")
TOP_NS = (2, 3, 4)
DUP_NS = (5, 6, 7, 8, 9, 10)
# Below this many tokens plain Python beats NumPy's per-call overhead for the n-gram statistics.
_NUMPY_MIN_TOKENS = 200  # measured crossover on the benchmark corpus: ~150-300 tokens


# --- Repetition -------------------------------------------------------------------------------------


def duplicates(items: Iterable[str]) -> tuple[int, int]:
    """(count, characters) of items that repeat an earlier item."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _greedy_repeats(candidates: Iterable[tuple[int, Hashable, int]], n: int) -> int:
    """Characters in repeated n-grams, scanning left to right and skipping past each repeat (as Gopher)."""
    # `candidates` are (position, n-gram, characters) in position order, only for the positions whose
    # n-gram occurs more than once: any other n-gram is new when seen and never seen again.
    seen: set[Hashable] = set()
    resume = 0
    total = 0
    for pos, gram, size in candidates:
        if pos < resume:
            continue  # inside a repeat already counted
        if gram in seen:
            total += size
            resume = pos + n
        else:
            seen.add(gram)
    return total


def _chunked_triples(*arrays: np.ndarray, size: int = 1 << 16) -> Iterator[tuple[int, int, int]]:
    """Zip NumPy arrays as Python ints, a slice at a time."""
    # Whole-array lists would cost ~100 MB per million repeats in a long, repetitive document.
    for start in range(0, len(arrays[0]), size):
        yield from zip(*(a[start : start + size].tolist() for a in arrays), strict=True)


def _ngram_stats_python(words: list[str]) -> tuple[dict[int, int], dict[int, int]]:
    """Top n-gram characters (n=2..4) and repeated n-gram characters (n=5..10), in plain Python."""
    top = dict.fromkeys(TOP_NS, 0)
    for n in TOP_NS:
        counts = Counter(zip(*(words[i:] for i in range(n)), strict=False))
        if counts:
            # max() keeps the first of equal counts: the n-gram seen first, as Counter.most_common(1).
            gram, count = max(counts.items(), key=itemgetter(1))
            top[n] = (sum(map(len, gram)) + n - 1) * count
    dup = dict.fromkeys(DUP_NS, 0)
    lens = [len(w) for w in words]
    for n in DUP_NS:
        grams = list(zip(*(words[i:] for i in range(n)), strict=False))
        counts = Counter(grams)
        if len(counts) == len(grams):
            break  # no repeated n-gram means no repeated longer n-gram either
        positions = [i for i, g in enumerate(grams) if counts[g] > 1]
        candidates = ((i, grams[i], sum(lens[i : i + n])) for i in positions)
        dup[n] = _greedy_repeats(candidates, n)
    return top, dup


def _ngram_stats_numpy(words: list[str]) -> tuple[dict[int, int], dict[int, int]]:
    """The same statistics with exact integer n-gram ids built by NumPy (fast and small for long texts)."""
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), np.int64, len(words))
    csum = np.concatenate(([0], np.cumsum(np.fromiter(map(len, words), np.int64, len(words)))))
    top = dict.fromkeys(TOP_NS, 0)
    dup = dict.fromkeys(DUP_NS, 0)
    gram = ids
    for n in range(2, max(DUP_NS) + 1):
        m = len(words) - n + 1
        if m <= 0:
            break
        # Pair each (n-1)-gram id with the next token id: an exact key, renumbered densely by unique().
        key = gram[:m] * len(vocab) + ids[n - 1 :]
        _, first, gram, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
        chars = csum[n:] - csum[:m]
        if n in TOP_NS:
            best = counts.max()
            pos = first[counts == best].min()  # the first-seen of the most frequent n-grams
            top[n] = int((chars[pos] + n - 1) * best)
            continue
        positions = np.flatnonzero(counts[gram] > 1)
        if not len(positions):
            break  # no repeated n-gram means no repeated longer n-gram either
        dup[n] = _greedy_repeats(_chunked_triples(positions, gram[positions], chars[positions]), n)
    return top, dup


def ngram_stats(words: list[str]) -> tuple[dict[int, int], dict[int, int]]:
    """Characters of the most frequent n-gram times its count (n=2..4) and of repeated n-grams (n=5..10)."""
    if len(words) < _NUMPY_MIN_TOKENS:
        return _ngram_stats_python(words)
    return _ngram_stats_numpy(words)


def repetition_signals(text: str, words: list[str]) -> dict[str, float]:
    """Gopher repetition signals: duplicate paragraph/line fractions and n-gram character fractions."""
    size = len(text) or 1
    paragraphs = _PARAGRAPH_BREAK.split(text.strip())
    para_dups, para_chars = duplicates(paragraphs)
    lines = _LINE_BREAK.split(text)
    line_dups, line_chars = duplicates(lines)
    top, dup = ngram_stats(words)
    signals = {
        "gopher_repetition.dup_para_frac": para_dups / len(paragraphs),
        "gopher_repetition.dup_para_char_frac": para_chars / size,
        "gopher_repetition.dup_line_frac": line_dups / len(lines),
        "gopher_repetition.dup_line_char_frac": line_chars / size,
    }
    signals |= {f"gopher_repetition.top_{n}_gram_frac": top[n] / size for n in TOP_NS}
    signals |= {f"gopher_repetition.dup_{n}_gram_frac": dup[n] / size for n in DUP_NS}
    return signals


# --- Quality ----------------------------------------------------------------------------------------


def quality_signals(text: str, words: list[str], cfg: GopherQualityConfig) -> dict[str, float]:
    """Gopher quality signals: word count and length, symbol ratios, bullet/ellipsis lines, stop words."""
    n_tokens = len(words) or 1
    n_words, word_chars = word_stats(words)
    lines = text.splitlines() or [""]
    bullets = sum(1 for line in lines if line.lstrip().startswith(cfg.bullet_prefixes))
    end_ellipses = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
    return {
        "gopher_quality.word_count": float(n_words),
        "gopher_quality.mean_word_length": word_chars / n_words if n_words else 0.0,
        "gopher_quality.hash_word_ratio": text.count("#") / n_tokens,
        "gopher_quality.ellipsis_word_ratio": (text.count("...") + text.count("…")) / n_tokens,
        "gopher_quality.bullet_lines_ratio": bullets / len(lines),
        "gopher_quality.ellipsis_lines_ratio": end_ellipses / len(lines),
        "gopher_quality.alpha_words_ratio": count_alpha(words) / n_tokens,
        # Distinct stop words, matched case-sensitively as in datatrove ("The" is not "the").
        "gopher_quality.stop_words": float(len(set(cfg.stop_words).intersection(words))),
    }
