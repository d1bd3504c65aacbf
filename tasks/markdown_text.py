"""Markdown to plain text: YAML/TOML front matter split off, markup stripped, title found."""

from __future__ import annotations

import html
import json
import math
import re
import tomllib
from datetime import date, datetime, time
from functools import lru_cache
from typing import Any

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

_FRONT = re.compile(r"\A(---|\+\+\+)[ \t]*\n(?:(.*?)\n)?(---|\.\.\.|\+\+\+)[ \t]*(?:\n|\Z)", re.DOTALL)
_HTML_DROP = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]*>")


def _jsonable(value: Any) -> Any:
    """A JSON-serializable copy of a YAML/TOML value (dates as ISO strings, keys as strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):  # YAML !!set: sort, as set order changes between runs
        return sorted((_jsonable(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, date | datetime | time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN/Infinity are not JSON
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


def split_front_matter(source: str) -> tuple[dict[str, Any] | None, str, str | None]:
    """Split off a leading YAML (`---`) or TOML (`+++`) block: (data, body, error); bad blocks stay."""
    m = _FRONT.match(source)
    if not m or (m[1] == "+++") != (m[3] == "+++"):
        return None, source, None
    try:
        data = tomllib.loads(m[2] or "") if m[1] == "+++" else yaml.safe_load(m[2] or "")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        return None, source, f"{type(exc).__name__}: {exc}"[:500]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        # "---\nsome words\n---" is a thematic break around a paragraph, not metadata.
        return None, source, f"front matter is a {type(data).__name__}, not a mapping; kept as text"
    return _jsonable(data), source[m.end() :], None


@lru_cache(maxsize=1)
def _markdown_parser() -> MarkdownIt:
    """CommonMark plus GitHub tables and strikethrough."""
    return MarkdownIt("commonmark").enable(["table", "strikethrough"])


def _inline_text(token: Token) -> str:
    """Plain text of an inline token: text and code kept, images as alt text, HTML tags dropped."""
    out = []
    for child in token.children or []:
        if child.type in ("text", "code_inline", "image"):
            out.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            out.append("\n")
    return "".join(out)


def _html_text(source: str) -> str:
    """Text of an HTML block: comments, scripts and styles removed, tags stripped, entities decoded."""
    text = html.unescape(_HTML_TAG.sub("", _HTML_DROP.sub("", source)))
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def _markdown_blocks(tokens: list[Token]) -> tuple[list[tuple[str, str | None]], str | None]:
    """(text, group) blocks of a token stream plus the first H1; blocks of one group join with one newline."""
    blocks: list[tuple[str, str | None]] = []
    cells: list[str] = []
    h1 = None
    for prev, tok in zip([None, *tokens], tokens, strict=False):
        if tok.type == "inline" and prev is not None and prev.type in ("th_open", "td_open"):
            cells.append(_inline_text(tok).replace("\n", " "))
        elif tok.type == "inline":
            text = _inline_text(tok)
            tight = prev is not None and prev.type == "paragraph_open" and prev.hidden
            blocks.append((text, "list" if tight else None))
            if h1 is None and prev is not None and prev.type == "heading_open" and prev.tag == "h1":
                h1 = text.strip() or None
        elif tok.type == "tr_close":
            blocks.append(("\t".join(cells), "table"))
            cells = []
        elif tok.type in ("fence", "code_block"):
            blocks.append((tok.content.rstrip("\n"), None))
        elif tok.type == "html_block":
            blocks.append((_html_text(tok.content), None))
    return blocks, h1


def _join_blocks(blocks: list[tuple[str, str | None]]) -> str:
    """Blocks separated by blank lines, except rows of a table or items of a tight list."""
    out: list[str] = []
    last_group: str | None = None
    for text, group in blocks:
        if not text.strip():
            continue
        if out:
            out.append("\n" if group is not None and group == last_group else "\n\n")
        out.append(text)
        last_group = group
    return "".join(out)


def markdown_to_text(source: str) -> tuple[str, str | None, dict[str, Any]]:
    """Markdown to plain text: (text, title, meta), the title from front matter or else the first H1."""
    front, body, error = split_front_matter(source)
    blocks, h1 = _markdown_blocks(_markdown_parser().parse(body))
    meta: dict[str, Any] = {}
    if front is not None:
        meta["front_matter"] = front
    if error:
        meta["front_matter_error"] = error
    title = (front or {}).get("title")
    if not isinstance(title, str | int | float) or isinstance(title, bool):
        title = None  # a YAML `title: 1984` is a fine title, `title: yes` is not
    title = title if title is None else clean_title(title)
    return _join_blocks(blocks), title or h1, meta


def clean_title(value: Any) -> str | None:
    """A one-line title without BOMs or runs of whitespace."""
    return " ".join(str(value).replace("\ufeff", " ").split()) or None
