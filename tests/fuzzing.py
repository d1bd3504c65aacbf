"""Mutation fuzzing of ingest: a seed corpus from ../shared/data, mutators, fuzz cases and the stage check.

Used by tests/test_fuzz_ingest.py (a short seeded budget in CI) and benchmarks/fuzz_ingest.py (the long run).
Every mutator is a pure function `(data, rnd) -> bytes`: the same bytes and the same seeded Random give the
same output, so a case is rebuilt from its seed file and its list of `(mutator, op seed)` operations alone,
and a whole run from (corpus, run seed, case index).
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import itertools
import json
import random
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

Mutator = Callable[[bytes, random.Random], bytes]
Op = tuple[str, int]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Cases stay cheap: small seeds, and no mutation may grow a case past this (the rest is cut off).
MAX_CASE_BYTES = 2 << 20
PDF_MAX_BYTES = 300_000
HTML_MAX_BYTES = 60_000
WARC_MAX_BYTES = 100_000
# A larger archive contributes its first records only (warcinfo, then request/response pairs).
WARC_SLICE_RECORDS = 7
TEXT_SLICE_BYTES = 6_000

# Per kind: how often a case is made from it (the benchmark may pass its own weights).
DEFAULT_WEIGHTS = {"pdf": 0.2, "html": 0.3, "warc": 0.15, "text": 0.35}


# ---- seeds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """One real input, or a slice of one, that cases are mutated from."""

    kind: str
    """Ingest kind: pdf, html, warc or text."""
    fmt: str
    """What the bytes are (chooses the structure-aware mutators): pdf, html, warc, jsonl, markdown, text."""
    suffix: str
    """The file suffix it is ingested under (.gz when the bytes are gzip)."""
    data: bytes
    origin: str
    """Where it came from, relative to ../shared/data, with the slice taken."""


def _spread(paths: list[Path], n: int) -> list[Path]:
    """About n paths picked evenly from a sorted list (all of them when there are fewer)."""
    step = max(1, len(paths) // n)
    return paths[::step][:n]


def _rel(path: Path, root: Path) -> str:
    """A path relative to the data folder, for a seed's origin."""
    return str(path.relative_to(root))


def _pdf_seeds(root: Path) -> list[Seed]:
    """Every PDF small enough to mutate cheaply (the broken and encrypted ones included)."""
    paths = sorted(p for p in root.glob("pdf/**/*.pdf") if p.stat().st_size <= PDF_MAX_BYTES)
    return [Seed("pdf", "pdf", ".pdf", p.read_bytes(), _rel(p, root)) for p in paths]


HTML_PICKS = {
    "html/trafilatura-eval/raw": 24,
    "html/python-3.11-docs": 4,
    "html/postgresql-15-docs": 4,
    "html/debian-handbook": 6,
}


def _html_seeds(root: Path) -> list[Seed]:
    """Small real pages from every HTML collection, plus the head of a whole-book page."""
    seeds = []
    for folder, n in HTML_PICKS.items():
        pages = sorted(
            p for p in (root / folder).rglob("*.htm*") if p.is_file() and p.stat().st_size <= HTML_MAX_BYTES
        )
        seeds += [Seed("html", "html", ".html", p.read_bytes(), _rel(p, root)) for p in _spread(pages, n)]
    books = sorted((root / "html/gutenberg-book-html").rglob("*.htm*"))
    if books:
        head = books[0].read_bytes()[:40_000]
        seeds.append(Seed("html", "html", ".html", head, f"{_rel(books[0], root)} [:40000]"))
    return seeds


def _warc_suffix(path: Path, data: bytes) -> str:
    """The suffix (.warc/.arc, maybe .gz) that the bytes call for, whatever the file is named."""
    plain = _gunzip_head(data) if data[:2] == b"\x1f\x8b" else data
    base = ".warc" if plain.lstrip()[:5] == b"WARC/" else ".arc"
    return base + ".gz" if data[:2] == b"\x1f\x8b" else base


def _gunzip_head(data: bytes) -> bytes:
    """The first decompressed bytes of a gzip stream (empty when it does not decompress)."""
    try:
        return zlib.decompressobj(31).decompress(data, 64)
    except zlib.error:
        return b""


def _warc_seeds(root: Path) -> list[Seed]:
    """Every WARC/ARC file, the larger ones cut to their first few records (gzip members)."""
    seeds = []
    for path in sorted(p for p in (root / "warc").rglob("*") if p.is_file()):
        data = path.read_bytes()
        origin = _rel(path, root)
        if len(data) > WARC_MAX_BYTES:
            if data[:2] == b"\x1f\x8b":
                spans = gzip_members(data)[:WARC_SLICE_RECORDS]
                data = data[: spans[-1][1]]
            else:
                data = b"".join(split_records(data)[:WARC_SLICE_RECORDS])
            origin += f" [first {WARC_SLICE_RECORDS} records]"
        seeds.append(Seed("warc", "warc", _warc_suffix(path, data), data, origin))
    return seeds


def _head_tail(data: bytes, head: int, tail: int) -> bytes:
    """The first and last lines of a file within these budgets (a book keeps its PG header and footer)."""
    if len(data) <= head + tail:
        return data
    start = data[:head].rsplit(b"\n", 1)[0] + b"\n"
    end = data[-tail:].split(b"\n", 1)[-1]
    return start + end


def _lines_of(path: Path, n: int) -> bytes:
    """The first n lines of a file."""
    with path.open("rb") as f:
        return b"".join(itertools.islice(f, n))


def _synthetic_markdown(text: str) -> bytes:
    """A Markdown document using most block and inline constructs, its prose taken from real text."""
    paras = [p.strip().replace("\n", " ") for p in text.split("\n\n") if len(p.strip()) > 80][:8]
    paras += ["(no text)"] * (8 - len(paras))
    words = paras[0].split()[:6]
    md = [
        f"# {' '.join(words)}",
        paras[1],
        f"## {' '.join(paras[2].split()[:4])}",
        f"*{paras[2][:60]}* and **{paras[3][:40]}** with `code` and a [link](https://example.org/a?b=c).",
        "\n".join(f"- {w}" for w in paras[4].split()[:5]),
        "\n".join(f"{i}. {w}" for i, w in enumerate(paras[5].split()[:4], 1)),
        f"> {paras[6]}",
        "```python\nprint('hello')\n```",
        "| a | b |\n|---|---|\n| " + " | ".join(paras[7].split()[:2]) + " |",
        "<div>inline <b>HTML</b></div>",
        "[ref]: https://example.org/ref",
    ]
    return ("\n\n".join(md) + "\n").encode()


def _synthetic_jsonl(quotes: list[str]) -> bytes:
    """JSONL records shaped as ingest reads them (ids, titles, urls, nested metadata), real quotes as text."""
    lines = []
    for k, quote in enumerate(quotes):
        record: dict[str, Any] = {"id": k if k % 2 else f"q{k}", "text": quote}
        if k % 3 == 0:
            record["title"] = " ".join(quote.split()[:4])
        if k % 3 == 1:
            record["metadata"] = {"url": f"https://example.org/q/{k}", "title": quote[:20], "score": k / 7}
        if k % 4 == 2:
            record["url"] = f"https://example.org/{k}"
        lines.append(json.dumps(record, ensure_ascii=k % 2 == 0))
    return ("\n".join(lines) + "\n").encode()


def _text_seeds(root: Path) -> list[Seed]:
    """Slices of the real text files, JSONL samples, and small Markdown/JSONL built from real text."""
    seeds = []
    text = root / "text"
    for path in sorted((text / "gutenberg").glob("pg*.txt")):
        data = _head_tail(path.read_bytes(), 5_000, 2_500)
        seeds.append(Seed("text", "text", ".txt", data, f"{_rel(path, root)} [head+tail]"))
    for rel in ("fortunes/en", "fortunes/de", "tinyshakespeare/input.txt", "wordlists/american-english"):
        path = text / rel
        if path.is_file():
            data = path.read_bytes()[:TEXT_SLICE_BYTES].rsplit(b"\n", 1)[0] + b"\n"
            seeds.append(Seed("text", "text", ".txt", data, f"{_rel(path, root)} [:{TEXT_SLICE_BYTES}]"))
    for path in sorted((text / "quality-negatives").glob("*.txt")):
        seeds.append(Seed("text", "text", ".txt", path.read_bytes()[:TEXT_SLICE_BYTES], _rel(path, root)))
    for path in sorted((text / "ccnet-samples-dolma").glob("*.jsonl")):
        seeds.append(Seed("text", "jsonl", ".jsonl", _lines_of(path, 4), f"{_rel(path, root)} [4 lines]"))
    dclm = root / "quality/dclm_labeled_shared.jsonl"
    if dclm.is_file():
        seeds.append(Seed("text", "jsonl", ".ndjson", _lines_of(dclm, 5), f"{_rel(dclm, root)} [5 lines]"))
    books = sorted((text / "gutenberg").glob("pg*.utf8.txt"))
    for k, book in enumerate(books[:3]):
        body = book.read_bytes()[20_000:40_000].decode("utf-8", "replace").replace("\r\n", "\n")
        suffix = ".md" if k % 2 == 0 else ".markdown"
        seeds.append(
            Seed("text", "markdown", suffix, _synthetic_markdown(body), f"{_rel(book, root)} [as md]")
        )
    fortunes = text / "fortunes/en"
    if fortunes.is_file():
        quotes = [q.strip() for q in fortunes.read_text("utf-8", "replace").split("\n%\n")[:12] if q.strip()]
        seeds.append(Seed("text", "jsonl", ".jsonl", _synthetic_jsonl(quotes), "text/fortunes/en [as jsonl]"))
    # The same readers behind gzip: each format once, compressed.
    gz = {".txt": seeds[0], ".jsonl": next(s for s in seeds if s.fmt == "jsonl")}
    gz[".md"] = next(s for s in seeds if s.fmt == "markdown")
    for suffix, s in gz.items():
        data = gzip.compress(s.data, mtime=0)
        seeds.append(Seed("text", s.fmt, suffix + ".gz", data, f"{s.origin} [gzip]"))
    return seeds


