"""Heuristic quality filters: Gopher quality and repetition, C4, FineWeb and bad words, in two steps.

`score_text` cleans a document's lines (C4) and computes every enabled filter's signals (floats under
stable, namespaced keys such as "gopher_quality.word_count"); the curate stage stores them in the scores
sidecar. `decide` turns stored signals into the first failing rule's reason, or None to keep, so changing
a threshold re-runs `decide` only. Rules are checked in FineWeb's pipeline order: sanity checks, Gopher
repetition, Gopher quality, C4, FineWeb, then bad words; `REASONS` lists them in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from tasks.heur_badwords import badword_signals
from tasks.heur_config import (
    BadWordsConfig,
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    SanityConfig,
)
from tasks.heur_gopher import DUP_NS, TOP_NS, quality_signals, repetition_signals
from tasks.heur_lines import c4_clean, fineweb_signals
from tasks.heur_text import sanity_signals, split_words

__all__ = ["REASONS", "FilterConfig", "decide", "score_text", "signal_names"]


class FilterConfig(BaseModel):
    """Every heuristic filter's settings; each filter can be switched off and each rule disabled."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    sanity: SanityConfig = Field(default_factory=SanityConfig)
    """Empty text and binary junk, checked before every filter."""
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    """Gopher repetition: repeated lines, paragraphs and word n-grams."""
    gopher_quality: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    """Gopher quality: length, word length, symbols, bullets, ellipses, alphabetic words, stop words."""
    c4: C4Config = Field(default_factory=C4Config)
    """C4: line cleaning (edits the text) and document rules (lorem ipsum, `{`, too few sentences)."""
    fineweb: FineWebConfig = Field(default_factory=FineWebConfig)
    """FineWeb: punctuated, short and repeated lines, newlines per word (on the C4-cleaned text)."""
    badwords: BadWordsConfig = Field(default_factory=BadWordsConfig)
    """Share of words from a per-language list of obscene words."""

    def scoring_view(self) -> dict[str, Any]:
        """The settings that change signals or the cleaned text (not thresholds): a cache key for scoring."""
        view: dict[str, Any] = {}
        for name in type(self).model_fields:
            sub = getattr(self, name)
            view[name] = {k: v for k, v in sub.model_dump(mode="json").items() if k in type(sub).SCORING}
        return view


class _Rule(NamedTuple):
    """One rule: a signal compared with a setting of its config section."""

    # kind "max"/"min": fails above/below the setting; "flag": fails when the signal is set and the
    # setting is on. A setting of None or False disables the rule; a rule without a setting is always on.

    section: str
    reason: str
    signal: str
    kind: str
    setting: str | None


def _repetition_rules() -> list[_Rule]:
    """Gopher repetition's rules, in datatrove's order."""
    sec = "gopher_repetition"
    rules = []
    for unit in ("para", "line"):
        for what in ("frac", "char_frac"):
            name = f"dup_{unit}_{what}"
            rules.append(_Rule(sec, f"gopher_{name}", f"{sec}.{name}", "max", f"max_{name}"))
    for kind, ns in (("top", TOP_NS), ("dup", DUP_NS)):
        for n in ns:
            name = f"{kind}_{n}_gram"
            rules.append(_Rule(sec, f"gopher_{name}", f"{sec}.{name}_frac", "max", f"max_{name}_frac"))
    return rules


