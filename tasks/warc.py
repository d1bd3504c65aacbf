"""WARC/ARC ingestion: stream an archive and turn each successful HTML capture into a Document.

We read archives with warcio rather than FastWARC: warcio also reads legacy ARC files (FastWARC does
not), tolerates many real-world defects (WARC/0.17-0.18 version lines, bare-LF header lines), and
exposes the per-record facts we use to detect damage (remaining Content-Length, missing record
separators). Parsing is not the bottleneck: main-content extraction costs far more per record.

Damage handling, so that every record read ends as a Document or a Drop and nothing raises:
- a record cut short or with a wrong length -> Drop warc_truncated / warc_malformed;
- an archive that cannot be read further -> a final Drop (uri = the file) after the records before it;
- gzip members that do not line up with records (a whole-file gzip, members split mid-record) -> the
  rest is re-read from the decompressed stream, so those records are recovered, not lost;
- plain ARC files whose writer left out the newline after each record -> read through a repair.

Digest policy (verify_digests): only records whose bytes are provably damaged are dropped.
- Both WARC-Block-Digest and WARC-Payload-Digest fail, or one fails and the other is absent or cannot
  be checked -> Drop warc_malformed.
- One fails while the other matches: the bytes are intact and the writer hashed something else, so the
  document is kept with a `meta["quirks"]` entry: warc_payload_digest_is_block_digest (the payload
  digest header repeats the block digest: the ClueWeb09/12 writer bug), warc_payload_digest_mismatch
  (e.g. hashed the de-chunked body) or warc_block_digest_mismatch (headers changed, payload intact).
  strict_digests drops these too.
- A digest with an unknown algorithm or an undecodable value proves nothing -> kept, quirk
  warc_digest_unverifiable (unless the other digest fails). We check digests with our own reader, which
  never raises on a bad value: warcio's raises mid-record, which would end the archive there.

Provenance: every Drop about a record has `offset` (the record's byte offset in the file) and
`record_index` (its position in the file, from 1); Documents carry them as meta warc_offset and
warc_record_index. In a whole-file gzip, offsets count decompressed bytes (meta
warc_offset_uncompressed, or a note in the Drop's detail). The final "archive unreadable after N
records" Drop has record_index N+1 and the offset where reading stopped. An archive with records but
none that can hold content (only warcinfo/request/metadata) -> one Drop warc_no_content_records; one
with no records at all -> warc_empty.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import gzip
import hashlib
import io
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict
from warcio.archiveiterator import ArchiveIterator
from warcio.limitreader import LimitReader
from warcio.recordloader import ArcWarcRecordLoader

from storage.schemas import Document, Drop
from tasks.web import HtmlConfig, extract_html


class WarcConfig(BaseModel):
    """How WARC/ARC archives are read."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_record_bytes: int = 20_000_000
    """Payloads larger than this many bytes are dropped (warc_record_too_large) without being buffered."""
    resolve_revisits: bool = True
    """Match revisit records to the original capture in the same file; off, they are dropped unresolved."""
    revisit_index_size: int = 500_000
    """Most recent responses remembered for revisit resolution (bounds memory on huge archives)."""
    verify_digests: bool = True
    """Check WARC block/payload digests; records whose bytes do not match are dropped as damaged."""
    strict_digests: bool = False
    """Drop a record when either digest fails even if the other proves the bytes intact."""


HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Longest ARC header line we read before deciding the line is damage rather than a header.
_MAX_ARC_HEADER = 65_536
# Records that describe the crawl rather than capture content: never documents, no drop when intact.
_SKIPPED_TYPES = frozenset({"warcinfo", "request", "metadata", "continuation", "arc_header"})
_CONTENT_TYPES = frozenset({"response", "resource", "conversion"})
# Records whose digests are not checked. A bad digest on a bookkeeping record costs no content. A
# revisit's payload digest names the original's payload, and writers set its block digest from the
# original too (warcio's example-bad-non-chunked.warc.gz does); a revisit never becomes a document.
_UNCHECKED_TYPES = _SKIPPED_TYPES | {"revisit"}


