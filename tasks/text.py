"""Plain text, Markdown and JSONL files (optionally gzipped) into Documents, with Drops for the rest.

One file of .txt/.text/.md/.markdown is one document; a .jsonl/.ndjson file is streamed line by line and
each record is one document, keyed by its own id (`part="id:<id>"`) when it has a unique one, else by
its line number (`part="line:<n>"`, 1-based).

Drop reasons: unsupported_file_type, text_read_error, text_too_large, text_binary, text_empty,
jsonl_bad_line, jsonl_missing_text, extract_out_of_memory (a file, or one JSONL line, over the worker's
memory cap), and text_extract_error for anything unexpected. Drops of JSONL lines carry the line number
(`record_index`) and the byte offset of the line in the (decompressed) file.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

import charset_normalizer
from pydantic import BaseModel, ConfigDict, Field

from storage.schemas import Document, Drop, new_document
from tasks.gutenberg import strip_gutenberg
from tasks.isolate import OUT_OF_MEMORY  # the worker's own reason: a JSONL line over the cap costs that line
from tasks.markdown_text import clean_title, markdown_to_text

SOURCE = "text"
KINDS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown"}
KINDS |= {".jsonl": "jsonl", ".ndjson": "jsonl"}

# UTF-32 first: its little-endian BOM starts with the UTF-16 one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_C1_BYTES = re.compile(rb"[\x80-\x9f]")  # where cp1252 and latin-1 differ
_SNIFF_BYTES = 8192  # where NUL bytes mean "binary", as git and grep judge it
_JUNK = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")
_MEMORY_DETAIL = "extracting it needs more memory than the worker may use (worker_memory_mb)"
# JSONL records nested deeper are bad lines: json.loads gives up at about 1000 levels, and pickle, which
# sends records out of the isolated worker, at about 500, losing the whole batch of records with it.
_MAX_DEPTH = 100
_TOO_DEEP = f"nested deeper than {_MAX_DEPTH} levels"


class TextConfig(BaseModel):
    """How plain text, Markdown and JSONL files become documents."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    jsonl_text_field: str = Field(default="text", min_length=1)
    """JSONL field holding the document text (a dotted path such as `doc.body` reaches nested objects)."""
    jsonl_id_field: str = Field(default="id", min_length=1)
    """JSONL field holding the record's own id; when present and unique in the file it keys the document
    (`id:<value>`) instead of its line number (`line:<n>`), so re-ordering the file keeps document ids."""
    jsonl_title_fields: tuple[str, ...] = ("title", "metadata.title")
    """JSONL fields tried in order for the document title (dotted paths; Dolma keeps it under `metadata`)."""
    jsonl_url_fields: tuple[str, ...] = ("url", "metadata.url")
    """JSONL fields tried in order for the original URL, stored as `meta.url`."""
    jsonl_keep_record: bool = True
    """Copy every other field of a JSONL record (all but the text) into `meta.record`, so upstream metadata
    such as language scores is kept."""
    strip_gutenberg: bool = True
    """Remove Project Gutenberg license headers and footers from plain text files, taking the title and
    author from the header."""
    max_doc_bytes: int = Field(default=64 << 20, gt=0)
    """A single-document file (or one JSONL line) larger than this is dropped as `text_too_large` without
    being read; gzipped files are also checked after decompression."""
    split_chars: int = Field(default=0, ge=0)
    """Cut a plain-text or Markdown file longer than this into documents of at most about this many
    characters at blank lines (parts `chunk:<k>`), e.g. a corpus like Tiny Shakespeare that is one long
    file, so it can be split into train and validation; 0 keeps one document per file."""
    max_control_ratio: float = Field(default=0.05, ge=0.0, le=1.0)
    """A text whose share of control characters (other than tab, newlines, form feed) and U+FFFD is above
    this is binary junk and dropped as `text_binary`."""


class _Origin(NamedTuple):
    """Where the documents of one file come from."""

    uri: str
    fetched_at: datetime