@lru_cache(maxsize=4)
def seed_corpus(root: Path = SHARED_DATA) -> tuple[Seed, ...]:
    """Every seed, cheapest kinds first (so hypothesis shrinks toward cheap seeds), in a stable order."""
    return tuple(_text_seeds(root) + _html_seeds(root) + _warc_seeds(root) + _pdf_seeds(root))


# ---- small helpers -------------------------------------------------------------------------------


def _pos(data: bytes, rnd: random.Random) -> int:
    """A random position in data, both ends included."""
    return rnd.randint(0, len(data))


def _span(n: int, rnd: random.Random, longest: int | None = None) -> tuple[int, int]:
    """A random non-empty [start, end) slice of n bytes, at most `longest` long (0, 0 when n is 0)."""
    if n == 0:
        return 0, 0
    start = rnd.randrange(n)
    return start, start + rnd.randint(1, max(1, min(longest or n, n - start)))


def _insert(data: bytes, at: int, piece: bytes) -> bytes:
    """data with piece inserted at a position."""
    return data[:at] + piece + data[at:]


def _matches(pattern: re.Pattern[bytes], data: bytes, limit: int = 5000) -> list[re.Match[bytes]]:
    """The first `limit` matches of a pattern (bounded, so a huge case costs bounded time)."""
    return list(itertools.islice(pattern.finditer(data), limit))


def _replace_group(data: bytes, m: re.Match[bytes], group: int, value: bytes) -> bytes:
    """data with one group of a match replaced."""
    return data[: m.start(group)] + value + data[m.end(group) :]


_WEIRD_NUMBERS = (
    b"-1",
    b"",
    b"abc",
    b"0x10",
    b" 12 ",
    b"1e3",
    b"12abc",
    b"\xff\xfe",
    b"00000000000000000001",
)


def _lie(n: int, rnd: random.Random) -> bytes:
    """A wrong value for a length or offset n: near misses, zero, overflow-sized, negative or not a number."""
    if rnd.random() < 0.2:
        return rnd.choice(_WEIRD_NUMBERS)
    near = rnd.randint(2, 4096)
    values = (0, 1, n - 1, n + 1, n * 2, n // 2, n + near, max(0, n - near), 2**31 - 1, 2**31, 2**32 + n)
    return str(rnd.choice((*values, 2**63 - 1, 2**64, 10**30))).encode()


def _as_text(data: bytes) -> str:
    """Bytes as text, every undecodable byte kept as a lone surrogate (re-encoders may pass them on)."""
    return data.decode("utf-8", "surrogateescape")


# The mutators, by what they know of the input: generic bytes, or one format's structure.
GENERIC: dict[str, Mutator] = {}
PDF: dict[str, Mutator] = {}
WARC: dict[str, Mutator] = {}
HTML: dict[str, Mutator] = {}
JSONL: dict[str, Mutator] = {}
TEXT: dict[str, Mutator] = {}
MARKDOWN: dict[str, Mutator] = {}
GZIP: dict[str, Mutator] = {}


def _mutator(group: dict[str, Mutator]) -> Callable[[Mutator], Mutator]:
    """Register a mutator in a group under its function name."""

    def add(fn: Mutator) -> Mutator:
        """Add fn to the group; return it unchanged."""
        group[fn.__name__] = fn
        return fn

    return add


# ---- generic mutators ----------------------------------------------------------------------------


@_mutator(GENERIC)
def bit_flip(data: bytes, rnd: random.Random) -> bytes:
    """Flip one to eight random bits."""
    if not data:
        return data
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        buf[rnd.randrange(len(buf))] ^= 1 << rnd.randrange(8)
    return bytes(buf)


_INTERESTING = b"\x00\xff\x7f\x80\n\r<>\"'&%\\{}[]\x1b#/"


@_mutator(GENERIC)
def byte_set(data: bytes, rnd: random.Random) -> bytes:
    """Overwrite one to eight random bytes with bytes parsers treat specially."""
    if not data:
        return data
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        buf[rnd.randrange(len(buf))] = rnd.choice(_INTERESTING)
    return bytes(buf)


@_mutator(GENERIC)
def truncate(data: bytes, rnd: random.Random) -> bytes:
    """Cut the file short at a random point."""
    return data[: rnd.randint(0, len(data))]


_STRUCTURAL = (b"\n", b"\r\n\r\n", b"<", b"</", b"stream", b"endstream", b"endobj", b"xref", b"trailer")
_STRUCTURAL += (b"%%EOF", b"WARC/", b"}", b'"', b"\x1f\x8b", b"-->", b"```")


@_mutator(GENERIC)
def truncate_structural(data: bytes, rnd: random.Random) -> bytes:
    """Cut the file at (just before, at or just after) a structural token: a line end, a tag, a record."""
    token = rnd.choice(_STRUCTURAL)
    hits = _matches(re.compile(re.escape(token)), data)
    if not hits:
        return truncate(data, rnd)
    return data[: rnd.choice(hits).start() + rnd.choice((0, 1, len(token)))]


@_mutator(GENERIC)
def insert_junk(data: bytes, rnd: random.Random) -> bytes:
    """Insert random bytes, NUL or 0xFF runs, a repeated byte, or a repeated structural token."""
    n = rnd.choice((1, 4, 16, 256, 4096, 65536))
    pieces = (
        lambda: rnd.randbytes(n),
        lambda: b"\x00" * n,
        lambda: b"\xff" * n,
        lambda: bytes([rnd.randrange(256)]) * n,
        lambda: rnd.choice(_STRUCTURAL) * min(n, 4096),
    )
    return _insert(data, _pos(data, rnd), rnd.choice(pieces)())


INVALID_UTF8 = (
    b"\xed\xa0\x80",  # a lone high surrogate (U+D800) encoded as if it were a character
    b"\xed\xbf\xbf",  # a lone low surrogate (U+DFFF)
    b"\xed\xa0\xbd\xed\xb8\x80",  # a surrogate pair encoded as two characters (CESU-8)
    b"\xc0\x80",  # overlong NUL
    b"\xe0\x80\xaf",  # overlong '/'
    b"\xf8\x88\x80\x80\x80",  # a five-byte form
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\x80",  # a lone continuation byte
    b"\xbf\xbf",
    b"\xfe",
    b"\xff",
    b"\xe2\x82",  # a three-byte sequence cut short
    b"\xf0\x9f\x98",  # a four-byte sequence cut short
    b"\xef\xbf\xbe",  # U+FFFE, a noncharacter
)


@_mutator(GENERIC)
def invalid_utf8(data: bytes, rnd: random.Random) -> bytes:
    """Insert one to eight invalid UTF-8 sequences (lone surrogates, overlong forms, cut sequences)."""
    for _ in range(rnd.randint(1, 8)):
        data = _insert(data, _pos(data, rnd), rnd.choice(INVALID_UTF8))
    return data


_LONE_UTF16 = (b"\x00\xd8", b"\xd8\x00", b"\x00\xdc", b"\xdc\x00", b"\x3d\xd8")


@_mutator(GENERIC)
def utf16_chunk(data: bytes, rnd: random.Random) -> bytes:
    """Re-encode one slice as UTF-16/32 (with or without BOM), maybe with a lone surrogate code unit."""
    a, b = _span(len(data), rnd, 2048)
    encoding = rnd.choice(("utf-16", "utf-16-le", "utf-16-be", "utf-32"))
    piece = _as_text(data[a:b]).encode(encoding, "surrogatepass")
    if rnd.random() < 0.5:
        piece = _insert(piece, _pos(piece, rnd), rnd.choice(_LONE_UTF16))
    return data[:a] + piece + data[b:]


_REENCODINGS = ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "cp1252", "latin-1")
_REENCODINGS += ("shift_jis", "koi8-r", "utf-7", "gb18030", "cp037", "big5")


@_mutator(GENERIC)
def reencode(data: bytes, rnd: random.Random) -> bytes:
    """Re-encode the whole file (read as UTF-8) in another encoding: UTF-16/32, legacy, EBCDIC, UTF-7."""
    encoding = rnd.choice(_REENCODINGS)
    errors = "surrogatepass" if encoding.startswith(("utf-16", "utf-32")) else "replace"
    return _as_text(data).encode(encoding, errors)


_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)


@_mutator(GENERIC)
def bom_games(data: bytes, rnd: random.Random) -> bytes:
    """A BOM that lies about the encoding, a doubled BOM, a BOM mid-file, or nothing but a BOM."""
    bom = rnd.choice(_BOMS)
    games = (
        lambda: bom + data,
        lambda: bom + rnd.choice(_BOMS) + data,
        lambda: _insert(data, _pos(data, rnd), bom),
        lambda: bom,
    )
    return rnd.choice(games)()


@_mutator(GENERIC)
def duplicate_chunk(data: bytes, rnd: random.Random) -> bytes:
    """Copy a slice to another position."""
    a, b = _span(len(data), rnd, 65536)
    return _insert(data, _pos(data, rnd), data[a:b])


