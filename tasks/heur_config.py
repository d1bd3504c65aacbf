"""Settings of each heuristic filter, with the published defaults (Gopher, C4, FineWeb; DESIGN.md §7).

Two kinds of field: *thresholds* (compared with a stored signal by `decide`, so changing one never needs
re-scoring; `None` disables that one rule) and *scoring settings* (listed in each class's `SCORING`: they
change the signals or the cleaned text, so changing one means scoring again).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

_MODEL = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class SanityConfig(BaseModel):
    """Checks every document gets before the filters: empty text and binary junk."""

    model_config = _MODEL
    SCORING: ClassVar[frozenset[str]] = frozenset()

    max_control_frac: float | None = Field(default=0.05, ge=0.0, le=1.0)
    """Drop (`doc_binary`) when more than this share of characters are control characters (not tab or
    newlines), U+FFFD replacement characters or lone surrogates: decoded binary junk."""


class GopherRepetitionConfig(BaseModel):
    """Gopher's repetition rules (Rae et al. 2021, table A1): repeated lines, paragraphs and n-grams."""

    model_config = _MODEL
    SCORING: ClassVar[frozenset[str]] = frozenset({"enabled"})

    enabled: bool = True
    """Compute these signals and apply these rules."""
    max_dup_para_frac: float | None = 0.3
    """Drop (`gopher_dup_para_frac`) when more than this share of paragraphs (split at blank lines) are
    repeats of an earlier paragraph."""
    max_dup_para_char_frac: float | None = 0.2
    """Drop (`gopher_dup_para_char_frac`) when repeated paragraphs hold more than this share of characters."""
    max_dup_line_frac: float | None = 0.3
    """Drop (`gopher_dup_line_frac`) when more than this share of lines are repeats of an earlier line."""
    max_dup_line_char_frac: float | None = 0.2
    """Drop (`gopher_dup_line_char_frac`) when repeated lines hold more than this share of characters."""
    max_top_2_gram_frac: float | None = 0.20
    """Drop (`gopher_top_2_gram`) when the commonest word 2-gram, times its count, exceeds this share of
    the text."""
    max_top_3_gram_frac: float | None = 0.18
    """Drop (`gopher_top_3_gram`) when the commonest word 3-gram, times its count, exceeds this share of
    the text."""
    max_top_4_gram_frac: float | None = 0.16
    """Drop (`gopher_top_4_gram`) when the commonest word 4-gram, times its count, exceeds this share of
    the text."""
    max_dup_5_gram_frac: float | None = 0.15
    """Drop (`gopher_dup_5_gram`) when repeated word 5-grams cover more than this share of characters."""
    max_dup_6_gram_frac: float | None = 0.14
    """Drop (`gopher_dup_6_gram`) when repeated word 6-grams cover more than this share of characters."""
    max_dup_7_gram_frac: float | None = 0.13
    """Drop (`gopher_dup_7_gram`) when repeated word 7-grams cover more than this share of characters."""
    max_dup_8_gram_frac: float | None = 0.12
    """Drop (`gopher_dup_8_gram`) when repeated word 8-grams cover more than this share of characters."""
    max_dup_9_gram_frac: float | None = 0.11
    """Drop (`gopher_dup_9_gram`) when repeated word 9-grams cover more than this share of characters."""
    max_dup_10_gram_frac: float | None = 0.10
    """Drop (`gopher_dup_10_gram`) when repeated word 10-grams cover more than this share of characters."""


class GopherQualityConfig(BaseModel):
    """Gopher's quality rules (Rae et al. 2021): length, word shape, symbols, bullets, stop words."""

    model_config = _MODEL
    SCORING: ClassVar[frozenset[str]] = frozenset({"enabled", "stop_words", "bullet_prefixes"})

    enabled: bool = True
    """Compute these signals and apply these rules."""
    min_doc_words: int | None = 50
    """Drop (`gopher_short_doc`) documents with fewer words (punctuation-only tokens not counted)."""
    max_doc_words: int | None = 100_000
    """Drop (`gopher_long_doc`) documents with more words."""
    min_avg_word_length: float | None = 3
    """Drop (`gopher_short_words`) when the mean word length in characters is below this."""
    max_avg_word_length: float | None = 10
    """Drop (`gopher_long_words`) when the mean word length in characters is above this."""
    max_hash_word_ratio: float | None = 0.1
    """Drop (`gopher_too_many_hashes`) when `#` characters per token exceed this."""
    max_ellipsis_word_ratio: float | None = 0.1
    """Drop (`gopher_too_many_ellipsis`) when ellipses (`...` or `…`) per token exceed this."""
    max_bullet_lines_ratio: float | None = 0.9
    """Drop (`gopher_too_many_bullets`) when more than this share of lines start with a bullet."""
    max_ellipsis_lines_ratio: float | None = 0.3
    """Drop (`gopher_too_many_end_ellipsis`) when more than this share of lines end with an ellipsis."""
    min_alpha_words_ratio: float | None = 0.8
    """Drop (`gopher_few_alpha_words`) when fewer than this share of tokens (punctuation tokens included, as
    in datatrove) contain a letter."""
    min_stop_words: int | None = 2
    """Drop (`gopher_few_stop_words`) when fewer than this many distinct stop words occur."""
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")
    """The stop words counted by `min_stop_words` (matched case-sensitively, as in datatrove). English by
    default: set a list per language in the run config for other languages."""
    bullet_prefixes: tuple[str, ...] = ("•", "-")
    """A line whose first non-blank character is one of these counts as a bullet line."""


