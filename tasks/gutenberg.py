"""Strip Project Gutenberg license headers and footers from plain text, keeping the header's facts."""

from __future__ import annotations

import re
from typing import Any

# Marker lines, modern ("*** START OF THE PROJECT GUTENBERG EBOOK X ***", also "***START OF THIS ...") and
# old (the small-print license ending "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*...").
_PG_START = re.compile(
    r"^\s*(\*{2,}\s*START\s+OF\s+(THE|THIS)\s+PROJECT\s+GUTENBERG|\*END\*\s*THE\s+SMALL\s+PRINT)", re.I
)
# The footer starts at "*** END OF THE PROJECT GUTENBERG EBOOK X ***" or at the "End of the Project
# Gutenberg EBook of X" line (German: "Ende dieses Project Gutenberg ...") that usually precedes it.
_PG_END_STARRED = re.compile(r"^\s*\*{2,}\s*END\s+OF\s+(THE\s+|THIS\s+)?PROJECT\s+GUTENBERG", re.I)
_PG_END = re.compile(
    r"^\s*(\**\s*END\s+OF\s+(THE\s+|THIS\s+)?PROJECT\s+GUTENBERG|ENDE?\s+DIESES\s+PROJE[CK]TS?\s+GUTENBERG)",
    re.I,
)
# Producer/transcriber credits between the START marker and the book proper.
_PG_CREDIT = re.compile(
    r"^(produced\s+by|transcribed\s+(from|by)|e-?text\s+(prepared|produced)\s+by|this\s+e-?(text|book)\s+was"
    r"\s+(prepared|produced)|prepared\s+by|scanned\s+by|copyright\s+\(c\))",
    re.I,
)
_PG_FIELDS = frozenset({"title", "author", "translator", "language"})
_PG_EBOOK = re.compile(r"\[E-?(?:Book|Text)\s*#(\d+)\]", re.I)


def _first_match(
    lines: list[str], pattern: re.Pattern[str], start: int = 0, stop: int | None = None
) -> int | None:
    """Index of the first line in lines[start:stop] that matches."""
    stop = len(lines) if stop is None else stop
    return next((i for i in range(start, stop) if pattern.match(lines[i])), None)


def _header_fields(header: list[str]) -> dict[str, str]:
    """Title/Author/Translator/Language fields (with indented continuation lines) and the ebook number."""
    fields: dict[str, str] = {}
    for i, line in enumerate(header):
        key, sep, value = line.partition(":")
        name = key.strip().lower()
        if not sep or name not in _PG_FIELDS or name in fields or line[:1].isspace():
            continue
        parts = [value.strip()]
        for more in header[i + 1 :]:
            if not more[:1].isspace() or not more.strip():
                break
            parts.append(more.strip())
        fields[name] = " ".join(p for p in parts if p)
    if m := _PG_EBOOK.search("\n".join(header)):
        fields["ebook"] = m[1]
    return {k: v for k, v in fields.items() if v}


def _strip_credits(body: list[str], max_paragraphs: int = 3) -> tuple[list[str], list[str]]:
    """Split producer credit paragraphs off the top of the body: (rest, credits)."""
    credits: list[str] = []
    i = 0
    for _ in range(max_paragraphs):
        while i < len(body) and not body[i].strip():
            i += 1
        end = next((j for j in range(i, len(body)) if not body[j].strip()), len(body))
        if i >= len(body) or not _PG_CREDIT.match(body[i].strip()):
            break
        credits.append(" ".join(line.strip() for line in body[i:end]))
        i = end
    return body[i:], credits


def strip_gutenberg(text: str) -> tuple[str, dict[str, Any] | None]:
    """Remove a Project Gutenberg header/footer: (body, facts from the header), or (text, None) if none."""
    lines = text.split("\n")
    start = _first_match(lines, _PG_START)
    # Without a START marker only a starred END line is strong enough evidence of a footer.
    end = (
        _first_match(lines, _PG_END, start + 1) if start is not None else _first_match(lines, _PG_END_STARRED)
    )
    if start is None and end is None:
        return text, None
    if start is not None:
        # Old files carry both the small print and a START line; the book follows the last of them.
        while (later := _first_match(lines, _PG_START, start + 1, end)) is not None:
            start = later
    header = lines[:start] if start is not None else []
    body, credits = _strip_credits(lines[(start + 1 if start is not None else 0) : end])
    facts: dict[str, Any] = {"header_stripped": start is not None, "footer_stripped": end is not None}
    facts |= _header_fields(header)
    if credits:
        facts["credits"] = credits
    return "\n".join(body), facts
