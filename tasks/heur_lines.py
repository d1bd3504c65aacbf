"""Line-level filters: C4's line cleaning with its document rules, and FineWeb's line statistics.

C4 follows datatrove's C4QualityFilter, rule for rule and in its order: each line is stripped, then
removed for an over-long word, a missing terminal punctuation mark, too few words, "javascript" or
policy boilerplate; "lorem ipsum" and `{` are looked for in the lines that survive the rules before them.
FineWeb follows datatrove's FineWebQualityFilter and runs on the C4-cleaned text, as in FineWeb.
"""

from __future__ import annotations

import re
from functools import lru_cache

import regex

from tasks.heur_config import C4Config, FineWebConfig
from tasks.heur_gopher import duplicates
from tasks.heur_text import count_sentences, split_words

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCTUATION = (".", "?", "!", '"', "'")
_TERMINAL = regex.compile(r"\p{Sentence_Terminal}")
_C4_COUNTERS = ("long_word", "no_terminal_punct", "too_few_words", "javascript", "policy")


@lru_cache(maxsize=8)
def _long_word(limit: int) -> re.Pattern[str]:
    """A word longer than `limit` characters (`\\S` splits where `str.split()` does)."""
    return re.compile(rf"\S{{{limit + 1},}}")


def _c4_line_fate(raw: str, line: str, cfg: C4Config) -> str | None:
    """Why C4 removes a line (`raw`: stripped; `line`: also without citations), or None to keep it."""
    # Words are whitespace-split in `raw`, as C4 does, but never listed: a 10 MB line of words would cost
    # hundreds of MB of strings.
    limit = cfg.max_word_length
    if limit is not None and len(raw) > limit and _long_word(limit).search(raw):
        return "long_word"
    if cfg.filter_no_terminal_punct and (not line.endswith(_END_PUNCTUATION) or line.endswith("...")):
        return "no_terminal_punct"
    least = cfg.min_words_per_line
    if least is not None and len(raw.split(None, least)) < least:  # at most least+1 pieces
        return "too_few_words"
    return None


def c4_clean(text: str, cfg: C4Config) -> tuple[str, dict[str, float], list[str]]:
    """The text with C4's line rules applied, C4's signals, and the cleaned text's word tokens."""
    # Tokens never span lines, so the kept lines' tokens are the cleaned text's: FineWeb reuses them.
    removed = dict.fromkeys(_C4_COUNTERS, 0)
    kept: list[str] = []
    tokens: list[str] = []
    lorem = curly = False
    sentences = 0
    lines = text.splitlines()
    for original in lines:
        raw = original.strip()
        line = _CITATION.sub("", raw) if cfg.remove_citations else raw
        if fate := _c4_line_fate(raw, line, cfg):
            removed[fate] += 1
            continue
        lower = line.lower()
        lorem = lorem or "lorem ipsum" in lower
        if cfg.filter_javascript and "javascript" in lower:
            removed["javascript"] += 1
            continue
        curly = curly or "{" in line
        if cfg.filter_policy and any(p in lower for p in cfg.policy_substrings):
            removed["policy"] += 1
            continue
        line_tokens = split_words(line)
        sentences += count_sentences(line_tokens)
        tokens += line_tokens
        kept.append(line)
    signals = {
        "c4.lines": float(len(lines)),
        "c4.lines_removed": float(len(lines) - len(kept)),
        **{f"c4.lines_{name}": float(count) for name, count in removed.items()},
        "c4.lorem_ipsum": float(lorem),
        "c4.curly_bracket": float(curly),
        "c4.sentences": float(sentences),
    }
    return "\n".join(kept).strip(), signals, tokens


def _ends_in_punct(line: str, stop_chars: tuple[str, ...] | None) -> bool:
    """Whether the line ends in one of stop_chars (None: any Unicode sentence terminal)."""
    if stop_chars is not None:
        return line.endswith(stop_chars)
    return bool(line) and _TERMINAL.match(line[-1]) is not None


def fineweb_signals(text: str, words: list[str], cfg: FineWebConfig) -> dict[str, float]:
    """FineWeb's signals: punctuated, short and repeated lines among non-blank lines; newlines per token."""
    lines = [line for line in text.split("\n") if line.strip()]
    n = len(lines) or 1
    punct = sum(1 for line in lines if _ends_in_punct(line, cfg.stop_chars))
    short = sum(1 for line in lines if len(line) <= cfg.short_line_length)
    chars = len(text) - text.count("\n")
    return {
        "fineweb.lines": float(len(lines)),
        "fineweb.line_punct_ratio": punct / n,
        "fineweb.short_line_ratio": short / n,
        "fineweb.char_dup_ratio": duplicates(lines)[1] / chars if chars else 0.0,
        "fineweb.newline_ratio": text.count("\n") / len(words) if words else 0.0,
    }