class _ArcReframer(io.RawIOBase):
    """A plain ARC file with the newline after each record put back where the writer left it out.

    Some Heritrix-era ARC writers omitted it; warcio then mistakes the next header for a stray line and
    stops. Bodies are streamed in blocks, so memory stays flat however large a record is.
    """

    def __init__(self, fh: io.BufferedReader) -> None:
        self._fh = fh
        self._left = 0  # body bytes of the current record still to copy
        self._check_newline = False
        self._buf = b""
        self._out = 0  # bytes produced so far
        self._inserted: list[int] = []  # output positions of the newlines we added

    def readable(self) -> bool:
        """This is a readable stream."""
        return True

    def _piece(self, size: int) -> bytes:
        """The next piece of repaired output (empty at end of file)."""
        if self._left > 0:
            data = self._fh.read(min(self._left, size))
            self._left = self._left - len(data) if data else 0
            self._check_newline = self._left == 0 and bool(data)
            return data
        if self._check_newline:
            self._check_newline = False
            if self._fh.peek(1)[:1] not in (b"\n", b""):
                self._inserted.append(self._out)
                return b"\n"
        line = self._fh.readline(_MAX_ARC_HEADER)
        fields = line.split()
        if len(fields) >= 5 and fields[-1].isdigit():  # an ARC header line: URL IP date type length
            self._left = int(fields[-1])
            self._check_newline = self._left == 0
        return line

    def readinto(self, buffer: Any) -> int:
        """Fill buffer with repaired bytes."""
        if not self._buf:
            self._buf = self._piece(len(buffer))
            self._out += len(self._buf)
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def file_offset(self, offset: int) -> int:
        """The position in the original file of a position in the repaired stream."""
        return offset - bisect.bisect_left(self._inserted, offset)


# Writers spell digests in base32 (the WARC norm), hex or base64 (plain or URL-safe). The decoded
# length must equal the algorithm's digest size, and the three spellings never share a length.
_DIGEST_SPELLINGS: tuple[Callable[[str], bytes], ...] = (
    lambda v: base64.b32decode(v.upper() + "=" * (-len(v) % 8)),
    bytes.fromhex,
    lambda v: base64.b64decode(v + "=" * (-len(v) % 4), validate=True),
    lambda v: base64.b64decode(v + "=" * (-len(v) % 4), altchars=b"-_", validate=True),
)


def _digest_bytes(value: str, size: int) -> bytes | None:
    """The raw digest a header value spells, or None when no spelling gives `size` bytes."""
    for decode in _DIGEST_SPELLINGS:
        try:
            raw = decode(value)
        except ValueError:  # binascii.Error is a ValueError
            continue
        if len(raw) == size:
            return raw
    return None


@dataclass
class _Digest:
    """One digest header of a record: the value it claims and the hash we compute to check it."""

    header: str = ""
    expected: bytes | None = None
    hasher: Any = None
    problem: str = ""  # why the header cannot be checked

    @classmethod
    def of(cls, header: str | None) -> _Digest:
        """Parse a WARC-*-Digest header ('algorithm:value'); a bad one is unverifiable, never an error."""
        header = (header or "").strip()
        if not header:
            return cls()
        algo, sep, value = header.partition(":")
        try:
            hasher = hashlib.new(algo.strip().lower().replace("-", ""))  # "SHA-1" names sha1 too
        except ValueError:
            hasher = None
        if not sep or hasher is None or not hasher.digest_size:
            return cls(header, problem=f"unknown hash algorithm {algo.strip()!r}")
        expected = _digest_bytes(value.strip(), hasher.digest_size)
        if expected is None:
            return cls(header, problem=f"value is not a {algo.strip()} digest")
        return cls(header, expected, hasher)

    def update(self, data: bytes) -> None:
        """Hash bytes of the part this digest covers."""
        if self.hasher is not None:
            self.hasher.update(data)

    def verdict(self) -> str:
        """'absent', 'unverifiable', 'ok' or 'failed' (meaningful once the whole block was read)."""
        if not self.header:
            return "absent"
        if self.hasher is None:
            return "unverifiable"
        return "ok" if self.hasher.digest() == self.expected else "failed"

    def describe(self, name: str) -> str:
        """What went wrong with this digest, for a Drop's detail ('' when nothing did)."""
        verdict = self.verdict()
        if verdict == "failed":
            return f"{name} digest failed: {self.header}"
        return f"{name} digest unverifiable: {self.problem}" if verdict == "unverifiable" else ""