def _rules() -> tuple[_Rule, ...]:
    """Every rule in decision order (within a filter: datatrove's order)."""
    table = [
        ("sanity", "doc_empty", "empty", "flag", None),
        ("sanity", "doc_binary", "control_frac", "max", "max_control_frac"),
        ("gopher_quality", "gopher_short_doc", "word_count", "min", "min_doc_words"),
        ("gopher_quality", "gopher_long_doc", "word_count", "max", "max_doc_words"),
        ("gopher_quality", "gopher_short_words", "mean_word_length", "min", "min_avg_word_length"),
        ("gopher_quality", "gopher_long_words", "mean_word_length", "max", "max_avg_word_length"),
        ("gopher_quality", "gopher_too_many_hashes", "hash_word_ratio", "max", "max_hash_word_ratio"),
        (
            "gopher_quality",
            "gopher_too_many_ellipsis",
            "ellipsis_word_ratio",
            "max",
            "max_ellipsis_word_ratio",
        ),
        ("gopher_quality", "gopher_too_many_bullets", "bullet_lines_ratio", "max", "max_bullet_lines_ratio"),
        (
            "gopher_quality",
            "gopher_too_many_end_ellipsis",
            "ellipsis_lines_ratio",
            "max",
            "max_ellipsis_lines_ratio",
        ),
        ("gopher_quality", "gopher_few_alpha_words", "alpha_words_ratio", "min", "min_alpha_words_ratio"),
        ("gopher_quality", "gopher_few_stop_words", "stop_words", "min", "min_stop_words"),
        ("c4", "c4_lorem_ipsum", "lorem_ipsum", "flag", "filter_lorem_ipsum"),
        ("c4", "c4_curly_bracket", "curly_bracket", "flag", "filter_curly_bracket"),
        ("c4", "c4_too_few_sentences", "sentences", "min", "min_num_sentences"),
        ("fineweb", "fineweb_empty", "lines", "min", None),
        ("fineweb", "fineweb_line_punct", "line_punct_ratio", "min_unless_zero", "min_line_punct_ratio"),
        ("fineweb", "fineweb_short_lines", "short_line_ratio", "max", "max_short_line_ratio"),
        ("fineweb", "fineweb_char_dup", "char_dup_ratio", "max", "max_char_dup_ratio"),
        ("fineweb", "fineweb_list_ratio", "newline_ratio", "max", "max_newline_ratio"),
        ("badwords", "badwords", "fraction", "max", "max_fraction"),
    ]
    rules = [
        _Rule(sec, reason, f"{sec}.{signal}", kind, setting) for sec, reason, signal, kind, setting in table
    ]
    return (*rules[:2], *_repetition_rules(), *rules[2:])


RULES = _rules()
REASONS: tuple[str, ...] = tuple(rule.reason for rule in RULES)
"""Every reason `decide` can return, in the order rules are checked."""


def _fails(rule: _Rule, value: float, section: BaseModel) -> bool:
    """Whether one rule fails for a signal value under its section's settings."""
    if rule.setting is None:  # always on: a flag that is set, or a count below one
        return value >= 1.0 if rule.kind == "flag" else value < 1.0
    setting = getattr(section, rule.setting)
    if setting is None or setting is False:
        return False
    if rule.kind == "flag":
        return value >= 1.0
    if rule.kind == "max":
        return value > setting
    # FineWeb can exempt documents where no line at all ends in punctuation.
    if rule.kind == "min_unless_zero" and value == 0.0 and getattr(section, "line_punct_exclude_zero", False):
        return False
    return value < setting


def decide(signals: Mapping[str, float], cfg: FilterConfig) -> str | None:
    """The first failing rule's reason (in `REASONS` order), or None to keep the document."""
    for rule in RULES:
        section = getattr(cfg, rule.section)
        if not getattr(section, "enabled", True):
            continue
        try:
            value = signals[rule.signal]
        except KeyError:
            hint = f"score with filters.{rule.section} enabled before deciding"
            raise KeyError(f"signal {rule.signal!r} is missing: {hint}") from None
        if _fails(rule, value, section):
            return rule.reason
    return None


def score_text(text: str, cfg: FilterConfig, lang: str = "en") -> tuple[str, dict[str, float]]:
    """The C4-cleaned text and every enabled filter's signals (all computed: nothing stops early)."""
    signals = sanity_signals(text)
    words = split_words(text) if cfg.gopher_repetition.enabled or cfg.gopher_quality.enabled else None
    if cfg.gopher_repetition.enabled:
        signals |= repetition_signals(text, words or [])
    if cfg.gopher_quality.enabled:
        signals |= quality_signals(text, words or [], cfg.gopher_quality)
    cleaned = text
    if cfg.c4.enabled:
        cleaned, c4_signals, words = c4_clean(text, cfg.c4)
        signals |= c4_signals
    if cfg.fineweb.enabled or cfg.badwords.enabled:
        words = split_words(cleaned) if words is None else words
        if cfg.fineweb.enabled:
            signals |= fineweb_signals(cleaned, words, cfg.fineweb)
        if cfg.badwords.enabled:
            signals |= badword_signals(cleaned, words, lang, cfg.badwords)
    return cleaned, signals


def signal_names(cfg: FilterConfig | None = None) -> tuple[str, ...]:
    """Every signal key `score_text` produces with this config (all filters on by default), sorted."""
    _, signals = score_text("", cfg or FilterConfig())
    return tuple(sorted(signals))
