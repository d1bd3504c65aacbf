"""Text primitives shared by the heuristic filters: a fast word splitter, token classes, sentence counts.

datatrove splits words with spaCy's rule-based tokenizer (`spacy.blank(lang)`), and Gopher's ratios count
its punctuation tokens as words, so the splitter decides several ratios. Ours is one compiled regular
expression that follows spaCy's scheme: a whitespace-separated chunk loses the opening punctuation at its
start and the closing punctuation at its end, one mark per token; what is left splits only at a few
"infixes" (letter-letter hyphens, "a,b", "a/b", "x=y", "lower.Upper", "1+1", "..."); everything else stays
glued ("/usr", "--help", "print(x", "1,000", "3.14", "Python?¶"). Initials and common abbreviations keep
their period ("U.S.", "Mr."), English clitics split off ("do", "n't"), URLs stay whole. docs/heuristics.md
measures what the remaining differences cost in keep/drop agreement.
"""

from __future__ import annotations

import regex

# Split off a chunk's start, one mark per token: brackets, quotes, CJK/Arabic/Devanagari punctuation,
# symbols (So) and currency signs, and "§ % = — –" ("+" too, unless a number follows).
_EDGE = r"\p{Ps}\p{Pe}\p{Pi}\p{Pf}\p{So}<>,:;!?¿¡_#*&·'\"`´。？！，、；：～।،۔؛٪…%—–"
_OPEN = _EDGE + r"\p{Sc}§="
# Split off a chunk's end: the same marks, plus the period.
_CLOSE = _EDGE + "."
_END = rf"(?=[\s{_CLOSE}]|$)"
# Longer whitespace-free runs are split in pieces this long (the regex engine's memory grows with them).
_MAX_CHUNK = 10_000
# Closing marks that always split off a plain word (the period has exceptions: "A.", "Mr.").
_SIMPLE_CLOSE = frozenset(',;:!?)]}"”’»')
# Abbreviations that keep their period, as in spaCy's English exceptions (case-sensitive there too).
_ABBREVIATIONS = (
    "Mr Mrs Ms Messrs Dr Prof Rev Gen Gov Sen Rep Adm St Mt Jr Sr Inc Ltd Co Corp Bros vs co Ph.D "
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec "
    "Ala Ariz Ark Calif Colo Conn Del Fla Ga Ill Ind Kan Kans Ky La Md Mass Mich Minn Miss Mo Mont "
    "Neb Nebr Nev Okla Ore Pa Tenn Va Wash Wis"
)
# Words spaCy's English exceptions split without an apostrophe (the fast path must not keep them whole).
_CONTRACTIONS = frozenset({"cannot", "Cannot", "gonna", "Gonna", "gotta", "Gotta"})
_NOT_PLAIN = frozenset(_ABBREVIATIONS.split()) | _CONTRACTIONS
_ABBREVIATION = "|".join(regex.escape(a) for a in _ABBREVIATIONS.split())
# Positions where a chunk splits inside ("infixes"), checked before every character of a word.
_INFIX = rf"""(?:
    \.\. | … | \p{{So}}
    | (?<=\d)[-+*^](?=[\d-])                          # 1+1, 10-15
    | (?<=[\p{{Ll}}'"”“`‘´’])\.(?=[\p{{Lu}}'"”“`‘´’])   # end.Next (a missing space)
    | (?<=\p{{L}}),(?=\p{{L}})                        # a,b
    | (?<=[\p{{L}}\d])[-–—~]+(?=\p{{L}})              # well-known, state-of-the-art
    | (?<=[\p{{L}}\d])[:<>=/](?=\p{{L}})              # a/b, x=y
    | (?<=\p{{L}})n['’]t{_END}                        # do|n't
    | (?<=\w)['’](?:s|m|d|re|ve|ll){_END}             # it|'s, we|'re
)"""
_TOKEN = regex.compile(
    rf"""
    (?<![^\s{_OPEN}])                                 # a URL or e-mail address, whole
      (?:[\w+.-]{{2,}}://)?(?:[\w.+-]+@)?(?:[\p{{L}}\d][\p{{L}}\d_-]*\.)+\p{{Ll}}{{2,63}}
      (?::\d{{2,5}})?(?:[/?#]\S*(?<![{_CLOSE}]))?(?=[{_CLOSE}]*(?:\s|$))  # up to the chunk's closing marks
    | (?<![^\s{_OPEN}])(?:[A-Za-z]\.)+{_END}          # initials and dotted abbreviations: "U.S.", "e.g."
    | (?<![^\s{_OPEN}])(?:{_ABBREVIATION})\.{_END}
    | n['’]t{_END} | ['’](?:s|m|d|re|ve|ll){_END}     # clitics
    | (?<![^\s{_OPEN}])(?:[Cc]an(?=not{_END})|[Gg]on(?=na{_END})|[Gg]ot(?=ta{_END}))  # can|not, gon|na
    | ''                                              # a doubled apostrophe used as a quote mark
    | \.{{2,}} | …                                    # ellipses
    | (?<=[\p{{L}}\d])[-–—~]{{1,3}}(?=\p{{L}})         # an infix hyphen run
    | (?!{_INFIX})(?!\+(?!\d))[^\s{_OPEN}]            # a word: any first character but opening marks,
      (?:[^\s{_CLOSE}\-+^~=/n]++                      #   then characters that never start an infix,
        | (?!{_INFIX})(?:[\-+^~=/n]                   #   others unless they start one here,
          | (?>[{_CLOSE}]+)(?=[^\s{_CLOSE}])))*       #   closing marks only when the chunk goes on
    | \S                                              # any other mark, alone
    """,
    regex.VERBOSE | regex.VERSION0,
)
# A token without a letter, mark or digit is a symbol (Gopher's "non-symbol words" exclude them).
_WORD_TOKEN = regex.compile(r"\S*[\p{L}\p{M}\p{N}]\S*")
_ALPHA_TOKEN = regex.compile(r"\S*\p{L}\S*")
_PUNCT_ONLY = regex.compile(r"\p{P}+")
# Unicode's Sentence_Terminal characters: what both spaCy's sentencizer and FineWeb treat as sentence ends.
_TERMINAL = regex.compile(r"\p{Sentence_Terminal}")
# Control characters other than tab/newlines/form feed, U+FFFD and lone surrogates: decoded binary junk.
_JUNK = regex.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd\ud800-\udfff]")