def text_kind(path: Path) -> str | None:
    """The kind of a text input ("text", "markdown" or "jsonl"), looking through a .gz suffix."""
    name = path.name.lower().removesuffix(".gz")
    return KINDS.get(Path(name).suffix)


def decode_text(raw: bytes) -> tuple[str, str]:
    """Decode bytes to text with LF newlines: BOM, then strict UTF-8, then a detector, then cp1252/latin-1."""
    text, encoding = _decode(raw)
    return normalize_newlines(text).removeprefix("\ufeff"), encoding


def normalize_newlines(text: str) -> str:
    """Turn CRLF and lone CR line ends into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode(raw: bytes) -> tuple[str, str]:
    """Decode bytes, naming the encoding used (with "+replace" when bad bytes became U+FFFD)."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom) :].decode(encoding.removesuffix("-sig")), encoding
            except UnicodeDecodeError:
                # A BOM is strong evidence; a truncated tail should not discard the whole text.
                return raw[len(bom) :].decode(encoding.removesuffix("-sig"), "replace"), f"{encoding}+replace"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    encoding = _detect(raw)
    for candidate in (encoding, "cp1252"):
        if candidate:
            try:
                return raw.decode(candidate), candidate
            except (UnicodeDecodeError, LookupError):
                continue
    return raw.decode("latin-1"), "latin-1"  # every byte is a latin-1 character


def _detect(raw: bytes) -> str | None:
    """charset-normalizer's pick, unless cp1252 reads the bytes at least as well."""
    best = charset_normalizer.from_bytes(raw).best()
    if (
        best is None
        or best.encoding == "cp1252"
        or (best.encoding == "latin_1" and not _C1_BYTES.search(raw))
    ):
        return best and best.encoding
    # The detector breaks ties arbitrarily, often as cp1250, which reads French "è" as "č" and Spanish
    # "ñ" as "ń"; cp1252, the most common legacy encoding, wins when it scores no worse.
    western = charset_normalizer.from_bytes(raw, cp_isolation=["cp1252"]).best()
    if western is not None and western.chaos <= best.chaos and western.coherence >= best.coherence:
        return "cp1252"
    return best.encoding


def junk_ratio(text: str) -> float:
    """Share of control characters (not tab, newlines or form feed) and U+FFFD in the text."""
    return len(_JUNK.findall(text)) / len(text) if text else 0.0


def _looks_binary(head: bytes) -> bool:
    """NUL bytes near the start mean binary, unless a UTF-16/32 BOM explains them."""
    wide = any(head.startswith(bom) for bom, enc in _BOMS if not enc.startswith("utf-8"))
    return not wide and b"\x00" in head[:_SNIFF_BYTES]


def _junk_drop(text: str, origin: _Origin, cfg: TextConfig, part: str = "", where: str = "") -> Drop | None:
    """A text_binary Drop when too much of the text is control characters (where prefixes the detail)."""
    ratio = junk_ratio(text)
    if ratio <= cfg.max_control_ratio:
        return None
    detail = f"{where}{ratio:.1%} control characters is over max_control_ratio={cfg.max_control_ratio}"
    return Drop(origin.uri, SOURCE, "text_binary", detail, part)


# --- Single-document files --------------------------------------------------------------------------


def _read_capped(path: Path, size: int, gz: bool, cap: int) -> bytes | None:
    """The file's bytes (decompressed), or None when it is over the cap (checked before reading)."""
    if size > cap:
        return None
    if not gz:
        return path.read_bytes()
    with gzip.open(path, "rb") as f:
        raw = f.read(cap + 1)  # never inflate a gzip bomb past the cap
    return None if len(raw) > cap else raw