class _VerifyingReader(LimitReader):
    """A record's block, hashed as it is read for its WARC-Block-Digest and WARC-Payload-Digest."""

    def __init__(self, stream: Any, limit: int, block: _Digest, payload: _Digest) -> None:
        super().__init__(stream, limit)
        self.block = block
        self.payload = payload
        self._in_payload = False

    def begin_payload(self) -> None:
        """warcio calls this once the HTTP headers (if any) are read: the payload starts here."""
        self._in_payload = True

    def read(self, length: int | None = None) -> bytes:
        """Read and hash."""
        return self._hashed(super().read(length))

    def readline(self, length: int | None = None) -> bytes:
        """Read a line and hash it."""
        return self._hashed(super().readline(length))

    def _hashed(self, data: bytes) -> bytes:
        """Feed bytes just read to the digests that cover them."""
        self.block.update(data)
        if self._in_payload:
            self.payload.update(data)
        return data


class _Loader(ArcWarcRecordLoader):
    """warcio's record loader with digests checked by _VerifyingReader instead of warcio's own."""

    def wrap_digest_verifying_stream(
        self, stream: Any, rec_type: str, rec_headers: Any, digest_checker: Any, length: int | None = None
    ) -> tuple[Any, bool]:
        """Wrap the block in a hashing reader when the record declares a digest."""
        if rec_type in _UNCHECKED_TYPES:
            return stream, False
        block = _Digest.of(rec_headers.get_header("WARC-Block-Digest"))
        # A segment's payload digest covers the payload of all segments together.
        segment = rec_headers.get_header("WARC-Segment-Number")
        payload = _Digest() if segment else _Digest.of(rec_headers.get_header("WARC-Payload-Digest"))
        if not block.header and not payload.header:
            return stream, False
        return _VerifyingReader(stream, length or 0, block, payload), True


class _Iterator(ArchiveIterator):
    """warcio's archive iterator with our loader; ARC records stay ARC (arc2warc ids are random)."""

    def __init__(self, fh: IO[bytes], check_digests: bool) -> None:
        super().__init__(fh, check_digests=check_digests)
        self.loader = _Loader(verify_http=False, arc2warc=False)

    def _consume_blanklines(self) -> tuple[bytes | None, int]:
        """warcio's separator check, without its warning: it prints the whole next line to stderr, megabytes
        of binary for a damaged record, and we record the condition as a drop (err_count) anyway."""
        with contextlib.redirect_stderr(io.StringIO()):
            return super()._consume_blanklines()


def _digest_verdict(reader: _VerifyingReader, strict: bool) -> tuple[str, tuple[str, ...]]:
    """(why the record is damaged or '', quirks) from the digests of a fully read record."""
    block, payload = reader.block, reader.payload
    verdicts = (block.verdict(), payload.verdict())
    if "failed" not in verdicts:
        return "", ("warc_digest_unverifiable",) if "unverifiable" in verdicts else ()
    if not strict and verdicts[0] == "ok":
        same = payload.header == block.header
        return "", ("warc_payload_digest_is_block_digest" if same else "warc_payload_digest_mismatch",)
    if not strict and verdicts[1] == "ok":
        return "", ("warc_block_digest_mismatch",)
    return "; ".join(filter(None, (block.describe("block"), payload.describe("payload")))), ()


@dataclass
class _Scan:
    """Mutable state of one pass over an archive."""

    file_uri: str
    file_name: str
    cfg: WarcConfig
    html_cfg: HtmlConfig
    records: int = 0
    stream_mode: bool = False
    reframer: _ArcReframer | None = None
    pending: Drop | None = None
    index: dict[str, str] = field(default_factory=dict)
    silent: Counter[str] = field(default_factory=Counter)  # records without an outcome, by WARC-Type
    iterator: _Iterator | None = None  # of the current pass: where it stopped if it fails