def split_words(text: str) -> list[str]:
    """The text's word tokens, punctuation tokens included (spaCy-like, whitespace dropped)."""
    # Chunk by chunk: the expression never looks across whitespace, so this gives the same tokens, and
    # most chunks are a plain word, or a word and one closing mark, which need no regular expression.
    tokens: list[str] = []
    append, extend, findall = tokens.append, tokens.extend, _TOKEN.findall
    for chunk in text.split():
        if chunk.isalnum() and chunk not in _CONTRACTIONS:
            append(chunk)
        elif chunk[-1] in _SIMPLE_CLOSE and chunk[:-1].isalnum() and chunk[:-1] not in _CONTRACTIONS:
            append(chunk[:-1])
            append(chunk[-1])
        elif chunk[-1] == "." and chunk[:-1].isalnum() and len(chunk) > 2 and chunk[:-1] not in _NOT_PLAIN:
            append(chunk[:-1])
            append(".")
        elif len(chunk) <= _MAX_CHUNK:
            extend(findall(chunk))
        else:  # binary junk or a base64 blob: bound the regex engine's memory, tokens at cuts may differ
            for start in range(0, len(chunk), _MAX_CHUNK):
                extend(findall(chunk[start : start + _MAX_CHUNK]))
    return tokens


def word_stats(tokens: list[str]) -> tuple[int, int]:
    """(count, total characters) of the tokens that hold a letter, mark or digit: words, not symbols."""
    # One regex pass over the joined tokens (they never contain whitespace) beats a test per token, and
    # subn() counts without building a list of matches.
    joined = " ".join(tokens)
    rest, count = _WORD_TOKEN.subn("", joined)
    return count, len(joined) - len(rest)


def count_alpha(tokens: list[str]) -> int:
    """How many tokens contain at least one letter."""
    return _ALPHA_TOKEN.subn("", " ".join(tokens))[1]


def count_sentences(tokens: list[str]) -> int:
    """Sentences in a run of tokens, by the rule of spaCy's sentencizer (as datatrove counts them)."""
    # A new sentence starts at the first non-punctuation token after a sentence-terminal token.
    sentences = 1
    seen_terminal = False
    for token in tokens:
        if len(token) == 1 and _TERMINAL.match(token):
            seen_terminal = True
        elif seen_terminal and not _PUNCT_ONLY.fullmatch(token):
            sentences += 1
            seen_terminal = False
    return sentences


def sanity_signals(text: str) -> dict[str, float]:
    """Whether the text is empty (or only whitespace) and its share of junk characters."""
    junk = len(_JUNK.findall(text))
    return {
        "sanity.chars": float(len(text)),
        "sanity.empty": float(not text.strip()),
        "sanity.control_frac": junk / len(text) if text else 0.0,
    }