def split_paragraphs(text: str, max_chars: int) -> list[str]:
    """Paragraphs (blank-line separated) packed in order into chunks of at most `max_chars` characters.

    A paragraph longer than `max_chars` stays whole in a chunk of its own: cutting inside one would make
    documents that start mid-sentence.
    """
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for para in (p.strip("\n") for p in re.split(r"\n[ \t]*\n", text)):
        if not para.strip():
            continue
        if current and size + 2 + len(para) > max_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(para)
        size += len(para) + (2 if size else 0)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _single_document(
    path: Path, size: int, kind: str, origin: _Origin, cfg: TextConfig
) -> list[Document] | Drop:
    """One whole file as one document (or as several, cut at blank lines, with `split_chars`)."""
    gz = path.name.lower().endswith(".gz")
    raw = _read_capped(path, size, gz, cfg.max_doc_bytes)
    if raw is None:
        what = "decompressed size" if gz and size <= cfg.max_doc_bytes else f"{size} bytes"
        return Drop(origin.uri, SOURCE, "text_too_large", f"{what} is over max_doc_bytes={cfg.max_doc_bytes}")
    if _looks_binary(raw):
        return Drop(origin.uri, SOURCE, "text_binary", f"NUL bytes in the first {_SNIFF_BYTES} bytes")
    text, encoding = decode_text(raw)
    meta: dict[str, Any] = {"format": kind, "encoding": encoding}
    title = None
    if kind == "markdown":
        text, title, extra = markdown_to_text(text)
        meta |= extra
    elif cfg.strip_gutenberg:
        text, gutenberg = strip_gutenberg(text)
        if gutenberg is not None:
            meta["gutenberg"] = gutenberg
            title = gutenberg.get("title")
    text = text.strip()
    if not text:
        detail = f"no text left after decoding ({encoding}) and cleaning"
        return Drop(origin.uri, SOURCE, "text_empty", detail)
    if drop := _junk_drop(text, origin, cfg):
        return drop
    fetched = origin.fetched_at
    chunks = (
        split_paragraphs(text, cfg.split_chars) if cfg.split_chars and len(text) > cfg.split_chars else []
    )
    if len(chunks) <= 1:
        return [new_document(text, source=SOURCE, uri=origin.uri, title=title, fetched_at=fetched, meta=meta)]
    return [
        new_document(
            chunk,
            source=SOURCE,
            uri=origin.uri,
            part=f"chunk:{k}",
            title=title,
            fetched_at=fetched,
            meta={**meta, "chunk": k, "chunks": len(chunks)},
        )
        for k, chunk in enumerate(chunks)
    ]


# --- JSONL ------------------------------------------------------------------------------------------


def _lookup(record: dict[str, Any], path: str) -> Any:
    """A field by name, or by dotted path into nested objects; None when absent."""
    if path in record:
        return record[path]
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _without(record: dict[str, Any], path: str) -> dict[str, Any]:
    """A copy of the record without the field at path (copying only the objects along it)."""
    if path in record or "." not in path:
        return {k: v for k, v in record.items() if k != path}
    head, rest = path.split(".", 1)
    if not isinstance(record.get(head), dict):
        return dict(record)
    return {**record, head: _without(record[head], rest)}


def _first_str(record: dict[str, Any], paths: tuple[str, ...]) -> str | None:
    """The first non-empty string among the given fields."""
    for path in paths:
        value = _lookup(record, path)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _reject_constant(name: str) -> float:
    """Refuse NaN/Infinity, which are not JSON and would make meta_json invalid."""
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_line(line: str) -> tuple[Any, str | None]:
    """The JSON value of a line, or None and why it is not valid (or is too deeply nested) JSON."""
    try:
        value = json.loads(line, parse_constant=_reject_constant)
    except ValueError as exc:
        return None, str(exc)
    except RecursionError:  # not a ValueError: json gives up on nesting deeper than the stack
        return None, _TOO_DEEP
    # Counting brackets (strings' included) is cheap and rules out deep nesting for nearly every line.
    if line.count("[") + line.count("{") > _MAX_DEPTH and _deeper_than(value, _MAX_DEPTH):
        return None, _TOO_DEEP
    return value, None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON containers nest more than `limit` levels deep (walked without recursion)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _record_part(
    record: dict[str, Any], line_no: int, seen: set[str], cfg: TextConfig
) -> tuple[str, str | None]:
    """(part, record id): the record's id when it is a scalar not seen earlier in the file, else the line."""
    value = _lookup(record, cfg.jsonl_id_field)
    rid = str(value) if isinstance(value, str | int) and not isinstance(value, bool) and str(value) else None
    if rid is None or rid in seen:
        return f"line:{line_no}", rid
    seen.add(rid)
    return f"id:{rid}", rid