@dataclass(frozen=True)
class _Found:
    """Where an intact record is and what its digests said."""

    uri: str
    part: str
    offset: int
    index: int
    quirks: tuple[str, ...] = ()


# ARC records carry five header fields; these are their WARC equivalents. ARC has no record ids.
_ARC_FIELDS = {
    "WARC-Target-URI": "uri",
    "WARC-Date": "archive-date",
    "Content-Length": "length",
    "Content-Type": "content-type",
}


def _header(rec: Any, name: str) -> str:
    """A WARC header value (or its ARC equivalent), stripped, or '' when absent."""
    if rec.format == "arc" and (name := _ARC_FIELDS.get(name, "")) == "":
        return ""
    return (rec.rec_headers.get_header(name) or "").strip()


def _warc_date(value: str) -> datetime | None:
    """Parse a WARC-Date (ISO 8601) or ARC date (YYYYmmddHHMMSS...) as UTC; None if unparseable."""
    try:
        if value.isdigit():
            return datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _mime(rec: Any) -> str:
    """The payload's media type: HTTP Content-Type (else the crawler's guess), or the record's own."""
    if rec.http_headers:
        ctype = rec.http_headers.get_header("Content-Type") or _header(rec, "WARC-Identified-Payload-Type")
    else:  # resource records, and responses without HTTP (dns:, ARC): the record type is the payload's
        ctype = _header(rec, "Content-Type")
    return ctype.split(";", 1)[0].strip().lower()


def _read_brotli(stream: IO[bytes], limit: int) -> bytes:
    """Brotli-decode a stream, stopping once more than `limit` bytes came out (bomb-safe)."""
    import brotli

    dec, out = brotli.Decompressor(), bytearray()
    while len(out) <= limit and (chunk := stream.read(65_536)):
        out += dec.process(chunk, output_buffer_limit=limit + 1 - len(out))
        while not dec.can_accept_more_data() and len(out) <= limit:
            out += dec.process(b"", output_buffer_limit=limit + 1 - len(out))
    return bytes(out[: limit + 1])


def _read_payload(rec: Any, limit: int) -> tuple[bytes | None, str]:
    """Decoded payload (chunked/gzip/br undone) up to limit+1 bytes, or None and the error."""
    from warcio.bufferedreaders import ChunkedDataReader

    try:
        headers = rec.http_headers
        if headers and (headers.get_header("Content-Encoding") or "").strip().lower() == "br":
            # warcio's brotli hook fails with brotli >= 1.2 (it sets an attribute the new
            # Decompressor refuses), so we undo the transfer coding and decode brotli ourselves.
            chunked = (headers.get_header("Transfer-Encoding") or "").strip().lower() == "chunked"
            return _read_brotli(ChunkedDataReader(rec.raw_stream) if chunked else rec.raw_stream, limit), ""
        return rec.content_stream().read(limit + 1), ""
    except Exception as exc:  # zlib, brotli and chunked decoders each raise their own error types
        return None, f"{type(exc).__name__}: {exc}"


def _damage(rec: Any, separator_errors: int) -> tuple[str, str] | None:
    """(reason, detail) if the record's framing is broken, checked after it was fully read."""
    length = _header(rec, "Content-Length")
    if not length:
        # Every record has a Content-Length: without one, the header block itself was cut short.
        return "warc_truncated", "header block ends before its Content-Length field"
    if not length.isdigit():
        return "warc_malformed", f"invalid record length {length!r}"
    left = getattr(rec.raw_stream, "limit", 0)
    if left > 0:
        return "warc_truncated", f"record ends {left} bytes before its Content-Length ({rec.length})"
    if separator_errors:
        return "warc_malformed", "record not followed by the blank-line separator: Content-Length is wrong"
    return None


