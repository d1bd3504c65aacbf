"""HTML ingestion: decode bytes to text without mojibake, extract the main content, build a Document."""

from __future__ import annotations

import codecs
import html
import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from storage.schemas import Document, Drop, new_document


class HtmlConfig(BaseModel):
    """How HTML pages become documents."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    extractor: Literal["trafilatura", "resiliparse"] = "trafilatura"
    """Main-content extractor: trafilatura (better boilerplate removal) or resiliparse (much faster)."""
    min_text_chars: int = 50
    """Pages whose extracted main text is shorter than this many characters are dropped."""
    max_bytes: int = 20_000_000
    """Pages larger than this many bytes are dropped unread (protects memory and time)."""
    include_tables: bool = True
    """Keep the text of <table> elements in the main content."""
    include_comments: bool = False
    """Append reader comments (blog/news comment sections) to the main text."""
    favor: Literal["balanced", "precision", "recall"] = "balanced"
    """trafilatura only: prefer less but cleaner text (precision) or more text when unsure (recall)."""
    fast: bool = False
    """trafilatura only: skip its fallback extractors (~1.5x faster, slightly lower recall)."""


_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_CT_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([\w.:+-]+)""", re.I)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:+-]+)""", re.I)
# The HTML spec's prescan looks at the first 1024 bytes; real pages often put the tag later.
_PRESCAN_BYTES = 4096
# Share of non-ASCII characters that may be broken before we stop believing bytes are UTF-8.
_MAX_BROKEN_UTF8 = 0.05
# Bytes given to the encoding detectors: plenty for a verdict, bounded time on huge pages.
_DETECT_BYTES = 131_072
_SUPERSETS = {
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "big5": "big5hkscs",
}


def _html5_label(label: str) -> str | None:
    """Python codec for an encoding label, WHATWG-mapped (latin-1 means cp1252), or None if unknown."""
    from resiliparse.parse.encoding import map_encoding_to_html5

    label = label.strip().lower()
    # Labels outside the WHATWG table (cp949, x-mac-*) are still worth trying as Python codecs.
    name = map_encoding_to_html5(label, fallback_utf8=False) or label
    try:
        name = codecs.lookup(name).name
    except LookupError:
        return None
    # Browsers decode these labels with the vendor superset; so must we, or extra characters break.
    return _SUPERSETS.get(name, name)


def _try_decode(raw: bytes, encoding: str) -> str | None:
    """Strict decode, or None when the bytes are not valid in that encoding."""
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def _declared(raw: bytes, content_type: str | None) -> list[str]:
    """Encodings the page declares, in priority order: HTTP Content-Type, then <meta>."""
    out = []
    if content_type and (m := _CT_CHARSET.search(content_type)) and (enc := _html5_label(m.group(1))):
        out.append(enc)
    if (m := _META_CHARSET.search(raw[:_PRESCAN_BYTES])) and (enc := _html5_label(m.group(1).decode())):
        # A <meta> can never truthfully say UTF-16: the bytes were ASCII-readable to find it.
        out.append("utf-8" if enc.startswith("utf-16") else enc)
    return out


def _detect(raw: bytes) -> tuple[str, str]:
    """Guess the encoding of undeclared non-UTF-8 bytes: uchardet, then charset-normalizer, then cp1252."""
    from charset_normalizer import from_bytes
    from resiliparse.parse.encoding import detect_encoding

    # On 105 real pages re-encoded into 14 legacy code pages, uchardet led to the right text for 100,
    # charset-normalizer alone for 44 (markup misleads it), so it only gets a say when uchardet fails.
    guess = detect_encoding(raw, max_len=_DETECT_BYTES, html5_compatible=False)
    if guess and (enc := _html5_label(guess)) and (text := _try_decode(raw, enc)) is not None:
        return text, enc
    best = from_bytes(raw[:_DETECT_BYTES]).best()
    if best is not None and (enc := _html5_label(best.encoding)) and (text := _try_decode(raw, enc)):
        return text, enc
    return raw.decode("cp1252", errors="replace"), "cp1252"


def _utf8_lenient(raw: bytes) -> str | None:
    """UTF-8 text if the bytes are UTF-8 with at most a few broken sequences, else None."""
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if not bad:
        return text
    # Real UTF-8 pages sometimes carry a stray byte (a pasted cp1252 quote, a cut multi-byte char);
    # mis-decoding the whole page as a legacy code page would turn every accent into mojibake.
    # Legacy-encoded text read as UTF-8 is instead almost nothing but replacement characters.
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    return text if bad <= _MAX_BROKEN_UTF8 * non_ascii else None


def decode_html(raw: bytes, content_type: str | None = None) -> tuple[str, str]:
    """Decode HTML bytes to text: BOM, then HTTP charset, then <meta charset>, then a detector."""
    for bom, enc in _BOMS:
        if raw.startswith(bom) and (text := _try_decode(raw[len(bom) :], enc)) is not None:
            return text, enc
    has_non_ascii = not raw.isascii()
    for enc in _declared(raw, content_type):
        text = _utf8_lenient(raw) if enc == "utf-8" else _try_decode(raw, enc)
        if text is None:
            continue  # the declaration is wrong for these bytes; fall through to the next clue
        if has_non_ascii and enc == "cp1252" and (utf8 := _try_decode(raw, "utf-8")) is not None:
            # Pages saved as UTF-8 but labelled latin-1 are common; valid multi-byte UTF-8 is
            # vanishingly unlikely in genuine cp1252 text, so trust the bytes over the label.
            return utf8, "utf-8"
        return text, enc
    if not has_non_ascii:
        return raw.decode("ascii"), "ascii"
    if (text := _utf8_lenient(raw)) is not None:
        return text, "utf-8"
    return _detect(raw)


_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG", "image/png"),
    (b"GIF8", "image/gif"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
    (b"BZh", "application/x-bzip2"),
    (b"\x7fELF", "application/x-elf"),
    (b"RIFF", "application/riff"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"wOFF", "font/woff"),
    (b"wOF2", "font/woff2"),
)


def _binary_kind(raw: bytes) -> str | None:
    """A MIME type if the bytes are clearly not text (magic number or control bytes), else None."""
    if any(raw.startswith(bom) for bom, _ in _BOMS):
        return None  # UTF-16/32 text legitimately contains NUL bytes
    for magic, mime in _BINARY_MAGIC:
        if raw.startswith(magic):
            return mime
    head = raw[:4096]
    controls = sum(1 for b in head if b < 9 or 13 < b < 32)
    # Real HTML has next to no C0 control bytes; binaries have many.
    return "application/octet-stream" if head and controls / len(head) > 0.05 else None


_HEAD_END = re.compile(r"</head\s*>|<body[\s>]", re.I)
# A tag's body: quoted values may hold "<" and ">", an unquoted "<" ends it. Possessive throughout, so a tag
# that never closes fails once, at the next "<", instead of every "<meta" retrying to the end of the head
# (40,000 unclosed "<meta" cost 1 s before, quadratic in the head's length).
_TAG = re.compile(r"""<(title|link|meta|html)\b((?:[^<>"']++|"[^"]*+"|'[^']*+'|["'])*+)>""", re.I)
_TITLE_END = re.compile(r"</title\s*>", re.I)
# A name starts only where no name character precedes it, and is never given back (possessive): without
# both, a 40,000-character attribute name without "=" is retried from every position inside it, O(n^2).
_ATTR = re.compile(r"""(?<![-\w:.])([a-zA-Z_:][-\w:.]*+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
# The head of real pages fits well within this; bounding it keeps a missing </head> cheap.
_HEAD_MAX_CHARS = 200_000


def _attrs(tag_body: str) -> dict[str, str]:
    """Attributes of one start tag, names lower-cased, values unescaped and whitespace-collapsed."""
    return {
        m.group(1).lower(): " ".join(html.unescape(m.group(2) or m.group(3) or m.group(4) or "").split())
        for m in _ATTR.finditer(tag_body)
    }


def _page_meta(text: str) -> dict[str, str]:
    """Title, canonical URL, og:url/og:title and declared language, read from the page head."""
    # A regex scan of the head is ~50x faster than walking a parsed DOM from Python, and head
    # markup (title/link/meta) is simple enough that a parser buys nothing here.
    end = _HEAD_END.search(text, 0, _HEAD_MAX_CHARS)
    head = text[: end.start() if end else _HEAD_MAX_CHARS]
    out: dict[str, str] = {}
    titled = False
    for m in _TAG.finditer(head):
        name, attrs = m.group(1).lower(), _attrs(m.group(2))
        if name == "title" and not titled:
            # Only the first <title> counts (as in browsers): an unclosed one is not searched again per tag.
            titled = True
            if close := _TITLE_END.search(head, m.end()):
                out["title"] = " ".join(html.unescape(head[m.end() : close.start()]).split())
        elif name == "html" and attrs.get("lang"):
            out.setdefault("html_lang", attrs["lang"])
        elif name == "link" and "canonical" in attrs.get("rel", "").lower().split() and attrs.get("href"):
            out.setdefault("canonical_url", attrs["href"])
        elif name == "meta" and attrs.get("content"):
            prop = (attrs.get("property") or attrs.get("name") or "").lower()
            if prop in ("og:url", "og:title"):
                out.setdefault(prop.replace(":", "_"), attrs["content"])
    return {k: v for k, v in out.items() if v}


def _extract_trafilatura(text: str, uri: str, cfg: HtmlConfig) -> str:
    """Main text via trafilatura's full pipeline (with its fallback extractors)."""
    import trafilatura

    doc = trafilatura.bare_extraction(
        text,
        url=uri,
        include_comments=cfg.include_comments,
        include_tables=cfg.include_tables,
        favor_precision=cfg.favor == "precision",
        favor_recall=cfg.favor == "recall",
        fast=cfg.fast,
        with_metadata=False,
    )
    if doc is None:
        return ""
    parts = [doc.text or ""]
    if cfg.include_comments and doc.comments:
        parts.append(doc.comments)
    return "\n\n".join(p for p in parts if p).strip()


def _extract_resiliparse(text: str, cfg: HtmlConfig) -> str:
    """Main text via resiliparse's rule-based main-content extraction."""
    from resiliparse.extract.html2text import extract_plain_text

    skip = [] if cfg.include_tables else ["table"]
    return extract_plain_text(
        text, main_content=True, comments=cfg.include_comments, alt_texts=False, skip_elements=skip
    ).strip()


def extract_html(
    raw: bytes,
    *,
    uri: str,
    cfg: HtmlConfig,
    source: str = "html",
    part: str = "",
    fetched_at: datetime | None = None,
    content_type: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Document | Drop:
    """Turn one HTML page into a Document, or a Drop saying why not; never raises on bad input."""

    def drop(reason: str, detail: str) -> Drop:
        return Drop(uri=uri, source=source, reason=reason, detail=detail, part=part)

    if len(raw) > cfg.max_bytes:
        return drop("html_too_large", f"{len(raw)} bytes > max_bytes={cfg.max_bytes}")
    if not raw.strip():
        return drop("html_empty", "the page has no bytes (or only whitespace)")
    if kind := _binary_kind(raw):
        return drop("html_binary", f"content looks like {kind}, not HTML text")
    try:
        text, encoding = decode_html(raw, content_type)
        info = _page_meta(text)
        if cfg.extractor == "trafilatura":
            body = _extract_trafilatura(text, uri, cfg)
        else:
            body = _extract_resiliparse(text, cfg)
    except Exception as exc:  # third-party parsers fail in many ways; bad input is a Drop
        return drop("html_extract_error", f"{type(exc).__name__}: {exc}")
    # NFC so the same text always has the same code points (e.g. Bengali nukta letters).
    body = unicodedata.normalize("NFC", body)
    if len(body) < cfg.min_text_chars:
        return drop(
            "html_no_main_content",
            f"{len(body)} chars of main text from {cfg.extractor} < min_text_chars={cfg.min_text_chars}",
        )
    title = unicodedata.normalize("NFC", info.pop("title", None) or info.get("og_title") or "")
    doc_meta: dict[str, Any] = {
        **(meta or {}),
        "encoding": encoding,
        "extractor": cfg.extractor,
        "html_bytes": len(raw),
        **info,
    }
    return new_document(
        body, source=source, uri=uri, part=part, title=title, fetched_at=fetched_at, meta=doc_meta
    )


def extract_html_file(path: Path, cfg: HtmlConfig) -> list[Document | Drop]:
    """Read one HTML file from disk and extract it (fetched_at = the file's mtime, UTC)."""
    uri = path.resolve().as_uri()
    try:
        stat = path.stat()
        if stat.st_size > cfg.max_bytes:
            return [Drop(uri, "html", "html_too_large", f"{stat.st_size} bytes > max_bytes={cfg.max_bytes}")]
        raw = path.read_bytes()
    except OSError as exc:
        return [Drop(uri, "html", "html_unreadable", f"{type(exc).__name__}: {exc}")]
    mtime = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
    return [extract_html(raw, uri=uri, cfg=cfg, fetched_at=mtime, meta={"file_name": path.name})]