@_mutator(GENERIC)
def repeat_chunk(data: bytes, rnd: random.Random) -> bytes:
    """Repeat a short slice many times in place (up to about 1 MB)."""
    a, b = _span(len(data), rnd, 256)
    times = max(2, min(rnd.choice((10, 100, 1000, 10000)), (1 << 20) // max(1, b - a)))
    return data[:a] + data[a:b] * times + data[b:]


@_mutator(GENERIC)
def swap_chunks(data: bytes, rnd: random.Random) -> bytes:
    """Swap two non-overlapping slices."""
    if len(data) < 4:
        return data[::-1]
    i, j, k, m = sorted(rnd.sample(range(len(data) + 1), 4))
    return data[:i] + data[k:m] + data[j:k] + data[i:j] + data[m:]


@_mutator(GENERIC)
def delete_chunk(data: bytes, rnd: random.Random) -> bytes:
    """Remove a slice."""
    a, b = _span(len(data), rnd, 65536)
    return data[:a] + data[b:]


@_mutator(GENERIC)
def line_endings(data: bytes, rnd: random.Random) -> bytes:
    """All line ends as LF, CRLF or CR, or a random mix."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    ends = rnd.choice(((b"\n",), (b"\r\n",), (b"\r",), (b"\n", b"\r\n", b"\r", b"\n\r")))
    return b"".join(line + rnd.choice(ends) for line in lines[:-1]) + lines[-1]


@_mutator(GENERIC)
def emptyish(data: bytes, rnd: random.Random) -> bytes:
    """An empty file, or one holding only whitespace, a NUL or a BOM."""
    return rnd.choice((b"", b" ", b"\n", b"\x00", codecs.BOM_UTF8, b"\r\n" * 100, b"\t \x0c\x0b"))


# Mutators that damage bytes locally, for use inside a structure (a PDF stream, a gzip member, a payload).
_LOCAL = (bit_flip, byte_set, truncate, insert_junk, delete_chunk, duplicate_chunk, invalid_utf8)


# ---- PDF -----------------------------------------------------------------------------------------

_STREAM_START = re.compile(rb"(?<!end)stream(?:\r\n|\n|\r)")
_LENGTH = re.compile(rb"/Length\s+(\d+)(?!\s+\d+\s+R)")
_OBJ = re.compile(rb"(\d+)\s+(\d+)\s+obj\b")
_REF = re.compile(rb"(\d+)\s+(\d+)\s+R\b")
_STARTXREF = re.compile(rb"startxref\s+(\d+)")
_XREF_ENTRY = re.compile(rb"(\d{10}) (\d{5}) ([nf])")
_XREF_SECTION = re.compile(rb"xref\s+(\d+) (\d+)")


def _stream_bodies(data: bytes) -> list[tuple[int, int]]:
    """Byte spans of the bodies between `stream` and `endstream`."""
    spans = []
    for m in _matches(_STREAM_START, data, 2000):
        end = data.find(b"endstream", m.end())
        if end >= 0:
            spans.append((m.end(), end))
    return spans


@_mutator(PDF)
def pdf_stream_damage(data: bytes, rnd: random.Random) -> bytes:
    """Damage the bytes inside one stream (its /Length left as it was)."""
    spans = _stream_bodies(data)
    if not spans:
        return bit_flip(data, rnd)
    a, b = rnd.choice(spans)
    return data[:a] + rnd.choice(_LOCAL)(data[a:b], rnd) + data[b:]


_CONTENT_OPS = (b" q" * 200, b" Q" * 50, b" BT", b" ET ET", b" 1e99999 0 Td", b" 99999999999999999999 Tz")
_CONTENT_OPS += (
    b" /F999 12 Tf",
    b" [(a) -1e308 (b)] TJ",
    b" 0 0 0 0 0 0 cm",
    b" (\\",
    b" <4142",
    b" /Im1 Do",
)


def _content_damage(data: bytes, rnd: random.Random) -> bytes:
    """Damage to decoded stream content: bytes, or content-stream operators that lie or nest."""
    if rnd.random() < 0.5:
        return rnd.choice(_LOCAL)(data, rnd)
    return _insert(data, _pos(data, rnd), rnd.choice(_CONTENT_OPS))


def _object_dict(data: bytes, body_start: int) -> tuple[int, int]:
    """The span from the `obj` keyword before a stream to its body (where its dictionary is)."""
    obj = data.rfind(b" obj", 0, body_start)
    return (obj if obj >= 0 else max(0, body_start - 512)), body_start


@_mutator(PDF)
def pdf_flate_rewrite(data: bytes, rnd: random.Random) -> bytes:
    """Inflate one Flate stream (content, object stream, xref stream), damage it, deflate it again with an
    honest /Length, so the damage reaches the parser behind the decompressor."""
    spans = _stream_bodies(data)
    rnd.shuffle(spans)
    for a, b in spans[:20]:
        try:
            inner = zlib.decompressobj().decompress(data[a:b], 1 << 22)
        except zlib.error:
            continue
        if not inner:
            continue
        packed = zlib.compress(_content_damage(inner, rnd))
        d0, d1 = _object_dict(data, a)
        head = _LENGTH.sub(b"/Length %d" % len(packed), data[d0:d1], count=1)
        return data[:d0] + head + packed + b"\n" + data[b:]
    return pdf_stream_damage(data, rnd)


@_mutator(PDF)
def pdf_length_lie(data: bytes, rnd: random.Random) -> bytes:
    """Make one stream's /Length wrong: near misses, zero, huge, negative, or a reference to nothing."""
    hits = _matches(re.compile(rb"/Length\s+(\d+(?:\s+\d+\s+R)?)"), data)
    if not hits:
        return pdf_stream_damage(data, rnd)
    m = rnd.choice(hits)
    digits = re.match(rb"\d+", m.group(1))
    value = b"999999 0 R" if rnd.random() < 0.15 else _lie(int(digits.group()) if digits else 0, rnd)
    return _replace_group(data, m, 1, value)


@_mutator(PDF)
def pdf_xref(data: bytes, rnd: random.Random) -> bytes:
    """Break the cross-reference data: startxref, table offsets, subsection counts, the keyword itself."""
    choice = rnd.randrange(4)
    if choice == 0 and (hits := _matches(_STARTXREF, data)):
        m = rnd.choice(hits)
        return _replace_group(data, m, 1, _lie(int(m.group(1)), rnd))
    if choice == 1 and (hits := _matches(_XREF_ENTRY, data)):
        for m in rnd.sample(hits, min(len(hits), rnd.randint(1, 5)))[::-1]:
            data = _replace_group(data, m, 1, b"%010d" % rnd.randrange(10**10))
        return data
    if choice == 2 and (hits := _matches(_XREF_SECTION, data)):
        m = rnd.choice(hits)
        return _replace_group(data, m, rnd.choice((1, 2)), _lie(int(m.group(2)), rnd))
    return data.replace(b"xref", rnd.choice((b"xraf", b"", b"xref xref")), 1)


@_mutator(PDF)
def pdf_objnum(data: bytes, rnd: random.Random) -> bytes:
    """Renumber an object (duplicates, huge or negative numbers), or point a reference elsewhere (cycles)."""
    objs = _matches(_OBJ, data)
    refs = _matches(_REF, data)
    if not objs or not refs:
        return pdf_stream_damage(data, rnd)
    numbers = [m.group(1) for m in objs]
    if rnd.random() < 0.5:
        m = rnd.choice(objs)
        value = rnd.choice((rnd.choice(numbers), b"-1", b"0", b"4294967296", b"99999999999999"))
        return _replace_group(data, m, rnd.choice((1, 2)), value)
    for m in sorted(rnd.sample(refs, min(len(refs), rnd.randint(1, 4))), key=lambda m: -m.start()):
        data = _replace_group(data, m, 1, rnd.choice((*numbers, b"0", b"99999")))
    return data


@_mutator(PDF)
def pdf_trailer(data: bytes, rnd: random.Random) -> bytes:
    """Cut at the trailer, drop or misdirect /Root, lie in /Size, or make /Prev loop back to itself."""
    choice = rnd.randrange(4)
    if choice == 0:
        token = rnd.choice((b"trailer", b"startxref", b"%%EOF"))
        at = data.rfind(token)
        return data[: at + rnd.choice((0, len(token)))] if at >= 0 else truncate(data, rnd)
    if choice == 1 and (m := re.search(rb"/Root\s+(\d+\s+\d+\s+R)", data)):
        return _replace_group(data, m, 1, rnd.choice((b"", b"1 0 R", b"999 0 R", b"null", b"<<>>")))
    if choice == 2 and (m := re.search(rb"/Size\s+(\d+)", data)):
        return _replace_group(data, m, 1, _lie(int(m.group(1)), rnd))
    if hits := _matches(_STARTXREF, data):
        # /Prev naming the section it is in: a reader following /Prev must notice the loop.
        offset = rnd.choice(hits).group(1)
        return re.sub(rb"trailer\s*<<", b"trailer\n<< /Prev " + offset + b" ", data, count=1)
    return truncate(data, rnd)


@_mutator(PDF)
def pdf_nesting(data: bytes, rnd: random.Random) -> bytes:
    """Nest arrays or dictionaries thousands deep inside an object (balanced or not)."""
    objs = _matches(_OBJ, data)
    depth = rnd.choice((100, 1000, 10000, 100000))
    opener = rnd.choice((b"[", b"<<", b"<< /A ", b"[[<<"))
    closer = {b"[": b"]", b"<<": b">>", b"<< /A ": b">>", b"[[<<": b">>]]"}[opener]
    piece = opener * depth + (closer * depth if rnd.random() < 0.5 else b"")
    at = rnd.choice(objs).end() if objs else _pos(data, rnd)
    return _insert(data, at, b" " + piece + b" ")


@_mutator(PDF)
def pdf_page_tree(data: bytes, rnd: random.Random) -> bytes:
    """Make the page tree lie: /Count wrong, or a /Kids array that contains its own node (a cycle)."""
    if rnd.random() < 0.5 and (hits := _matches(re.compile(rb"/Count\s+(-?\d+)"), data)):
        m = rnd.choice(hits)
        return _replace_group(data, m, 1, _lie(abs(int(m.group(1))), rnd))
    for m in _matches(_OBJ, data, 500):
        end = data.find(b"endobj", m.end())
        kids = re.compile(rb"/Kids\s*\[([^\]]*)\]").search(data, m.end(), end if end > 0 else len(data))
        if kids:
            self_ref = m.group(1) + b" " + m.group(2) + b" R"
            return _replace_group(data, kids, 1, self_ref + rnd.choice((b"", b" " + kids.group(1))))
    return pdf_objnum(data, rnd)


# ---- WARC / ARC ----------------------------------------------------------------------------------

_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*([^\r\n]*?)[ \t]*\r?$")


def _header_end(data: bytes, pos: int) -> int:
    """Where the header block starting at pos ends (after its blank line), or -1."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep, pos)) >= 0]
    return min(ends) if ends else -1


def _separator(data: bytes, pos: int) -> int:
    """pos moved past up to two line ends (a record's trailing separator); the end of data at most."""
    pos = min(pos, len(data))  # a lying length may point far past the end
    m = re.compile(rb"(?:\r?\n){0,2}").match(data, pos)
    return m.end() if m else pos


def _warc_split(data: bytes) -> list[bytes]:
    """WARC records by their Content-Length; whatever does not parse is one last piece."""
    records, pos = [], 0
    while pos < len(data):
        end = _header_end(data, pos)
        length = _CONTENT_LENGTH.search(data, pos, end) if end > 0 else None
        if length is None or not length.group(1).isdigit():
            break
        stop = _separator(data, end + int(length.group(1)))
        records.append(data[pos:stop])
        pos = stop
    return records + ([data[pos:]] if pos < len(data) else [])


def _arc_split(data: bytes) -> list[bytes]:
    """ARC records: a header line ending in the body length, the body, a newline."""
    records, pos = [], 0
    while pos < len(data):
        start = _separator(data, pos)
        eol = data.find(b"\n", start)
        fields = data[start:eol].split() if eol > 0 else []
        if not fields or not fields[-1].isdigit():
            break
        stop = _separator(data, eol + 1 + int(fields[-1]))
        records.append(data[pos:stop])
        pos = stop
    return records + ([data[pos:]] if pos < len(data) else [])


def split_records(data: bytes) -> list[bytes]:
    """An uncompressed WARC or ARC file cut into its records (the unparsable rest as one last piece)."""
    return _warc_split(data) if data.lstrip()[:5] == b"WARC/" else _arc_split(data)


def _split_record(record: bytes) -> tuple[bytes, bytes, bytes] | None:
    """A WARC record as (header block, content block, what follows), or None when it does not parse."""
    end = _header_end(record, 0)
    length = _CONTENT_LENGTH.search(record, 0, end) if end > 0 else None
    if length is None or not length.group(1).isdigit():
        return None
    stop = end + int(length.group(1))
    return record[:end], record[end:stop], record[stop:]


def _sha1_b32(data: bytes) -> bytes:
    """A WARC digest value (sha1, base32)."""
    return b"sha1:" + base64.b32encode(hashlib.sha1(data).digest())


def _set_header(header: bytes, name: bytes, value: bytes | None) -> bytes:
    """A header block with one field set (added before the blank line when absent) or removed (None)."""
    pattern = re.compile(rb"(?im)^" + re.escape(name) + rb":[^\r\n]*\r?\n")
    if value is None:
        return pattern.sub(b"", header)
    line = name + b": " + value + b"\r\n"
    if pattern.search(header):
        return pattern.sub(lambda _: line, header, count=1)
    return header.rstrip(b"\r\n") + b"\r\n" + line + b"\r\n"


def _honest(header: bytes, block: bytes, rnd: random.Random) -> bytes:
    """A WARC record whose Content-Length and block digest match its (changed) block, so the damage inside
    reaches the HTTP and HTML layers instead of failing the framing checks."""
    header = _set_header(header, b"Content-Length", str(len(block)).encode())
    if re.search(rb"(?im)^WARC-Block-Digest:", header):
        header = _set_header(header, b"WARC-Block-Digest", _sha1_b32(block))
    split = _header_end(block, 0)
    payload = block[split:] if split > 0 else block
    digest = _sha1_b32(payload) if rnd.random() < 0.5 else None
    if re.search(rb"(?im)^WARC-Payload-Digest:", header):
        header = _set_header(header, b"WARC-Payload-Digest", digest)
    return header + block + b"\r\n\r\n"


def _pick_record(records: list[bytes], rnd: random.Random, parsed: bool = True) -> int | None:
    """The index of a random record (one that parses, when asked), or None."""
    choices = [i for i, r in enumerate(records) if not parsed or _split_record(r)]
    return rnd.choice(choices) if choices else None


def _on_record(data: bytes, rnd: random.Random, change: Callable[[bytes], bytes]) -> bytes:
    """data with one parsable WARC record changed (the generic byte damage when none parses)."""
    records = split_records(data)
    i = _pick_record(records, rnd)
    if i is None:
        return rnd.choice(_LOCAL)(data, rnd)
    records[i] = change(records[i])
    return b"".join(records)


@_mutator(WARC)
def warc_length_lie(data: bytes, rnd: random.Random) -> bytes:
    """Make one record's length wrong (WARC Content-Length or the length field of an ARC header line)."""
    if data.lstrip()[:5] != b"WARC/":
        records = split_records(data)
        i = rnd.randrange(len(records)) if records else 0
        rec = records[i] if records else data
        m = re.match(rb"(\s*\S[^\n]*?)(\d+)(\r?\n)", rec)
        if not m:
            return bit_flip(data, rnd)
        records[i:i + 1] = [_replace_group(rec, m, 2, _lie(int(m.group(2)), rnd))]  # fmt: skip
        return b"".join(records)

    def lie(rec: bytes) -> bytes:
        """The record with its Content-Length replaced by a wrong value."""
        m = _CONTENT_LENGTH.search(rec)
        assert m is not None
        return _replace_group(rec, m, 1, _lie(int(m.group(1)), rnd))

    return _on_record(data, rnd, lie)


_VERSIONS = (b"WARC/0.9", b"WARC/1.1", b"WARC/2.0", b"WARC/", b"warc/1.0", b"HTTP/1.1 200 OK", b"WARC/1.0 x")


@_mutator(WARC)
def warc_header_mangle(data: bytes, rnd: random.Random) -> bytes:
    """Drop, duplicate or garble a header line; overlong or non-ASCII values, folded lines, bad version."""

    def mangle(rec: bytes) -> bytes:
        """The record with one header line changed."""
        header, block, rest = _split_record(rec) or (rec, b"", b"")
        lines = header.rstrip(b"\r\n").split(b"\n")
        i = rnd.randrange(len(lines))
        line = lines[i].rstrip(b"\r")
        choice = rnd.randrange(7)
        if choice == 0 and i > 0:
            del lines[i]
        elif choice == 1:
            lines.insert(i, lines[i])
        elif choice == 2:
            lines[i] = line.replace(b":", b"", 1)
        elif choice == 3:
            lines[i] = line + b" " + b"x" * rnd.choice((1000, 70000))
        elif choice == 4:
            lines[i] = line + b" " + rnd.choice(INVALID_UTF8) + "é中".encode() + b"\x00\x7f"
        elif choice == 5:
            lines.insert(i + 1, b"  folded continuation\r")
        else:
            lines[0] = rnd.choice(_VERSIONS) + b"\r"
        return b"\n".join(lines) + b"\r\n\r\n" + block + rest

    return _on_record(data, rnd, mangle)


@_mutator(WARC)
def warc_records_shuffle(data: bytes, rnd: random.Random) -> bytes:
    """Swap, duplicate, remove or reverse whole records."""
    records = split_records(data)
    if len(records) < 2:
        return data + data
    i, j = rnd.sample(range(len(records)), 2)
    choice = rnd.randrange(4)
    if choice == 0:
        records[i], records[j] = records[j], records[i]
    elif choice == 1:
        records.insert(j, records[i])
    elif choice == 2:
        del records[i]
    else:
        records.reverse()
    return b"".join(records)


_BAD_DIGESTS = (b"sha1:!!!!", b"sha1:", b"md5:d41d8cd98f00b204e9800998ecf8427e", b"sha256:zz", b"nonsense")
_BAD_DIGESTS += (b"sha1:" + b"A" * 32, b"sha1:" + b"a" * 40, b"sha512:" + b"Z" * 200)


@_mutator(WARC)
def warc_digest(data: bytes, rnd: random.Random) -> bytes:
    """Give one record a wrong or malformed block or payload digest."""

    def damage(rec: bytes) -> bytes:
        """The record with a bad digest header."""
        header, block, rest = _split_record(rec) or (rec, b"", b"")
        name = rnd.choice((b"WARC-Block-Digest", b"WARC-Payload-Digest"))
        value = rnd.choice((*_BAD_DIGESTS, _sha1_b32(rnd.randbytes(8))))
        return _set_header(header, name, value) + block + rest

    return _on_record(data, rnd, damage)


@_mutator(WARC)
def warc_lf_only(data: bytes, rnd: random.Random) -> bytes:
    """LF-only line ends in one record's header block (or every one's), the lengths left as they were."""
    every = rnd.random() < 0.3
    records = split_records(data)
    for i, rec in enumerate(records):
        parts = _split_record(rec)
        if parts and (every or rnd.random() < 0.3):
            header, block, rest = parts
            records[i] = header.replace(b"\r\n", b"\n") + block + rest.replace(b"\r\n", b"\n")
    return b"".join(records)


_TYPES = (b"responze", b"", b"revisit", b"resource", b"conversion", b"continuation", b"metadata", b"request")
_URIS = (b"", b"not a uri", b"javascript:alert(1)", b"http://" + b"a" * 5000, "http://例え.jp/ü".encode())
_URIS += (b"<http://example.com/>", b"file:///etc/passwd", b"http://[::1", b"dns:example.com", b"\xff\xfe")
_DATES = (b"", b"yesterday", b"0000-00-00T00:00:00Z", b"9999-99-99T99:99:99Z", b"2020-02-30T25:61:61Z")


@_mutator(WARC)
def warc_type(data: bytes, rnd: random.Random) -> bytes:
    """A bogus or surprising WARC-Type, target URI, date, record id or revisit target."""

    def bogus(rec: bytes) -> bytes:
        """The record with one identifying header set to a surprising value."""
        header, block, rest = _split_record(rec) or (rec, b"", b"")
        name, values = rnd.choice(
            (
                (b"WARC-Type", _TYPES),
                (b"WARC-Target-URI", _URIS),
                (b"WARC-Date", _DATES),
                (b"WARC-Record-ID", (b"", b"<urn:uuid:same>", b"x" * 3000)),
                (b"WARC-Refers-To", (b"<urn:uuid:nowhere>", b"")),
                (b"WARC-Truncated", (b"length", b"time")),
                (b"WARC-Segment-Number", (b"2", b"-1")),
                (b"Content-Type", (b"application/http; msgtype=request", b"text/html", b"", b"\xff")),
            )
        )
        return _set_header(header, name, rnd.choice(values)) + block + rest

    return _on_record(data, rnd, bogus)


_HTTP_DAMAGE = (
    (b"Content-Type", (b"text/html; charset=utf-7", b"text/html; charset=bogus", b"application/pdf", b"")),
    (b"Content-Type", (b"text/html; charset=\xff\xfe", b"text/html;;;charset=", b"TEXT/HTML")),
    (b"Content-Encoding", (b"gzip", b"br", b"deflate", b"zstd", b"gzip, gzip", b"identity")),
    (b"Transfer-Encoding", (b"chunked", b"gzip, chunked", b"bogus")),
    (b"Content-Length", (b"0", b"-1", b"99999999999", b"abc")),
)


def _damage_http(block: bytes, rnd: random.Random) -> bytes:
    """An HTTP response block with its status line or one header damaged or lying about the body."""
    split = _header_end(block, 0)
    if split < 0:
        return rnd.choice(_LOCAL)(block, rnd)
    head, body = block[:split], block[split:]
    if rnd.random() < 0.3:
        status = rnd.choice(
            (b"HTTP/1.1 999 Weird", b"HTTP/1.1", b"garbage", b"HTTP/1.1 200", b"HTTP/9 200 OK")
        )
        head = re.sub(rb"^[^\r\n]*", lambda _: status, head, count=1)
    else:
        name, values = rnd.choice(_HTTP_DAMAGE)
        head = _set_header(head, name, rnd.choice(values))
    return head + body


def _damage_payload(block: bytes, rnd: random.Random) -> bytes:
    """An HTTP response block whose body went through an HTML or byte mutator."""
    split = _header_end(block, 0)
    head, body = (block[:split], block[split:]) if split > 0 else (b"", block)
    mutate = rnd.choice((*HTML.values(), *_LOCAL, reencode, bom_games))
    return head + mutate(body, rnd)


@_mutator(WARC)
def warc_http(data: bytes, rnd: random.Random) -> bytes:
    """Damage the HTTP layer of one record (status, lying Content-Type/Encoding, chunking), honest framing."""
    return _on_record(data, rnd, lambda rec: _rebuild(rec, rnd, _damage_http))


@_mutator(WARC)
def warc_payload(data: bytes, rnd: random.Random) -> bytes:
    """Mutate one record's payload (HTML mutators included), honest framing, so the HTML extractor sees it."""
    return _on_record(data, rnd, lambda rec: _rebuild(rec, rnd, _damage_payload))


def _rebuild(rec: bytes, rnd: random.Random, change: Callable[[bytes, random.Random], bytes]) -> bytes:
    """A record whose content block was changed, with its length and digests made to match."""
    header, block, _ = _split_record(rec) or (rec, b"", b"")
    return _honest(header, change(block, rnd), rnd)


# ---- HTML ----------------------------------------------------------------------------------------

_OPENERS = (b"<div>", b"<span>", b"<table><tr><td>", b"<ul><li>", b"<b><i>", b"<a href=x>", b"<p>")
_OPENERS += (b"<blockquote>", b"<font>", b"<svg>", b"<math>", b"<select><option>", b"<template>")


def _body_pos(data: bytes, rnd: random.Random) -> int:
    """Just after the <body> tag when there is one, else a random position."""
    m = re.search(rb"<body[^>]*>", data, re.I)
    return m.end() if m and rnd.random() < 0.7 else _pos(data, rnd)


@_mutator(HTML)
def html_deep_nesting(data: bytes, rnd: random.Random) -> bytes:
    """Open the same element thousands deep, closed again or not."""
    tag = rnd.choice(_OPENERS)
    depth = rnd.choice((64, 512, 4096, 30000))
    closing = b"".join(b"</" + t.split(b" ")[0] + b">" for t in re.findall(rb"<([a-z]+[^>]*)>", tag)[::-1])
    piece = tag * depth + (closing * depth if rnd.random() < 0.5 else b"")
    return _insert(data, _body_pos(data, rnd), piece)


_UNCLOSED = (
    b"<!--",
    b"<script>",
    b"<style>",
    b"<textarea>",
    b"<title>",
    b"<plaintext>",
    b"<![CDATA[",
    b"<xmp>",
)
_UNCLOSED += (b"<noscript>", b"<iframe>", b"<html><body>", b"</body></html>", b"<!DOCTYPE", b"<?xml", b"<")


@_mutator(HTML)
def html_unbalanced(data: bytes, rnd: random.Random) -> bytes:
    """Remove closing tags, add stray ones, or open a raw-text element or comment that never closes."""
    choice = rnd.randrange(3)
    if choice == 0 and (hits := _matches(re.compile(rb"</[a-zA-Z][^>]*>"), data)):
        for m in sorted(rnd.sample(hits, min(len(hits), rnd.randint(1, 50))), key=lambda m: -m.start()):
            data = data[: m.start()] + data[m.end() :]
        return data
    if choice == 1:
        closers = b"".join(
            rnd.choice((b"</div>", b"</table>", b"</html>", b"</body>", b"</p>")) for _ in range(20)
        )
        return _insert(data, _pos(data, rnd), closers)
    return _insert(data, _body_pos(data, rnd), rnd.choice(_UNCLOSED))


@_mutator(HTML)
def html_giant_attr(data: bytes, rnd: random.Random) -> bytes:
    """An element with a huge attribute value or name, or with thousands of attributes."""
    size = rnd.choice((1000, 100_000, 1_000_000))
    choice = rnd.randrange(4)
    if choice == 0:
        tag = b'<div class="' + b"a" * size + b'">text</div>'
    elif choice == 1:
        tag = b"<p " + b"x" * size + b"=1>text</p>"
    elif choice == 2:
        # lxml checks attributes pairwise: 50,000 cost ~1.4 s a parse and trafilatura parses up to six
        # times (a finding already written up); 5,000 still exercise it at a fuzzing pace.
        tag = b"<span " + b" ".join(b'a%d="v"' % k for k in range(min(size, 5_000))) + b">text</span>"
    else:
        tag = b'<meta name="description" content="' + "é".encode() * (size // 2) + b'">'
    return _insert(data, _body_pos(data, rnd), tag)


_CHARSETS = (b"utf-7", b"utf-16", b"utf-16le", b"utf-32", b"x-user-defined", b"ebcdic-cp-us", b"cp037")
_CHARSETS += (b"iso-2022-jp", b"hz-gb-2312", b"replacement", b"unknown", b"", b'"', b"utf8\x00", b"a" * 300)
_CHARSETS += ("ＵＴＦ-8".encode(), b"windows-1252", b"shift_jis", b"koi8-r", b"big5", b"x-mac-roman", b"\xff")


@_mutator(HTML)
def html_charset(data: bytes, rnd: random.Random) -> bytes:
    """Replace or add charset declarations with bogus, wide or conflicting ones (meta, http-equiv, XML)."""
    label = rnd.choice(_CHARSETS)
    forms = (
        b'<meta charset="' + label + b'">',
        b'<meta http-equiv="Content-Type" content="text/html; charset=' + label + b'">',
        b'<?xml version="1.0" encoding="' + label + b'"?>',
    )
    if rnd.random() < 0.5:
        data = re.sub(rb"(?i)charset\s*=\s*[\"']?[\w.:+-]*", b"charset=" + label, data)
    piece = rnd.choice(forms) + (rnd.choice(forms) if rnd.random() < 0.3 else b"")
    at = 0 if rnd.random() < 0.3 else rnd.choice((_pos(data[:1024], rnd), _pos(data, rnd)))
    return _insert(data, at, piece)


_SCRIPTS = (
    "Привет мир, это тест. ",
    "日本語のテキストです。",
    "مرحبا بالعالم ",
    "Ελληνικά κείμενα ",
    "Grüße, café ",
)


@_mutator(HTML)
def html_mixed_encoding(data: bytes, rnd: random.Random) -> bytes:
    """Splice in text encoded differently from the rest (legacy code pages, UTF-16) into a page."""
    encoding = rnd.choice(
        ("cp1252", "latin-1", "shift_jis", "koi8-r", "utf-16-le", "gb18030", "big5", "cp1251")
    )
    if rnd.random() < 0.5:
        a, b = _span(len(data), rnd, 4096)
        piece = data[a:b].decode("utf-8", "replace").encode(encoding, "replace")
        return data[:a] + piece + data[b:]
    text = "".join(rnd.choice(_SCRIPTS) for _ in range(rnd.randint(1, 40)))
    return _insert(data, _body_pos(data, rnd), b"<p>" + text.encode(encoding, "replace") + b"</p>")


_ENTITIES = (b"&#0;", b"&#x110000;", b"&#xD800;", b"&#99999999999;", b"&#x;", b"&amp", b"&nosuch;", b"&#-1;")
_ENTITIES += (b"&#x1F600;", b"&#128;", b"&#xFFFE;", b"&" * 100)


@_mutator(HTML)
def html_entities(data: bytes, rnd: random.Random) -> bytes:
    """Insert invalid, out-of-range and surrogate character references, and control characters."""
    pieces = (*_ENTITIES, b"\x00", b"\x0b\x0c\x1b", "\u2028\ufffe\uffff".encode())
    for _ in range(rnd.randint(1, 30)):
        data = _insert(data, _pos(data, rnd), rnd.choice(pieces))
    return data


# ---- JSONL ---------------------------------------------------------------------------------------


def _on_line(data: bytes, rnd: random.Random, change: Callable[[bytes], bytes]) -> bytes:
    """data with one (non-empty when possible) line changed."""
    lines = data.split(b"\n")
    full = [i for i, line in enumerate(lines) if line.strip()] or [0]
    i = rnd.choice(full)
    lines[i] = change(lines[i])
    return b"\n".join(lines)


def _object(line: bytes) -> dict[str, Any] | None:
    """A line's JSON object, or None."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # deep nesting from an earlier operation
        return None
    return value if isinstance(value, dict) else None


@_mutator(JSONL)
def jsonl_break(data: bytes, rnd: random.Random) -> bytes:
    """Cut a line short, join two lines, or add blank, whitespace or junk lines."""
    choice = rnd.randrange(4)
    if choice == 0:
        return _on_line(data, rnd, lambda line: line[: rnd.randint(0, len(line))])
    if choice == 1 and (hits := [m.start() for m in re.finditer(rb"\n", data)]):
        at = rnd.choice(hits)
        return data[:at] + data[at + 1 :]
    line = rnd.choice((b"", b"   \t", b"{", b"}", b"{}}", b"\x00", b"garbage", b"//comment", b"\xff\xfe"))
    lines = data.split(b"\n")
    lines.insert(rnd.randint(0, len(lines)), line)
    return b"\n".join(lines)


@_mutator(JSONL)
def jsonl_deep(data: bytes, rnd: random.Random) -> bytes:
    """A line nested thousands deep (arrays or objects, closed or not), alone or as the text field."""
    depth = rnd.choice((100, 1000, 10000, 100000))
    open_, close = rnd.choice(((b"[", b"]"), (b'{"a":', b"}")))
    nested = open_ * depth + b"1" + (close * depth if rnd.random() < 0.7 else b"")
    line = nested if rnd.random() < 0.5 else b'{"id": "deep", "text": ' + nested + b"}"
    return _on_line(data, rnd, lambda _: line)


_NUMBERS = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1e999",
    b"1" * 5000,
    b"1.5e-99999",
    b"-0",
    b"0x10",
)
_NUMBERS += (b"01", b"1.", b".5", b"+1", b"9" * 400 + b".5e400")


@_mutator(JSONL)
def jsonl_numbers(data: bytes, rnd: random.Random) -> bytes:
    """Put NaN, infinities, huge or malformed numbers into a record, as a field or as the text."""

    def bad(line: bytes) -> bytes:
        """The line as an object with one field holding a bad number literal."""
        record = _object(line) or {}
        key = rnd.choice(("text", "id", "title", "score", "metadata"))
        record[key] = "\x00NUMBER\x00"
        return json.dumps(record).encode().replace(b'"\\u0000NUMBER\\u0000"', rnd.choice(_NUMBERS))

    return _on_line(data, rnd, bad)


@_mutator(JSONL)
def jsonl_non_object(data: bytes, rnd: random.Random) -> bytes:
    """A line that is valid JSON but not an object: arrays, strings, numbers, null, booleans."""
    value = rnd.choice(
        (b"[]", b'["text"]', b'"just a string"', b"42", b"null", b"true", b'""', b'[{"text": "x"}]')
    )
    return _on_line(data, rnd, lambda _: value)


_WRONG = (0, 1.5, -1, True, None, [], ["a", "b"], {}, {"text": "nested"}, "", " \n\t ", "x" * 100_000)
_WRONG += ("\ud800 lone", "nul\x00inside", "\ufeffbom", 10**30)
_FIELDS = ("text", "id", "title", "url", "metadata", "metadata.title", "metadata.url", "doc.body")


def _set_path(record: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted field in place, replacing any non-object on the way."""
    *parents, last = path.split(".")
    node = record
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


@_mutator(JSONL)
def jsonl_field_types(data: bytes, rnd: random.Random) -> bytes:
    """Give a record's text, id, title, url or metadata the wrong type or an odd value; duplicate keys;
    or repeat ids across lines."""

    def wrong(line: bytes) -> bytes:
        """The line with a wrong-typed field, a duplicate key, or a repeated id."""
        record = _object(line) or {"text": "replacement"}
        choice = rnd.randrange(3)
        if choice == 0:
            _set_path(record, rnd.choice(_FIELDS), rnd.choice(_WRONG))
            return json.dumps(record, ensure_ascii=rnd.random() < 0.5).encode("utf-8", "surrogatepass")
        if choice == 1:
            return line.rstrip(b"}") + b', "text": 5, "text": "dup"}'
        record["id"] = rnd.choice((1, 1.0, "1", "same"))
        return json.dumps(record).encode()

    return _on_line(data, rnd, wrong)


@_mutator(JSONL)
def jsonl_surrogates(data: bytes, rnd: random.Random) -> bytes:
    """JSON escapes of lone or reversed surrogates and NULs inside strings (legal JSON, not legal UTF-8)."""
    escapes = (rb"\ud800", rb"\udfff", rb"\ud83d", rb"\ude00\ud83d", rb"\u0000", rb"\uffff", rb"\ud800\u0041")
    hits = _matches(re.compile(rb'"(?:[^"\\]|\\.)*"'), data)
    if not hits:
        return invalid_utf8(data, rnd)
    for m in sorted(rnd.sample(hits, min(len(hits), rnd.randint(1, 5))), key=lambda m: -m.start()):
        at = rnd.randint(m.start() + 1, m.end() - 1)
        data = _insert(data, at, rnd.choice(escapes))
    return data


# ---- plain text and Markdown ---------------------------------------------------------------------


@_mutator(MARKDOWN)
def md_nesting(data: bytes, rnd: random.Random) -> bytes:
    """Nest block quotes, lists, emphasis, brackets or HTML thousands deep."""
    depth = rnd.choice((50, 500, 5000, 50000))
    pieces = (
        lambda: b">" * depth + b" quote\n",
        lambda: b"".join(b"  " * i + b"- item\n" for i in range(min(depth, 2000))),
        lambda: b"*" * depth + b"emphasis" + b"*" * (depth // 2),
        lambda: b"[" * depth + b"link" + b"](" * depth,
        lambda: b"![" * depth,
        lambda: b"`" * depth + b"\n",
        lambda: b"<div>" * depth + b"\n",
        lambda: b"#" * depth + b" heading\n",
    )
    return _insert(data, _pos(data, rnd), b"\n" + rnd.choice(pieces)())


@_mutator(MARKDOWN)
def md_structures(data: bytes, rnd: random.Random) -> bytes:
    """An unclosed code fence, a table thousands of columns wide, unclosed front matter, or thousands of
    link reference definitions."""
    n = rnd.choice((10, 1000, 10000))
    pieces = (
        b"\n```\nnever closed\n",
        b"\n" + b"| c " * n + b"|\n" + b"|---" * n + b"|\n" + b"| x " * n + b"|\n",
        b"---\ntitle: [unclosed\n",
        b"".join(b"[r%d]: http://e.org/%d\n" % (k, k) for k in range(n)) + b"[r1]" * n,
        b"\n<script>\n" + b"x" * n,
        b"\n" + b"-" * n + b"\n",
    )
    return _insert(data, _pos(data, rnd), rnd.choice(pieces))


_PG_MARKERS = (
    b"*** START OF THE PROJECT GUTENBERG EBOOK X ***",
    b"*** END OF THE PROJECT GUTENBERG EBOOK X ***",
    b"*** START OF THIS PROJECT GUTENBERG EBOOK",
    b"End of the Project Gutenberg EBook",
    b"Title: ",
    b"Author: \xff\xfe",
)


@_mutator(TEXT)
def gutenberg_markers(data: bytes, rnd: random.Random) -> bytes:
    """Project Gutenberg header/footer markers duplicated, reordered, removed or misplaced."""
    hits = _matches(re.compile(rb"\*\*\* ?(?:START|END)[^\n]*"), data)
    if hits and rnd.random() < 0.5:
        m = rnd.choice(hits)
        return (
            data[: m.start()] + data[m.end() :] if rnd.random() < 0.5 else _insert(data, 0, m.group() + b"\n")
        )
    return _insert(data, _pos(data, rnd), b"\n" + rnd.choice(_PG_MARKERS) + b"\n")


@_mutator(TEXT)
def text_controls(data: bytes, rnd: random.Random) -> bytes:
    """Control characters, form feeds, NULs (inside or beyond the binary sniff window) and U+FFFD runs."""
    pieces = (b"\x00", b"\x0c", b"\x1b[31m", b"\x07\x08", "\ufffd".encode() * 50, b"\x85", b"\r")
    at = rnd.choice((lambda: _pos(data, rnd), lambda: min(len(data), 8192 + rnd.randrange(64))))
    for _ in range(rnd.randint(1, 20)):
        data = _insert(data, at(), rnd.choice(pieces))
    return data


# ---- gzip ----------------------------------------------------------------------------------------


def gzip_members(data: bytes) -> list[tuple[int, int]]:
    """Byte spans of the gzip members a file is made of; a rest that does not decompress is one last span."""
    spans, pos = [], 0
    view = memoryview(data)
    while pos < len(data):
        d, fed = zlib.decompressobj(31), 0
        try:
            # Fed in blocks, so finding where a member ends never copies the rest of the file.
            while not d.eof and pos + fed < len(data):
                block = view[pos + fed : pos + fed + 65536]
                d.decompress(block)
                fed += len(block)
        except zlib.error:
            break
        if not d.eof:
            break
        end = pos + fed - len(d.unused_data)
        spans.append((pos, end))
        pos = end
    return spans + ([(pos, len(data))] if pos < len(data) else [])


def _inflate(member: bytes) -> bytes | None:
    """One gzip member's content, or None when it does not decompress."""
    try:
        d = zlib.decompressobj(31)
        out = d.decompress(member, MAX_CASE_BYTES)
    except zlib.error:
        return None
    return out if d.eof else None


def _member(data: bytes, rnd: random.Random) -> tuple[int, int] | None:
    """The span of a random member, or None when the file has none."""
    spans = gzip_members(data)
    return rnd.choice(spans) if spans else None


@_mutator(GZIP)
def gz_member_damage(data: bytes, rnd: random.Random) -> bytes:
    """Damage one member: its deflate bytes, cut it short, its CRC or size trailer, or its header flags."""
    span = _member(data, rnd)
    if span is None:
        return bit_flip(data, rnd)
    a, b = span
    member = bytearray(data[a:b])
    choice = rnd.randrange(5)
    if choice == 0 and len(member) > 18:
        for _ in range(rnd.randint(1, 4)):
            member[rnd.randrange(10, len(member) - 8)] ^= 1 << rnd.randrange(8)
    elif choice == 1:
        member = member[: rnd.randrange(len(member))]
    elif choice == 2 and len(member) >= 8:
        at = len(member) - rnd.choice((8, 4))
        member[at : at + 4] = rnd.randbytes(4)
    elif choice == 3 and len(member) >= 4:
        member[3] |= rnd.choice((0x02, 0x04, 0x08, 0x10, 0xE0))  # FHCRC/FEXTRA/FNAME/FCOMMENT/reserved
    elif len(member) >= 3:
        member[rnd.choice((0, 1, 2))] ^= 0xFF  # magic or method
    return data[:a] + bytes(member) + data[b:]


@_mutator(GZIP)
def gz_members(data: bytes, rnd: random.Random) -> bytes:
    """Drop, duplicate, swap members; junk or an empty member between them; junk after the last."""
    spans = gzip_members(data)
    members = [data[a:b] for a, b in spans]
    if not members:
        return data
    i, j = rnd.randrange(len(members)), rnd.randrange(len(members))
    choice = rnd.randrange(5)
    if choice == 0 and len(members) > 1:
        del members[i]
    elif choice == 1:
        members.insert(j, members[i])
    elif choice == 2:
        members[i], members[j] = members[j], members[i]
    elif choice == 3:
        members.insert(
            j, rnd.choice((gzip.compress(b"", mtime=0), rnd.randbytes(rnd.randint(1, 64)), b"\x00" * 512))
        )
    else:
        members.append(rnd.choice((rnd.randbytes(rnd.randint(1, 64)), b"\x1f\x8b", b"\n")))
    return b"".join(members)


@_mutator(GZIP)
def gz_regroup(data: bytes, rnd: random.Random) -> bytes:
    """Recompress the members' contents as one member, or split them into members at random points
    (members that do not line up with records)."""
    parts = [_inflate(data[a:b]) for a, b in gzip_members(data)]
    plain = b"".join(p for p in parts if p is not None)
    if rnd.random() < 0.5:
        return gzip.compress(plain, mtime=0)
    cuts = sorted(rnd.sample(range(len(plain) + 1), min(len(plain) + 1, rnd.randint(1, 8))))
    pieces = [plain[a:b] for a, b in itertools.pairwise([0, *cuts, len(plain)])]
    return b"".join(gzip.compress(p, mtime=0) for p in pieces)


@_mutator(GZIP)
def gz_not_gzip(data: bytes, rnd: random.Random) -> bytes:
    """The file's content without its gzip layer (a .gz name on plain bytes), or gzip twice."""
    parts = [_inflate(data[a:b]) for a, b in gzip_members(data)]
    plain = b"".join(p for p in parts if p is not None)
    return plain if rnd.random() < 0.5 else gzip.compress(data, mtime=0)


MUTATORS: dict[str, Mutator] = {**GENERIC, **PDF, **WARC, **HTML, **JSONL, **TEXT, **MARKDOWN, **GZIP}
STRUCTURED = {
    "pdf": PDF,
    "html": HTML,
    "warc": WARC,
    "jsonl": JSONL,
    "markdown": {**MARKDOWN, **TEXT},
    "text": TEXT,
}


def mutators_for(seed: Seed) -> list[str]:
    """Names of the mutators that apply to a seed: generic, its format's structure-aware ones, gzip."""
    names = [*GENERIC, *STRUCTURED[seed.fmt]]
    return names + list(GZIP) if seed.suffix.endswith(".gz") else names


def _in_member(data: bytes, fn: Mutator, rnd: random.Random) -> bytes:
    """Apply a content mutator inside one gzip member (decompress, mutate, recompress)."""
    spans = [(a, b, inner) for a, b in gzip_members(data) if (inner := _inflate(data[a:b])) is not None]
    if not spans:
        return fn(data, rnd)
    a, b, inner = rnd.choice(spans)
    level = rnd.choice((1, 6, 9))
    return data[:a] + gzip.compress(fn(inner, rnd), compresslevel=level, mtime=0) + data[b:]


def apply_op(data: bytes, gz: bool, op: Op) -> bytes:
    """One operation: a mutator with its own seeded Random (inside a gzip member for gzip files)."""
    name, op_seed = op
    fn, rnd = MUTATORS[name], random.Random(op_seed)
    out = _in_member(data, fn, rnd) if gz and name not in GZIP else fn(data, rnd)
    return out[:MAX_CASE_BYTES]


def apply_ops(seed: Seed, ops: Iterable[Op]) -> bytes:
    """A seed's bytes after the operations, in order."""
    data = seed.data
    for op in ops:
        data = apply_op(data, seed.suffix.endswith(".gz"), op)
    return data


# ---- cases and file names ------------------------------------------------------------------------

_HOSTILE = (" ", "  ", "'", '"', "`", "$", "$(id)", ";", "&", "|", "<", ">", "*", "?", "[", "]", "{a,b}")
_HOSTILE += (
    "~",
    "!",
    "#",
    "%",
    "%2F",
    "\\",
    "\n",
    "\t",
    "\r",
    "-",
    "--",
    "é",
    "中文",
    "😀",
    "\u202e",
    "\u200d",
)
_HOSTILE += ("e\u0301", "\ufeff", "file:", "?q=1#frag", "..", "\x7f", "\x01")
# Bytes that are not UTF-8: Linux allows them in names; Python carries them as lone surrogates.
_NON_UTF8 = ("\udcff\udcfe", "\udc80", "\udced\udca0\udc80", "caf\udce9")
# Name pieces that fail the whole stage while a finding about them is pending (none now: names that are
# not UTF-8 and braces, read as a Prefect name template, were findings 1 and 2). Runs that look past them
# pass `avoid_pending`; a new name finding adds its pieces here and its regression test.
PENDING_NAME_PIECES: frozenset[str] = frozenset()

_SUFFIXES = {
    "pdf": (".pdf",),
    "html": (".html", ".htm", ".xhtml"),
    "warc": (".warc", ".warc.gz", ".arc", ".arc.gz"),
    "text": (".txt", ".md", ".jsonl", ".ndjson", ".markdown", ".text", ".txt.gz", ".jsonl.gz", ".md.gz"),
}
# Names ingest does not read (recorded as unsupported_file_type); never .urls, which would fetch URLs.
_UNSUPPORTED = ("", ".docx", ".bin", ".gz", ".pdf.bak", ".json")


@dataclass(frozen=True)
class Case:
    """One fuzzed input file: its name, bytes, and how to rebuild it."""

    name: str
    data: bytes
    kind: str
    """The kind of the seed it was made from (its name may say otherwise)."""
    origin: str
    ops: tuple[Op, ...]


def _stem(seed: Seed, rnd: random.Random, avoid_pending: bool) -> str:
    """A file stem: usually the seed's own, sometimes shell-hostile or not UTF-8, never a hidden name."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(seed.origin.split(" [")[0]).name.split(".")[0])[:40] or "x"
    roll = rnd.random()
    if roll < 0.8:
        return base
    pieces = rnd.sample(_HOSTILE, rnd.randint(1, 4))
    if roll > 0.95:
        pieces.append(rnd.choice(_NON_UTF8))
    if avoid_pending:  # filtered after drawing, so every other choice stays the same
        pieces = [p for p in pieces if p not in PENDING_NAME_PIECES]
    rnd.shuffle(pieces)
    stem = "".join(pieces) + base
    return "_" + stem if stem.startswith(".") else stem


def _suffix(seed: Seed, rnd: random.Random) -> str:
    """The seed's own suffix (sometimes upper-cased), or now and then another kind's (a mislabelled file)."""
    roll = rnd.random()
    if roll < 0.05:
        other = [s for kind, suffixes in _SUFFIXES.items() if kind != seed.kind for s in suffixes]
        return rnd.choice(other)
    if roll < 0.07:
        return rnd.choice(_UNSUPPORTED)
    return seed.suffix.upper() if roll < 0.1 else seed.suffix


def make_case(
    seeds: list[Seed] | tuple[Seed, ...],
    rnd: random.Random,
    uid: str = "",
    weights: dict[str, float] | None = None,
    avoid_pending: bool = False,
) -> Case:
    """A fuzz case: a seed picked by kind weight, up to four mutations, a name keeping the seed's suffix
    (or, now and then, mislabelled); `uid` goes into the name so cases of one batch never collide;
    `avoid_pending` leaves out the name pieces of pending findings (PENDING_NAME_PIECES)."""
    weights = weights or DEFAULT_WEIGHTS
    kinds = sorted({s.kind for s in seeds} & set(weights))
    kind = rnd.choices(kinds, [weights[k] for k in kinds])[0]
    seed = rnd.choice([s for s in seeds if s.kind == kind])
    names = mutators_for(seed)
    structured = list(STRUCTURED[seed.fmt]) + (list(GZIP) if seed.suffix.endswith(".gz") else [])
    ops = []
    for _ in range(rnd.choice((0, 1, 1, 1, 2, 2, 3, 4)) if rnd.random() > 0.02 else 0):
        name = rnd.choice(structured if rnd.random() < 0.55 else names)
        ops.append((name, rnd.getrandbits(32)))
    name = f"{_stem(seed, rnd, avoid_pending)}~{uid}{_suffix(seed, rnd)}"
    return Case(name, apply_ops(seed, ops), kind, seed.origin, tuple(ops))


def case_at(
    seeds: list[Seed] | tuple[Seed, ...],
    run_seed: int,
    index: int,
    weights: dict[str, float] | None = None,
    avoid_pending: bool = False,
) -> Case:
    """Case number `index` of the run seeded `run_seed` (each case has its own Random: any one is rebuilt
    alone)."""
    return make_case(seeds, random.Random(f"{run_seed}:{index}"), str(index), weights, avoid_pending)


def write_cases(cases: Iterable[Case], folder: Path) -> list[Path]:
    """Write each case into folder under its name; return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in cases:
        path = folder / case.name
        path.write_bytes(case.data)
        paths.append(path)
    return paths


# ---- the property --------------------------------------------------------------------------------


def file_uri(path: Path | str) -> str:
    """The URI ingest records as a file's input_uri."""
    return Path(path).resolve().as_uri()


# Drop reasons that are the isolation net catching a bug (or a limit being hit), not an extractor's verdict.
NET_REASONS = frozenset(
    {"extract_error", "extract_crashed", "extract_timeout", "extract_out_of_memory", "record_unwritable"}
    | {"input_no_records"}
)


@dataclass
class StageCheck:
    """What one ingest stage made of a set of fuzzed files, and every way it broke the property."""

    files: int
    documents: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    unaccounted: list[str] = field(default_factory=list)
    """Fuzzed files that no document or drop names as its input."""
    over_time: list[str] = field(default_factory=list)
    over_memory: list[str] = field(default_factory=list)
    max_input_seconds: float = 0.0
    peak_worker_rss_mb: float = 0.0
    net: list[tuple[str, str, str]] = field(default_factory=list)
    """(input URI, reason, detail) of every drop the isolation net made (see NET_REASONS)."""

    @property
    def ok(self) -> bool:
        """Whether every file is accounted for and every cap held."""
        return not (self.unaccounted or self.over_time or self.over_memory)


def _column_rows(paths: list[Path], schema: Any, columns: list[str]) -> Iterator[dict[str, Any]]:
    """Rows (only the named columns) of every shard listed."""
    from storage.shards import read_shard

    for path in paths:
        yield from read_shard(path, schema, columns).to_pylist()


def check_stage(
    stage_dir: Path | str, files: Iterable[Path | str], cfg: Any, slack_s: float = 5.0
) -> StageCheck:
    """Read a complete ingest stage's shards and drops directly and check the property for these files:
    each is some document's or drop's input, no input took longer than file_timeout_s (+ slack: the kill
    and reap), no worker's peak memory went over worker_memory_mb."""
    from storage.layout import manifest_shards, read_manifest
    from storage.refs import ShardRef
    from storage.schemas import DOCUMENT_SCHEMA, DROP_SCHEMA

    stage = Path(stage_dir)
    wanted = {file_uri(f): str(f) for f in files}
    check = StageCheck(files=len(wanted))
    seen: set[str] = set()
    for row in _column_rows(manifest_shards(stage), DOCUMENT_SCHEMA, ["input_uri"]):
        check.documents += 1
        seen.add(row["input_uri"])
    drop_columns = ["input_uri", "drop_reason", "detail"]
    for row in _column_rows(manifest_shards(stage, key="drops_path"), DROP_SCHEMA, drop_columns):
        check.drops[row["drop_reason"]] += 1
        seen.add(row["input_uri"])
        if row["drop_reason"] in NET_REASONS:
            check.net.append((row["input_uri"], row["drop_reason"], row["detail"]))
    check.unaccounted = sorted(path for uri, path in wanted.items() if uri not in seen)
    for entry in (read_manifest(stage) or {}).get("shards", []):
        ref = ShardRef.model_validate(entry)
        seconds, rss = ref.max_input_seconds or 0.0, ref.peak_worker_rss_mb or 0.0
        check.max_input_seconds = max(check.max_input_seconds, seconds)
        check.peak_worker_rss_mb = max(check.peak_worker_rss_mb, rss)
        if seconds > cfg.file_timeout_s + slack_s:
            check.over_time.append(f"{ref.path}: {seconds:.1f} s")
        if rss > cfg.worker_memory_mb:
            check.over_memory.append(f"{ref.path}: {rss:.0f} MB")
    return check


def unaccounted(stage_dir: Path | str, files: Iterable[Path | str]) -> list[str]:
    """The files no document or drop of the stage names as its input (empty when every one is)."""
    from tasks.extract import IngestConfig

    return check_stage(stage_dir, files, IngestConfig()).unaccounted


@dataclass
class Extraction:
    """What the isolated extractor produced for one file."""

    records: list[Any] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float | None = None


def extract_isolated(path: Path, cfg: Any, timeout_s: float = 20.0, memory_mb: int = 2048) -> Extraction:
    """Run ingest's extractor on one file in the isolated worker, exactly as ingest routes it."""
    from tasks.extract import extract_file
    from tasks.inputs import discover
    from tasks.isolate import Failure, Finished, run_isolated

    (item,), _ = discover([str(path)])
    out = Extraction()
    for event in run_isolated(extract_file, [(item, cfg)], timeout_s=timeout_s, memory_mb=memory_mb):
        if isinstance(event, Finished):
            out.seconds, out.peak_rss_mb = event.seconds, event.peak_rss_mb
        elif isinstance(event, Failure):
            out.failures.append(event)
        else:
            out.records.extend(event[1])
    return out


# Failures that mean the input is hostile (the caps did their job); an exception is an extractor bug.
TOLERATED_FAILURES = frozenset({"extract_timeout", "extract_out_of_memory"})


def violations(result: Extraction) -> list[str]:
    """Every way one file's extraction broke the property: records that are not Documents or Drops, a
    Document that cannot be stored, a Drop without reason or that cannot be stored, an exception or crash
    in the extractor, or no record at all."""
    from storage.schemas import Document, Drop, drops_table, storable_documents

    problems = [
        f"not a Document or Drop: {type(r).__name__}"
        for r in result.records
        if not isinstance(r, (Document, Drop))
    ]
    docs = [r for r in result.records if isinstance(r, Document)]
    drops = [r for r in result.records if isinstance(r, Drop)]
    _, unwritable = storable_documents(docs)
    problems += [f"document cannot be stored: {d.detail}" for d in unwritable]
    problems += [f"drop without a reason: {d!r}"[:300] for d in drops if not d.reason]
    try:
        drops_table(drops)
    except Exception as exc:  # the property under test: any conversion error is a finding
        problems.append(f"drops cannot be stored: {type(exc).__name__}: {exc}")
    problems += [f"{f.reason}: {f.detail}" for f in result.failures if f.reason not in TOLERATED_FAILURES]
    if not result.records and not result.failures:
        problems.append("no records at all (ingest would add input_no_records)")
    return problems


def minimize(data: bytes, fails: Callable[[bytes], bool], rounds: int = 200) -> bytes:
    """A smaller input that still fails: remove ever smaller chunks while `fails` holds (delta debugging)."""
    chunk = max(1, len(data) // 2)
    tries = 0
    while chunk >= 1 and tries < rounds:
        start, shrunk = 0, False
        while start < len(data) and tries < rounds:
            candidate = data[:start] + data[start + chunk :]
            tries += 1
            if fails(candidate):
                data, shrunk = candidate, True
            else:
                start += chunk
        if not shrunk:
            chunk //= 2
    return data