def _check(scan: _Scan, rec: Any, separator_errors: int) -> tuple[tuple[str, str] | None, tuple[str, ...]]:
    """Damage to the record's bytes (reason, detail), if any, and the quirks of an intact record."""
    if damage := _damage(rec, separator_errors):
        return damage, ()
    if not isinstance(rec.raw_stream, _VerifyingReader):  # no digests, or not checked (_UNCHECKED_TYPES)
        return None, ()
    failure, quirks = _digest_verdict(rec.raw_stream, scan.cfg.strict_digests)
    return (("warc_malformed", failure) if failure else None), quirks


def _remember(scan: _Scan, rec: Any, part: str, uri: str) -> None:
    """Index a response so later revisits can name it; bounded, oldest entries go first."""
    label = f"{part} ({uri}, {_header(rec, 'WARC-Date')})"
    keys = [f"id:{part}", f"uri:{uri} {_header(rec, 'WARC-Date')}"]
    if digest := _header(rec, "WARC-Payload-Digest"):
        keys.append(f"digest:{digest}")
    for key in keys:
        scan.index[key] = label
    while len(scan.index) > scan.cfg.revisit_index_size:
        del scan.index[next(iter(scan.index))]


def _revisit(scan: _Scan, rec: Any, uri: str, part: str) -> Drop:
    """A revisit carries no payload of its own: name the original capture, or say it is missing."""
    if not scan.cfg.resolve_revisits:
        return Drop(uri, "warc", "warc_revisit_skipped", "revisit records are not resolved (config)", part)
    keys = [
        f"id:{_header(rec, 'WARC-Refers-To')}",
        f"digest:{_header(rec, 'WARC-Payload-Digest')}",
        f"uri:{_header(rec, 'WARC-Refers-To-Target-URI')} {_header(rec, 'WARC-Refers-To-Date')}",
    ]
    for key in keys:
        if original := scan.index.get(key):
            return Drop(uri, "warc", "warc_revisit_duplicate", f"same payload as record {original}", part)
    profile = _header(rec, "WARC-Profile").rsplit("/", 1)[-1] or "unknown profile"
    return Drop(
        uri,
        "warc",
        "warc_revisit_unresolved",
        f"revisit ({profile}) of {_header(rec, 'WARC-Refers-To-Target-URI') or uri} "
        f"at {_header(rec, 'WARC-Refers-To-Date') or '?'}: original capture not in this file",
        part,
    )


def _content(scan: _Scan, rec: Any, at: _Found, payload: bytes | None, err: str) -> Document | Drop:
    """Document or Drop for a response/resource record whose bytes are intact."""
    uri, part = at.uri, at.part
    status = rec.http_headers.get_statuscode() if rec.http_headers else None
    if rec.rec_type == "response" and uri.lower().startswith(("http:", "https:")):
        if not status or not status.isdigit():
            return Drop(uri, "warc", "warc_malformed", "response record has no HTTP status line", part)
        if not 200 <= int(status) < 300:
            location = rec.http_headers.get_header("Location")
            detail = f"HTTP {status}" + (f" (Location: {location})" if location else "")
            return Drop(uri, "warc", "warc_http_status", detail, part)
    mime = _mime(rec)
    if mime not in HTML_TYPES:
        return Drop(uri, "warc", "warc_not_html", f"content type {mime or 'missing'!r}", part)
    if payload is None:
        return Drop(uri, "warc", "warc_payload_error", f"payload could not be decoded: {err}", part)
    if len(payload) > scan.cfg.max_record_bytes:
        return Drop(
            uri, "warc", "warc_record_too_large", f"> max_record_bytes={scan.cfg.max_record_bytes}", part
        )
    ctype = rec.http_headers.get_header("Content-Type") if rec.http_headers else _header(rec, "Content-Type")
    meta: dict[str, Any] = {
        "warc_file": scan.file_name,
        "warc_record_id": part,
        "warc_offset": at.offset,
        "warc_record_index": at.index,
        "http_status": int(status) if status and status.isdigit() else None,
        "content_type": ctype,
        "warc_payload_digest": _header(rec, "WARC-Payload-Digest") or None,
    }
    if scan.stream_mode:
        meta["warc_offset_uncompressed"] = True  # whole-file gzip: offsets count decompressed bytes
    if at.quirks:
        meta["quirks"] = list(at.quirks)
    if trec_id := _header(rec, "WARC-TREC-ID"):  # ClueWeb09/12: the id TREC relevance judgements use
        meta["warc_trec_id"] = trec_id
    return extract_html(
        payload,
        uri=uri,
        cfg=scan.html_cfg,
        source="warc",
        part=part,
        fetched_at=_warc_date(_header(rec, "WARC-Date")),
        content_type=ctype,
        meta=meta,
    )