def _jsonl_record(
    line: str, encoding: str, line_no: int, origin: _Origin, cfg: TextConfig, seen: set[str]
) -> Document | Drop:
    """One JSONL line as a document, or the Drop that says why it is not one."""
    part = f"line:{line_no}"
    record, error = _parse_line(line)
    if error is not None:
        return Drop(origin.uri, SOURCE, "jsonl_bad_line", f"line {line_no}: {error}", part)
    if not isinstance(record, dict):
        detail = f"line {line_no}: expected a JSON object, got {type(record).__name__}"
        return Drop(origin.uri, SOURCE, "jsonl_bad_line", detail, part)
    part, rid = _record_part(record, line_no, seen, cfg)
    text = _lookup(record, cfg.jsonl_text_field)
    if not isinstance(text, str) or not text.strip():
        got = "missing" if text is None else "empty" if isinstance(text, str) else type(text).__name__
        detail = f"line {line_no}: text field {cfg.jsonl_text_field!r} is {got}"
        return Drop(origin.uri, SOURCE, "jsonl_missing_text", detail, part)
    text = normalize_newlines(text)
    if drop := _junk_drop(text, origin, cfg, part, f"line {line_no}: "):
        return drop
    meta: dict[str, Any] = {"format": "jsonl", "encoding": encoding, "line": line_no}
    if rid is not None:
        meta["record_id"] = rid
    if url := _first_str(record, cfg.jsonl_url_fields):
        meta["url"] = url
    if cfg.jsonl_keep_record:
        meta["record"] = _without(record, cfg.jsonl_text_field)
    title = _first_str(record, cfg.jsonl_title_fields)
    return new_document(
        text, source=SOURCE, uri=origin.uri, part=part, title=title and clean_title(title),
        fetched_at=origin.fetched_at, meta=meta,
    )  # fmt: skip


def _wide_encoding(stream: IO[bytes]) -> str | None:
    """The codec of a UTF-16/32 stream (by its BOM), whose lines cannot be split on b"\\n"."""
    head = stream.peek(4)[:4]  # type: ignore[attr-defined]
    for bom, encoding in _BOMS:
        if head.startswith(bom) and not encoding.startswith("utf-8"):
            return encoding[:6]  # "utf-16"/"utf-32" consume the BOM themselves
    return None


class _Line(NamedTuple):
    """One line of a JSONL file and where it is."""

    number: int
    """Line number, from 1."""
    offset: int | None
    """Byte offset of the line's start in the (decompressed) file; None in UTF-16/32 files, read as text."""
    size: int
    """Bytes (or characters, read as text) the line takes, newline and any skipped over-long rest included."""
    content: bytes | str | None
    """The line (str when read as text), or None when it is longer than the cap."""

    @property
    def end(self) -> int | None:
        """Byte offset where the next line starts."""
        return None if self.offset is None else self.offset + self.size


def _skip_rest(reader: IO[Any], newline: bytes | str) -> int:
    """Read past the rest of an over-long line without holding it; the number of units skipped."""
    skipped = 0
    while rest := reader.readline(1 << 20):
        skipped += len(rest)
        if rest.endswith(newline):
            break
    return skipped


def _lines(reader: IO[Any], cap: int, text: bool) -> Iterator[_Line]:
    """Every line of a byte (or, with `text`, str) reader, holding at most cap+1 units of any line."""
    newline = "\n" if text else b"\n"
    number, offset = 0, 0
    while line := reader.readline(cap + 1):
        number += 1
        size = len(line)
        content: bytes | str | None = line
        if size > cap and not line.endswith(newline):
            size += _skip_rest(reader, newline)
            content = None
        yield _Line(number, None if text else offset, size, content)
        offset += size


