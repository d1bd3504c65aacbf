"""Bad-words signal: the share of a document's word characters that belong to listed obscene words.

Lists come per language from `BadWordsConfig.word_lists` (a path per language) or, by default, from the
`glin-profanity` package's dictionaries (LDNOOBW-derived). Entries are matched as whole tokens of our
word splitter (phrases as token sequences), case-insensitively; for languages written without spaces
(Japanese, Chinese, Thai) they match anywhere. A fraction, not C4's "any bad word drops the page": one
listed word in a long novel is no reason to drop it.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tasks.heur_config import BadWordsConfig
from tasks.heur_text import split_words, word_stats

# glin-profanity names its dictionaries by language name; ISO 639-1 codes map onto them.
_PACKAGE_FILES = {
    "ar": "arabic", "cs": "czech", "da": "danish", "de": "german", "en": "english", "eo": "esperanto",
    "es": "spanish", "fa": "persian", "fi": "finnish", "fr": "french", "hi": "hindi", "hu": "hungarian",
    "it": "italian", "ja": "japanese", "ko": "korean", "nl": "dutch", "no": "norwegian", "pl": "polish",
    "pt": "portuguese", "ru": "russian", "sv": "swedish", "th": "thai", "tr": "turkish", "zh": "chinese",
}  # fmt: skip


@dataclass(frozen=True)
class WordList:
    """A loaded word list, ready to match: single tokens, multi-token phrases, or raw substrings."""

    words: frozenset[str]
    phrases: dict[str, tuple[tuple[str, ...], ...]]
    pattern: re.Pattern[str] | None


@lru_cache(maxsize=64)
def package_list_path(lang: str) -> Path | None:
    """The glin-profanity dictionary for a language, if the package is installed and has one."""
    name = _PACKAGE_FILES.get(lang)
    spec = importlib.util.find_spec("glin_profanity") if name else None  # locate, never import
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "dictionaries" / f"{name}.json"
    return path if path.is_file() else None


def read_entries(path: Path) -> list[str]:
    """Lower-cased entries of a word list: JSON `{"words": [...]}` or one entry per line (`#` comments)."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        items = json.loads(raw)["words"]
    else:
        items = [line for line in raw.splitlines() if not line.lstrip().startswith("#")]
    return sorted({item.strip().lower() for item in items if item.strip()})


@lru_cache(maxsize=64)
def load_word_list(path: str, unspaced: bool) -> WordList:
    """Parse a list file once per process (paths are config values, so the cache stays small)."""
    entries = read_entries(Path(path))
    if unspaced:
        # Longest first, so a phrase wins over a word inside it.
        alternatives = "|".join(re.escape(e) for e in sorted(entries, key=len, reverse=True))
        return WordList(frozenset(), {}, re.compile(alternatives) if alternatives else None)
    words: set[str] = set()
    phrases: dict[str, list[tuple[str, ...]]] = {}
    for entry in entries:
        tokens = tuple(split_words(entry))
        if len(tokens) == 1:
            words.add(tokens[0])
        elif tokens:
            phrases.setdefault(tokens[0], []).append(tokens)
    longest_first = {k: tuple(sorted(v, key=len, reverse=True)) for k, v in phrases.items()}
    return WordList(frozenset(words), longest_first, None)


def list_path(lang: str, cfg: BadWordsConfig) -> Path | None:
    """The word list used for a language: the configured one, else the packaged one, else none."""
    if lang in cfg.word_lists:
        return Path(cfg.word_lists[lang])
    return package_list_path(lang) if cfg.use_package_lists else None


def _matched_chars(tokens: list[str], wl: WordList) -> tuple[int, int]:
    """(matches, characters matched) of list entries among lower-cased tokens."""
    matches = chars = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        step = 1
        if token in wl.words:
            matches += 1
            chars += len(token)
        elif token in wl.phrases:
            for phrase in wl.phrases[token]:
                if tuple(tokens[i : i + len(phrase)]) == phrase:
                    matches += 1
                    chars += sum(map(len, phrase))
                    step = len(phrase)
                    break
        i += step
    return matches, chars


def badword_signals(text: str, words: list[str], lang: str, cfg: BadWordsConfig) -> dict[str, float]:
    """Matches and the matched share of word characters; `has_list` 0 when the language has no list."""
    path = list_path(lang, cfg)
    if path is None:
        return {"badwords.has_list": 0.0, "badwords.matches": 0.0, "badwords.fraction": 0.0}
    wl = load_word_list(str(path), lang in cfg.unspaced_languages)
    word_chars = word_stats(words)[1]
    if wl.pattern is not None:
        found = wl.pattern.findall(text.lower())
        matches, chars = len(found), sum(map(len, found))
    else:
        matches, chars = _matched_chars(" ".join(words).lower().split(" ") if words else [], wl)
    return {
        "badwords.has_list": 1.0,
        "badwords.matches": float(matches),
        "badwords.fraction": chars / word_chars if word_chars else 0.0,
    }