def _wants_payload(rec: Any) -> bool:
    """Whether the record might become a document, so its payload is worth reading."""
    if rec.rec_type not in _CONTENT_TYPES:
        return False
    status = rec.http_headers.get_statuscode() if rec.http_headers else None
    return (status is None or status.startswith("2")) and _mime(rec) in HTML_TYPES


def _file_offset(scan: _Scan, offset: int) -> int:
    """A position warcio reports, as a position in the file (ARC repairs added bytes)."""
    return scan.reframer.file_offset(offset) if scan.reframer is not None else offset


def _classify(scan: _Scan, rec: Any, at: _Found, payload: bytes | None, err: str) -> Document | Drop | None:
    """Outcome of an intact record: a Document, a Drop, or None for crawl bookkeeping records."""
    if rec.rec_type in _SKIPPED_TYPES:
        return None
    if _header(rec, "WARC-Segment-Number"):
        return Drop(at.uri, "warc", "warc_segmented", "segmented records are not reassembled", at.part)
    if rec.rec_type == "revisit":
        return _revisit(scan, rec, at.uri, at.part)
    if rec.rec_type not in _CONTENT_TYPES:
        return Drop(at.uri, "warc", "warc_unknown_record", f"WARC-Type {rec.rec_type!r}", at.part)
    if rec.rec_type == "response" and scan.cfg.resolve_revisits:
        _remember(scan, rec, at.part, at.uri)
    try:
        return _content(scan, rec, at, payload, err)
    except Exception as exc:  # a header we could not anticipate must not end the whole archive
        return Drop(at.uri, "warc", "warc_malformed", f"{type(exc).__name__}: {exc}", at.part)


def _located(scan: _Scan, drop: Drop, offset: int | None, index: int) -> Drop:
    """The drop with its record's offset and position in the file."""
    note = " [offset counts decompressed bytes: whole-file gzip]" if scan.stream_mode else ""
    return replace(drop, offset=offset, record_index=index, detail=drop.detail + note)


def _record(scan: _Scan, rec: Any, it: _Iterator, index: int) -> Document | Drop | None:
    """Outcome of the index-th record of the file, with its provenance."""
    payload, err = None, ""
    if _wants_payload(rec):
        payload, err = _read_payload(rec, scan.cfg.max_record_bytes)
    errors_before = it.err_count
    # Reads the record to its end, so its digests and separator get checked.
    offset = _file_offset(scan, it.get_record_offset())
    uri = _header(rec, "WARC-Target-URI") or scan.file_uri
    # ARC records have no id: the file position is their stable identity.
    part = _header(rec, "WARC-Record-ID") or f"{scan.file_name}@{offset}"
    damage, quirks = _check(scan, rec, it.err_count - errors_before)
    if damage:
        detail = f"{rec.rec_type} record: {damage[1]} (offset {offset})"
        outcome: Document | Drop | None = Drop(uri, "warc", damage[0], detail, part)
    else:
        outcome = _classify(scan, rec, _Found(uri, part, offset, index, quirks), payload, err)
    return _located(scan, outcome, offset, index) if isinstance(outcome, Drop) else outcome