def _line_record(
    line: _Line, wide: str | None, origin: _Origin, cfg: TextConfig, seen: set[str]
) -> Document | Drop | None:
    """The document or drop of one JSONL line (None for a blank line, which holds no record)."""
    n = line.number
    if line.content is None:
        detail = f"line {n} is over max_doc_bytes={cfg.max_doc_bytes}"
        return Drop(origin.uri, SOURCE, "text_too_large", detail, f"line:{n}")
    if isinstance(line.content, str):
        text, encoding = normalize_newlines(line.content), wide or ""
    else:
        text, encoding = decode_text(line.content)
    if not text.strip():
        return None
    try:
        return _jsonl_record(text, encoding, n, origin, cfg, seen)
    except MemoryError:  # within max_doc_bytes, but its objects are not within the worker's memory cap
        return Drop(origin.uri, SOURCE, OUT_OF_MEMORY, f"line {n}: {_MEMORY_DETAIL}", f"line:{n}")


def _placed(record: Document | Drop | None, line: _Line) -> Document | Drop | None:
    """A line's drop with its line number and byte offset filled in (documents keep theirs in meta)."""
    if isinstance(record, Drop):
        return replace(record, record_index=line.number, offset=line.offset)
    return record


def _jsonl_documents(path: Path, origin: _Origin, cfg: TextConfig) -> Iterator[Document | Drop]:
    """Every line of a (gzipped) JSONL file as a Document or Drop; a read error ends the file with a Drop."""
    seen: set[str] = set()
    last = _Line(0, 0, 0, None)  # a failure before the first line is at line 1, byte 0
    records = 0
    try:
        with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb") as f:
            wide = _wide_encoding(f)
            # "replace": one broken UTF-16 unit (a lone surrogate) must cost its line at most, not the file.
            reader: IO[Any] = io.TextIOWrapper(f, encoding=wide, errors="replace") if wide else f
            for last in _lines(reader, cfg.max_doc_bytes, text=wide is not None):
                if record := _placed(_line_record(last, wide, origin, cfg, seen), last):
                    records += 1
                    yield record
    except (OSError, EOFError, zlib.error) as exc:
        n = last.number + 1
        detail = f"read failed after line {last.number}: {type(exc).__name__}: {exc}"
        yield Drop(
            origin.uri, SOURCE, "text_read_error", detail, f"line:{n}", record_index=n, offset=last.end
        )
        return
    if not records:  # empty, blank lines only, or a bare BOM: the file says so, like an empty .txt
        detail = f"no records: {last.number} line(s), none with anything but whitespace"
        yield Drop(origin.uri, SOURCE, "text_empty", detail)


# --- Entry point ------------------------------------------------------------------------------------


def _file_uri(path: Path) -> str:
    """The file's absolute file:// URI, symlinks resolved when possible."""
    try:
        return path.resolve().as_uri()
    except (OSError, RuntimeError):  # a symlink loop: keep the path as given
        return path.absolute().as_uri()


def extract_text_file(path: Path, cfg: TextConfig) -> Iterator[Document | Drop]:
    """Documents from one text, Markdown or JSONL file (optionally .gz); bad input becomes Drops."""
    uri = _file_uri(path)
    kind = text_kind(path)
    if kind is None:
        detail = f"not a text file name: {path.name!r} (expected {', '.join(sorted(KINDS))}, optionally .gz)"
        yield Drop(uri, SOURCE, "unsupported_file_type", detail)
        return
    try:
        stat = path.stat()
        origin = _Origin(uri, datetime.fromtimestamp(stat.st_mtime, tz=UTC))
        if kind == "jsonl":
            yield from _jsonl_documents(path, origin, cfg)
        else:
            result = _single_document(path, stat.st_size, kind, origin, cfg)
            yield from [result] if isinstance(result, Drop) else result
    except (OSError, EOFError, zlib.error) as exc:
        yield Drop(uri, SOURCE, "text_read_error", f"{type(exc).__name__}: {exc}")
    except MemoryError:
        yield Drop(uri, SOURCE, OUT_OF_MEMORY, _MEMORY_DETAIL)
    except Exception as exc:  # the contract: bad input is a Drop, never an exception out of here
        yield Drop(uri, SOURCE, "text_extract_error", f"{type(exc).__name__}: {exc}")