class C4Config(BaseModel):
    """C4's cleaning (Raffel et al. 2020): line rules edit the text, document rules drop it."""

    model_config = _MODEL
    SCORING: ClassVar[frozenset[str]] = frozenset(
        {
            "enabled",
            "remove_citations",
            "filter_no_terminal_punct",
            "min_words_per_line",
            "max_word_length",
            "filter_javascript",
            "filter_policy",
            "policy_substrings",
        }
    )

    enabled: bool = True
    """Clean lines and apply these rules (when off, the text is left as it is)."""
    remove_citations: bool = True
    """Line rule: delete Wikipedia-style citation marks such as `[1]`, `[edit]`, `[citation needed]`."""
    filter_no_terminal_punct: bool = True
    """Line rule: remove lines that do not end in `.`, `?`, `!`, `"` or `'` (or that end in `...`)."""
    min_words_per_line: int | None = 3
    """Line rule: remove lines with fewer whitespace-separated words."""
    max_word_length: int | None = 1000
    """Line rule: remove lines containing a word longer than this many characters."""
    filter_javascript: bool = True
    """Line rule: remove lines that mention "javascript"."""
    filter_policy: bool = True
    """Line rule: remove lines containing one of `policy_substrings` (cookie and terms-of-use boilerplate)."""
    policy_substrings: tuple[str, ...] = (
        "terms of use",
        "privacy policy",
        "cookie policy",
        "uses cookies",
        "use of cookies",
        "use cookies",
    )
    """Lower-case phrases that mark a boilerplate line for `filter_policy`."""
    filter_lorem_ipsum: bool = True
    """Drop (`c4_lorem_ipsum`) documents in which a kept line contains "lorem ipsum"."""
    filter_curly_bracket: bool = True
    """Drop (`c4_curly_bracket`) documents in which a kept line contains `{` (code, templates)."""
    min_num_sentences: int | None = 5
    """Drop (`c4_too_few_sentences`) documents with fewer sentences left after line cleaning."""


class FineWebConfig(BaseModel):
    """FineWeb's own line rules (Penedo et al. 2024), computed on the C4-cleaned text."""

    model_config = _MODEL
    SCORING: ClassVar[frozenset[str]] = frozenset({"enabled", "stop_chars", "short_line_length"})

    enabled: bool = True
    """Compute these signals and apply these rules. Documents without a non-blank line are dropped
    (`fineweb_empty`)."""
    min_line_punct_ratio: float | None = 0.12
    """Drop (`fineweb_line_punct`) when fewer than this share of non-blank lines end in sentence-terminal
    punctuation."""
    line_punct_exclude_zero: bool = False
    """Do not apply `min_line_punct_ratio` to documents where no line at all ends in punctuation."""
    stop_chars: tuple[str, ...] | None = None
    """Characters that count as line-ending punctuation; None means every Unicode sentence terminal
    (`.`, `!`, `?`, `。`, `।`, `؟`, ...)."""
    max_short_line_ratio: float | None = 0.67
    """Drop (`fineweb_short_lines`) when more than this share of non-blank lines are short."""
    short_line_length: int = 30
    """A line of at most this many characters is short."""
    max_char_dup_ratio: float | None = 0.01
    """Drop (`fineweb_char_dup`) when characters in repeated lines exceed this share of all characters."""
    max_newline_ratio: float | None = 0.3
    """Drop (`fineweb_list_ratio`) when newlines per token exceed this (lists, menus)."""


class BadWordsConfig(BaseModel):
    """Share of the text made of words from a per-language list of obscene or offensive words."""

    model_config = _MODEL
    SCORING: ClassVar[frozenset[str]] = frozenset(
        {"enabled", "word_lists", "use_package_lists", "unspaced_languages"}
    )

    enabled: bool = True
    """Compute this signal and apply this rule. Languages without a list are never dropped by it (the
    signal `badwords.has_list` is 0 for them)."""
    max_fraction: float | None = 0.01
    """Drop (`badwords`) when listed words make up more than this share of the word characters."""
    word_lists: dict[str, str] = Field(default_factory=dict)
    """Word list per language code (`{"en": "/path/en.txt"}`): a text file with one word or phrase per
    line (`#` comments allowed), or a JSON file `{"words": [...]}`. Overrides the packaged list; a missing
    file is an error when a document of that language is scored."""
    use_package_lists: bool = True
    """For languages not in `word_lists`, use the list shipped by the `glin-profanity` package (24
    languages, LDNOOBW-derived, MIT licence), when it is installed."""
    unspaced_languages: tuple[str, ...] = ("ja", "zh", "th")
    """Languages written without spaces between words: their entries match anywhere in the text instead
    of as whole words."""