def _walk(scan: _Scan, fh: IO[bytes], skip: int) -> Iterator[Document | Drop]:
    """Yield outcomes for every record after the first `skip` ones; iteration errors propagate."""
    it = scan.iterator = _Iterator(fh, scan.cfg.verify_digests)
    for n, rec in enumerate(it):
        if n < skip:
            continue
        if scan.pending is not None:
            yield scan.pending  # the archive went on after it: the record really was cut short
            scan.pending = None
        # Counted once its outcome is known: a record whose reading fails is the final drop's.
        outcome = _record(scan, rec, it, scan.records + 1)
        scan.records += 1
        if outcome is None:
            scan.silent[rec.rec_type or "untyped"] += 1
        if isinstance(outcome, Drop) and outcome.reason == "warc_truncated" and not scan.stream_mode:
            # In a .gz file a record that ends early may only be split across gzip members; if the
            # next read fails, extract_warc re-reads this record from the decompressed stream.
            scan.pending = outcome
        elif outcome is not None:
            yield outcome
    if scan.pending is not None:
        yield scan.pending
        scan.pending = None


def _failure(scan: _Scan, exc: Exception) -> Drop:
    """The final Drop for an archive whose remainder could not be read, at the first unread record."""
    text = " ".join(str(exc).split())
    truncated = isinstance(exc, EOFError) or any(
        s in text.lower() for s in ("ended before", "incomplete", "truncated", "unexpected end")
    )
    drop = Drop(
        scan.file_uri,
        "warc",
        "warc_truncated" if truncated else "warc_malformed",
        f"archive unreadable after {scan.records} records: {type(exc).__name__}: {text[:300]}",
        f"after-record-{scan.records}",
    )
    # warcio's offset is where the record after the last one read to its end starts.
    offset = _file_offset(scan, scan.iterator.offset) if scan.iterator is not None else None
    return _located(scan, drop, offset, scan.records + 1)


def _nothing(scan: _Scan) -> Drop:
    """The one Drop of an archive that gave no outcome: no records, or none that can hold content."""
    if scan.records == 0:
        return Drop(scan.file_uri, "warc", "warc_empty", "the archive holds no records")
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(scan.silent.items()))
    detail = f"{scan.records} records, none with content: {kinds}"
    return Drop(scan.file_uri, "warc", "warc_no_content_records", detail)


def _magic(path: Path) -> bytes:
    """The first bytes of the file: enough to tell gzip from a plain ARC (filedesc://) or WARC."""
    with path.open("rb") as fh:
        return fh.read(11)


def _outcomes(path: Path, scan: _Scan) -> Iterator[Document | Drop]:
    """Every outcome of the archive's records, and a final Drop if reading it ended early."""
    try:
        magic = _magic(path)
    except OSError as exc:
        yield Drop(scan.file_uri, "warc", "warc_unreadable", f"{type(exc).__name__}: {exc}")
        return
    gzipped = magic.startswith(b"\x1f\x8b")
    try:
        with path.open("rb") as raw:
            if magic == b"filedesc://":  # a plain ARC: read it through the separator repair
                scan.reframer = _ArcReframer(io.BufferedReader(raw))  # type: ignore[arg-type]
            yield from _walk(scan, io.BufferedReader(scan.reframer) if scan.reframer else raw, skip=0)
    except Exception as exc:
        recoverable = gzipped and ("non-chunked gzip" in str(exc) or scan.pending is not None)
        if not recoverable:
            yield from ([scan.pending] if scan.pending else [])
            yield _failure(scan, exc)
            return
        # Gzip members that do not line up with records (one gzip stream around the whole file, or
        # members split mid-record) are still a valid WARC once decompressed as one stream.
        resume = scan.records - (1 if scan.pending is not None else 0)
        scan.records, scan.pending, scan.stream_mode, scan.iterator = resume, None, True, None
        try:
            with gzip.open(path, "rb") as fh:
                yield from _walk(scan, fh, skip=resume)
        except Exception as exc2:
            yield _failure(scan, exc2)


def extract_warc(path: Path, cfg: WarcConfig, html_cfg: HtmlConfig) -> Iterator[Document | Drop]:
    """Stream a .warc/.warc.gz/.arc/.arc.gz file: Documents for 2xx HTML captures, Drops for the rest."""
    scan = _Scan(path.resolve().as_uri(), path.name, cfg, html_cfg)
    produced = False
    for outcome in _outcomes(path, scan):
        produced = True
        yield outcome
    if not produced:
        yield _nothing(scan)
