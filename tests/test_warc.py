"""WARC/ARC ingestion: every real archive, revisits, damage, and streaming on synthetic files."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import re
import tracemalloc
import uuid
import zlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from storage.schemas import Document, Drop, doc_id
from tasks.warc import WarcConfig, extract_warc
from tasks.web import HtmlConfig

CFG = WarcConfig()
HTML = HtmlConfig()
REASON = re.compile(r"^[a-z]+(_[a-z]+)+$")
# Drops about the whole file rather than one record: they have no record position.
FILE_LEVEL = frozenset({"warc_empty", "warc_no_content_records", "warc_unreadable"})

# Outcome counts per real archive ("doc" = Document, else the Drop reason); every file is listed.
EXPECTED: dict[str, dict[str, int]] = {
    "dolma/sample-0000.warc.gz": {"doc": 22, "warc_not_html": 2},
    "dolma/sample-0001.warc.gz": {"doc": 15, "warc_not_html": 2},
    # Its writer left out the newline after each record; we put it back and read all 9 records.
    "ia-web-commons/IAH-20080430204825-00000-blackbook-truncated.arc": {"doc": 2, "warc_not_html": 6},
    "ia-web-commons/IAH-urls-wget.warc.gz": {"doc": 2, "warc_http_status": 9, "warc_not_html": 8},
    "ia-web-commons/link-extraction-test.warc": {"doc": 5, "html_no_main_content": 4},
    "ia-web-commons/text-extraction-test.warc": {"doc": 1, "warc_not_html": 1},
    "pywb/dupes.warc.gz": {
        "doc": 1,
        "warc_http_status": 1,
        "warc_not_html": 1,
        "warc_revisit_duplicate": 1,
        "warc_revisit_unresolved": 8,
    },
    "pywb/example-wget-1-14.warc.gz": {"doc": 1, "warc_not_html": 3},
    "pywb/example-wpull.warc.gz": {"doc": 1, "warc_not_html": 1},
    "pywb/iana.warc.gz": {
        "doc": 16,
        "warc_http_status": 4,
        "warc_not_html": 28,
        "warc_revisit_duplicate": 123,
    },
    "pywb/missing-status-text.warc": {"warc_http_status": 1},
    "warcio/bad.arc": {"warc_malformed": 4},
    "warcio/example-bad-non-chunked.warc.gz": {"doc": 1, "warc_revisit_duplicate": 1},
    "warcio/example-bad.warc.gz.bad": {"doc": 1, "warc_http_status": 1, "warc_revisit_duplicate": 1},
    "warcio/example-digest.warc": {"warc_no_content_records": 1},  # four request records only
    "warcio/example-iana.org-chunked.warc": {"doc": 1},
    "warcio/example-resource.warc.gz": {"doc": 1},
    "warcio/example-space-in-target-uri.warc.gz": {"warc_not_html": 1},
    "warcio/example-space-in-url.arc": {"warc_truncated": 1},
    "warcio/example-trunc.warc": {"warc_malformed": 1},
    "warcio/example-wget-bad-target-uri.warc.gz": {"doc": 1, "warc_not_html": 2},
    # Its block digest fails but its payload digest matches: headers were rewritten, the page is intact.
    "warcio/example-wrong-chunks.warc.gz": {"doc": 1},
    "warcio/example.arc": {"doc": 1},
    "warcio/example.arc.gz": {"doc": 1},
    "warcio/example.warc": {"doc": 1, "warc_revisit_duplicate": 1},
    "warcio/example.warc.gz": {"doc": 1, "warc_revisit_duplicate": 1},
    "warcio/post-test.warc.gz": {"warc_not_html": 3},
}


def run(path: Path, cfg: WarcConfig = CFG, html: HtmlConfig = HTML) -> list[Document | Drop]:
    """All outcomes of one archive."""
    return list(extract_warc(path, cfg, html))


def counts(outcomes: list[Document | Drop]) -> dict[str, int]:
    """Outcome counts keyed like EXPECTED."""
    return dict(Counter("doc" if isinstance(o, Document) else o.reason for o in outcomes))


def where(o: Document | Drop) -> tuple[int | None, int | None]:
    """(record_index, offset) of an outcome: Drop fields, or a Document's meta."""
    if isinstance(o, Document):
        return o.meta["warc_record_index"], o.meta["warc_offset"]
    return o.record_index, o.offset


def by_reason(outcomes: list[Document | Drop], reason: str) -> list[Drop]:
    """The drops with one reason."""
    return [o for o in outcomes if isinstance(o, Drop) and o.reason == reason]


# ---------------------------------------------------------------- every real archive


def test_every_archive_is_listed(shared_data: Path) -> None:
    root = shared_data / "warc"
    found = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_archive(shared_data: Path, name: str) -> None:
    path = shared_data / "warc" / name
    outcomes = run(path)
    assert counts(outcomes) == EXPECTED[name]
    for o in outcomes:
        if isinstance(o, Document):
            assert o.source == "warc" and o.text.strip() and o.fetched_at is not None
            assert o.meta["warc_file"] == path.name and o.meta["warc_record_id"]
            assert o.id == doc_id(o.uri, o.meta["warc_record_id"])
            assert 200 <= o.meta["http_status"] < 300 if o.meta["http_status"] is not None else True
        else:
            assert REASON.match(o.reason) and o.detail and o.source == "warc"
    # Every record's outcome says where the record is; records come in file order.
    located = [where(o) for o in outcomes if not (isinstance(o, Drop) and o.reason in FILE_LEVEL)]
    assert all(index is not None and offset is not None for index, offset in located)
    indexes = [index for index, _ in located]
    assert indexes == sorted(set(indexes))
    # Byte-for-byte reproducible, including the ids of ARC records (warcio invents random ones).
    assert [o.row() for o in outcomes] == [o.row() for o in run(path)]


def test_example_warc_document_fields(shared_data: Path) -> None:
    outcomes = run(shared_data / "warc" / "warcio" / "example.warc")
    (doc,) = [o for o in outcomes if isinstance(o, Document)]
    assert doc.uri == "http://example.com/"
    assert doc.title == "Example Domain"
    assert "This domain is established to be used for illustrative examples in documents." in doc.text
    assert doc.fetched_at == datetime(2017, 3, 6, 4, 2, 6, tzinfo=UTC)
    assert doc.id == doc_id("http://example.com/", "<urn:uuid:a9c51e3e-0221-11e7-bf66-0242ac120005>")
    assert doc.meta["warc_offset"] == 1197
    assert doc.meta["http_status"] == 200
    assert doc.meta["encoding"] == "utf-8"  # HTTP said nothing; the page's <meta charset> did
    assert doc.meta["warc_payload_digest"] == "sha1:G7HRM7BGOKSKMSXZAHMUQTTV53QOFSMK"


def test_arc_record_ids_come_from_file_offsets(shared_data: Path) -> None:
    (doc,) = [o for o in run(shared_data / "warc" / "warcio" / "example.arc") if isinstance(o, Document)]
    assert doc.meta["warc_record_id"] == "example.arc@151"
    assert doc.fetched_at == datetime(2014, 2, 16, 5, 2, 21, tzinfo=UTC)
    assert "This domain is established to be used for illustrative examples" in doc.text
    assert doc.title == "Example Domain"


# ---------------------------------------------------------------- revisits


def test_revisits_resolve_to_original_in_iana(shared_data: Path) -> None:
    outcomes = run(shared_data / "warc" / "pywb" / "iana.warc.gz")
    response_ids = {o.meta["warc_record_id"] for o in outcomes if isinstance(o, Document)}
    response_ids |= {o.part for o in outcomes if isinstance(o, Drop) and o.reason == "warc_not_html"}
    dupes = by_reason(outcomes, "warc_revisit_duplicate")
    assert len(dupes) == 123
    for drop in dupes:
        original = re.search(r"same payload as record (<urn:uuid:[0-9a-f-]+>) \((\S+), ", drop.detail)
        assert original is not None and original.group(1) in response_ids


def test_revisit_in_dupes_names_the_original_or_says_unresolved(shared_data: Path) -> None:
    outcomes = run(shared_data / "warc" / "pywb" / "dupes.warc.gz")
    (dupe,) = by_reason(outcomes, "warc_revisit_duplicate")
    assert dupe.uri == "http://example.com"
    assert "<urn:uuid:40eec527-440d-4541-8b9c-694d3bf3b5db>" in dupe.detail  # the 200 response
    unresolved = {d.uri for d in by_reason(outcomes, "warc_revisit_unresolved")}
    assert "http://www.iana.org/" in unresolved  # its original lives in iana.warc.gz, not here
    home = next(d for d in by_reason(outcomes, "warc_revisit_unresolved") if d.uri == "http://www.iana.org/")
    assert "2014-01-26T20:06:24Z" in home.detail and "not in this file" in home.detail


def test_revisit_resolution_can_be_switched_off(shared_data: Path) -> None:
    outcomes = run(shared_data / "warc" / "warcio" / "example.warc", WarcConfig(resolve_revisits=False))
    assert counts(outcomes) == {"doc": 1, "warc_revisit_skipped": 1}


def test_revisit_index_is_bounded(shared_data: Path) -> None:
    outcomes = run(shared_data / "warc" / "pywb" / "iana.warc.gz", WarcConfig(revisit_index_size=3))
    assert len(by_reason(outcomes, "warc_revisit_unresolved")) > 0  # old originals were forgotten


# ---------------------------------------------------------------- damaged archives


IAH_ARC = ("ia-web-commons", "IAH-20080430204825-00000-blackbook-truncated.arc")


def test_arc_without_record_separators_is_read_whole(shared_data: Path) -> None:
    outcomes = run(shared_data.joinpath("warc", *IAH_ARC))
    parts = {o.uri: o.part for o in outcomes if isinstance(o, Drop)}
    # True file offsets, the same ones ia-web-commons' own ARC reader tests seek to.
    assert parts["http://www.archive.org/robots.txt"] == f"{IAH_ARC[1]}@1515"
    assert parts["http://www.archive.org/services/collection-rss.php"] == f"{IAH_ARC[1]}@36420"
    assert parts["dns:www.archive.org"] == f"{IAH_ARC[1]}@1399"
    docs = {o.uri: o for o in outcomes if isinstance(o, Document)}
    assert set(docs) == {"http://www.archive.org/", "http://www.archive.org/index.php"}
    assert docs["http://www.archive.org/index.php"].title == "Internet Archive"
    assert docs["http://www.archive.org/"].fetched_at == datetime(2008, 4, 30, 20, 48, 26, tzinfo=UTC)


def test_cut_arc_keeps_records_before_the_cut(shared_data: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.arc"
    cut.write_bytes(shared_data.joinpath("warc", *IAH_ARC).read_bytes()[:20_000])  # inside index.php
    outcomes = run(cut)
    assert counts(outcomes) == {"doc": 1, "warc_not_html": 2, "warc_truncated": 1}
    last = outcomes[-1]
    assert isinstance(last, Drop) and last.uri == "http://www.archive.org/index.php"
    assert last.part == "cut.arc@3124" and "bytes before its Content-Length" in last.detail


def test_example_trunc_flags_the_short_record(shared_data: Path) -> None:
    (drop,) = run(shared_data / "warc" / "warcio" / "example-trunc.warc")
    assert isinstance(drop, Drop) and drop.reason == "warc_malformed"
    assert drop.uri == "http://example.com/" and "Content-Length" in drop.detail


def test_non_chunked_gzip_is_recovered(shared_data: Path) -> None:
    for name in ("example-bad-non-chunked.warc.gz", "example-bad.warc.gz.bad"):
        docs = [o for o in run(shared_data / "warc" / "warcio" / name) if isinstance(o, Document)]
        assert len(docs) == 1 and docs[0].title == "Example Domain"
        assert docs[0].meta["warc_offset_uncompressed"] is True


def test_wrong_chunks_record_keeps_its_intact_payload(shared_data: Path) -> None:
    (doc,) = run(shared_data / "warc" / "warcio" / "example-wrong-chunks.warc.gz")
    assert isinstance(doc, Document) and doc.meta["quirks"] == ["warc_block_digest_mismatch"]
    assert "illustrative examples" in doc.text
    strict = run(
        shared_data / "warc" / "warcio" / "example-wrong-chunks.warc.gz", WarcConfig(strict_digests=True)
    )
    (drop,) = strict
    assert isinstance(drop, Drop) and drop.reason == "warc_malformed"
    assert "block digest failed" in drop.detail and "payload digest" not in drop.detail
    outcomes = run(
        shared_data / "warc" / "warcio" / "example-wrong-chunks.warc.gz", WarcConfig(verify_digests=False)
    )
    assert counts(outcomes) == {"html_no_main_content": 1} or counts(outcomes) == {"doc": 1}


def test_bad_arc_lengths(shared_data: Path) -> None:
    details = [o.detail for o in run(shared_data / "warc" / "warcio" / "bad.arc")]
    assert sum("invalid record length '-1'" in d for d in details) == 2
    assert sum("invalid record length 'abc'" in d for d in details) == 1
    assert sum("no HTTP status line" in d for d in details) == 1


def test_missing_status_text_is_still_a_redirect(shared_data: Path) -> None:
    (drop,) = run(shared_data / "warc" / "pywb" / "missing-status-text.warc")
    assert isinstance(drop, Drop) and drop.reason == "warc_http_status"
    assert drop.detail == "HTTP 302 (Location: http://www.iana.org/badst)"


def test_cut_gzip_archive_keeps_records_before_the_cut(shared_data: Path, tmp_path: Path) -> None:
    whole = run(shared_data / "warc" / "dolma" / "sample-0000.warc.gz")
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes((shared_data / "warc" / "dolma" / "sample-0000.warc.gz").read_bytes()[:100_000])
    outcomes = run(cut)
    assert outcomes[-1].reason == "warc_truncated"  # type: ignore[union-attr]
    kept = [o.row() | {"meta_json": ""} for o in outcomes if isinstance(o, Document)]
    assert len(kept) == 13
    assert kept == [o.row() | {"meta_json": ""} for o in whole if isinstance(o, Document)][:13]


def test_cut_plain_archive_reports_short_record(shared_data: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.warc"
    with gzip.open(shared_data / "warc" / "dolma" / "sample-0000.warc.gz") as fh:
        cut.write_bytes(fh.read(300_000))
    outcomes = run(cut)
    last = outcomes[-1]
    assert isinstance(last, Drop) and last.reason == "warc_truncated"
    assert "record ends 5763 bytes before its Content-Length (9698)" in last.detail
    assert sum(isinstance(o, Document) for o in outcomes) == 10


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "warc_empty"),
        (b"<html>not an archive</html>\n" * 10, "warc_malformed"),
        (None, "warc_unreadable"),
    ],
)
def test_not_an_archive(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "x.warc"
    if content is not None:
        path.write_bytes(content)
    gen = extract_warc(path, CFG, HTML)  # a generator: nothing is read until iterated
    (drop,) = list(gen)
    assert isinstance(drop, Drop) and drop.reason == reason and drop.uri == path.resolve().as_uri()


# ---------------------------------------------------------------- synthetic archives

PAGE = (
    "<html><head><title>{title}</title></head><body><article><p>{body}</p></article>"
    "<footer>Impressum Datenschutz</footer></body></html>"
)
LONG = "Die Wasserversorgung der Stadt wurde im neunzehnten Jahrhundert vollständig erneuert. " * 3


def record(
    writer: WARCWriter,
    n: int,
    uri: str,
    body: bytes,
    status: str = "200 OK",
    headers: list[tuple[str, str]] | None = None,
) -> None:
    """Write one response record with a fixed id and date."""
    http = StatusAndHeaders(status, headers or [("Content-Type", "text/html")], protocol="HTTP/1.1")
    warc_headers = {"WARC-Record-ID": f"<urn:uuid:00000000-0000-0000-0000-{n:012d}>"}
    warc_headers["WARC-Date"] = "2024-01-02T03:04:05Z"
    rec = writer.create_warc_record(
        uri, "response", payload=io.BytesIO(body), http_headers=http, warc_headers_dict=warc_headers
    )
    writer.write_record(rec)


def test_synthetic_statuses_types_and_encodings(tmp_path: Path) -> None:
    path = tmp_path / "mixed.warc.gz"
    cyrillic = PAGE.format(title="Новости", body="Все люди рождаются свободными и равными. " * 5)
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=True)
        record(w, 1, "http://a.test/ok", PAGE.format(title="Ok", body=LONG).encode())
        record(w, 2, "http://a.test/missing", b"not found", "404 Not Found")
        record(w, 3, "http://a.test/err", b"oops", "500 Internal Server Error")
        record(w, 4, "http://a.test/moved", b"", "301 Moved", [("Location", "http://a.test/ok")])
        record(w, 5, "http://a.test/img.png", b"\x89PNG....", headers=[("Content-Type", "image/png")])
        xhtml = [("Content-Type", "application/xhtml+xml; charset=utf-8")]
        record(w, 6, "http://a.test/x", PAGE.format(title="X", body=LONG).encode(), headers=xhtml)
        cp1251 = [("Content-Type", "text/html; charset=windows-1251")]
        record(w, 7, "http://a.test/ru", cyrillic.encode("cp1251"), headers=cp1251)
        zipped = [("Content-Type", "text/html"), ("Content-Encoding", "gzip")]
        record(
            w,
            8,
            "http://a.test/gz",
            gzip.compress(PAGE.format(title="Gz", body=LONG).encode()),
            headers=zipped,
        )
        record(w, 9, "http://a.test/none", PAGE.format(title="N", body=LONG).encode(), headers=[("X-A", "b")])
        record(w, 10, "http://a.test/empty", b"")
    out = {o.uri.rsplit("/", 1)[1]: o for o in run(path)}
    assert {k for k, o in out.items() if isinstance(o, Document)} == {"ok", "x", "ru", "gz"}
    assert out["missing"].detail == "HTTP 404"  # type: ignore[union-attr]
    assert out["err"].reason == "warc_http_status"  # type: ignore[union-attr]
    assert out["moved"].detail == "HTTP 301 (Location: http://a.test/ok)"  # type: ignore[union-attr]
    assert out["img.png"].reason == "warc_not_html"  # type: ignore[union-attr]
    assert out["none"].detail == "content type 'missing'"  # type: ignore[union-attr]
    assert out["empty"].reason == "html_empty"  # type: ignore[union-attr]
    ru = out["ru"]
    assert isinstance(ru, Document) and ru.meta["encoding"] == "cp1251" and ru.title == "Новости"
    assert "Все люди рождаются свободными и равными." in ru.text
    assert "vollständig erneuert" in out["gz"].text  # type: ignore[union-attr]
    ok = out["ok"]
    assert isinstance(ok, Document) and "Impressum" not in ok.text
    assert ok.meta["warc_record_id"] == "<urn:uuid:00000000-0000-0000-0000-000000000001>"
    assert ok.fetched_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_brotli_payloads_plain_chunked_and_bomb(tmp_path: Path) -> None:
    brotli = pytest.importorskip("brotli")
    page = brotli.compress(PAGE.format(title="Br", body=LONG).encode())
    chunked = f"{len(page):x}\r\n".encode() + page + b"\r\n0\r\n\r\n"
    bomb = brotli.compress(b"<html><body><p>" + b"a" * 30_000_000)
    path = tmp_path / "br.warc"
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=False)
        br = [("Content-Type", "text/html"), ("Content-Encoding", "br")]
        record(w, 1, "http://a.test/br", page, headers=br)
        record(w, 2, "http://a.test/chunked", chunked, headers=[*br, ("Transfer-Encoding", "chunked")])
        record(w, 3, "http://a.test/bomb", bomb, headers=br)
    out = {o.uri.rsplit("/", 1)[1]: o for o in run(path, WarcConfig(max_record_bytes=1_000_000))}
    for name in ("br", "chunked"):
        assert isinstance(out[name], Document) and "vollständig erneuert" in out[name].text  # type: ignore[union-attr]
    assert out["bomb"].reason == "warc_record_too_large"  # type: ignore[union-attr]


def test_oversized_record_is_dropped_without_buffering(tmp_path: Path) -> None:
    path = tmp_path / "big.warc"
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=False)
        record(w, 1, "http://a.test/huge", b"<html><body><p>" + b"a" * 30_000_000 + b"</p></body></html>")
        record(w, 2, "http://a.test/ok", PAGE.format(title="Ok", body=LONG).encode())
    tracemalloc.start()
    outcomes = run(path, WarcConfig(max_record_bytes=1_000_000))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert counts(outcomes) == {"warc_record_too_large": 1, "doc": 1}
    assert peak < 8_000_000  # the 30 MB payload was never held in memory


def test_memory_stays_flat_over_many_records(tmp_path: Path) -> None:
    path = tmp_path / "many.warc"
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=False)
        for n in range(60):
            record(w, n, f"http://a.test/{n}.bin", bytes(1_000_000), headers=[("Content-Type", "image/png")])
        record(w, 99, "http://a.test/page", PAGE.format(title="P", body=LONG).encode())
    assert path.stat().st_size > 60_000_000
    tracemalloc.start()
    outcomes = run(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert counts(outcomes) == {"warc_not_html": 60, "doc": 1}
    assert peak < 8_000_000


# ---------------------------------------------------------------- digests


def sha1_digest(data: bytes, spelling: str = "base32") -> str:
    """A WARC digest header value for data, spelled as writers do."""
    raw = hashlib.sha1(data).digest()
    if spelling == "hex":
        return "sha1:" + raw.hex()
    if spelling == "base64":
        return "sha1:" + base64.b64encode(raw).decode()
    return "sha1:" + base64.b32encode(raw).decode()


def raw_record(
    fields: list[tuple[str, str]], block: bytes, version: str = "WARC/1.0", nl: str = "\r\n"
) -> bytes:
    """One WARC record written byte by byte (warcio's writer cannot write wrong digests or bare LF)."""
    head = version + nl + "".join(f"{k}: {v}{nl}" for k, v in fields)
    return f"{head}Content-Length: {len(block)}{nl}{nl}".encode() + block + (nl + nl).encode()


def http_block(payload: bytes, ctype: str = "text/html") -> bytes:
    """The content block of a 200 response record: HTTP headers, then the payload."""
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


def response(n: int, block: bytes, digests: dict[str, str]) -> bytes:
    """A response record for http://d.test/<n> with the given WARC-*-Digest headers."""
    fields = [
        ("WARC-Type", "response"),
        ("WARC-Record-ID", f"<urn:uuid:00000000-0000-0000-0000-{n:012d}>"),
        ("WARC-Target-URI", f"http://d.test/{n}"),
        ("WARC-Date", "2024-01-02T03:04:05Z"),
        ("Content-Type", "application/http; msgtype=response"),
    ]
    return raw_record(fields + [(f"WARC-{k.title()}-Digest", v) for k, v in digests.items()], block)


def digest_cases() -> list[tuple[dict[str, str], str, str]]:
    """(digest headers, outcome by default, outcome with strict_digests) for one page per case.

    An outcome is a quirk (a document is kept with it), "doc" (kept, no quirk) or a Drop reason.
    """
    payload = PAGE.format(title="D", body=LONG).encode()
    block = http_block(payload)
    good_b, good_p, other = sha1_digest(block), sha1_digest(payload), sha1_digest(b"something else")
    bad = "warc_malformed"
    return [
        ({"block": good_b, "payload": good_p}, "doc", "doc"),
        ({"block": sha1_digest(block, "hex"), "payload": sha1_digest(payload, "base64")}, "doc", "doc"),
        ({"block": good_b, "payload": other}, "warc_payload_digest_mismatch", bad),
        ({"block": good_b, "payload": good_b}, "warc_payload_digest_is_block_digest", bad),
        ({"block": other, "payload": good_p}, "warc_block_digest_mismatch", bad),
        ({"block": other, "payload": other}, bad, bad),
        ({"payload": other}, bad, bad),
        ({"block": other}, bad, bad),
        ({"block": "md5x:abc", "payload": good_p}, "warc_digest_unverifiable", "warc_digest_unverifiable"),
        (
            {"block": good_b, "payload": "sha1:!!!notbase32"},
            "warc_digest_unverifiable",
            "warc_digest_unverifiable",
        ),
        ({"block": "sha1:AAAA", "payload": other}, bad, bad),  # wrong length: proves nothing
    ]


@pytest.mark.parametrize("strict", [False, True])
def test_digest_policy_drops_only_provably_damaged_records(tmp_path: Path, strict: bool) -> None:
    cases = digest_cases()
    block = http_block(PAGE.format(title="D", body=LONG).encode())
    path = tmp_path / "digests.warc"
    path.write_bytes(b"".join(response(n, block, digests) for n, (digests, _, _) in enumerate(cases)))
    outcomes = run(path, WarcConfig(strict_digests=strict))
    assert len(outcomes) == len(cases)
    for o, (digests, lenient, strict_outcome) in zip(outcomes, cases, strict=True):
        want = strict_outcome if strict else lenient
        if isinstance(o, Document):
            assert o.meta.get("quirks", ["doc"]) == [want], digests
            assert "vollständig erneuert" in o.text
        else:
            assert o.reason == want and "digest failed" in o.detail, digests
    # verify_digests=False checks nothing: every record is a document without quirks.
    unchecked = run(path, WarcConfig(verify_digests=False))
    assert [o.meta.get("quirks") for o in unchecked if isinstance(o, Document)] == [None] * len(cases)


def test_malformed_digest_values_do_not_end_the_archive(tmp_path: Path) -> None:
    payload = PAGE.format(title="M", body=LONG).encode()
    block, empty = http_block(payload), http_block(b"")
    png = http_block(b"\x89PNG" + bytes(5000), ctype="image/png")
    records = [
        response(1, block, {"block": sha1_digest(block)}),
        # warcio decodes digest values while it reads; these raised binascii.Error mid-record,
        # here while parsing the HTTP headers (the block ends there) and in the skipped image body.
        response(2, empty, {"block": "sha1:!!!notbase32"}),
        response(3, png, {"block": "sha1:AAAAA"}),
        response(4, block, {"block": sha1_digest(block), "payload": "sha1:%%%%"}),
        response(5, block, {"payload": "md5:zz"}),
        response(6, block, {"block": "sha1:" + "A" * 31, "payload": sha1_digest(payload)}),
        response(7, block, {"block": sha1_digest(block)}),
    ]
    path = tmp_path / "bad-digest-values.warc"
    path.write_bytes(b"".join(records))
    outcomes = run(path)
    kinds = [o.meta.get("quirks", ["doc"])[0] if isinstance(o, Document) else o.reason for o in outcomes]
    unverifiable = "warc_digest_unverifiable"
    assert kinds == ["doc", "html_empty", "warc_not_html", unverifiable, unverifiable, unverifiable, "doc"]
    assert [where(o)[0] for o in outcomes] == list(range(1, 8))


# ---------------------------------------------------------------- ClueWeb09

# Small pages of the kind a 2009 web crawl holds: "host/path | title", then the lead sentence.
CLUEWEB09_PAGE_LINES = """
www.gardenweb-forum.test/tomatoes | Growing tomatoes on a balcony
    Cherry tomatoes do well in pots of at least twenty litres.
www.citybus.test/routes/12 | Route 12 timetable changes
    From February the first bus leaves the depot at 5:40 in the morning.
www.bakery-notes.test/rye | Sourdough rye bread
    A rye starter needs feeding twice a day for about a week before baking.
www.hikingclub.test/trails/ridge | The north ridge trail
    The trail climbs four hundred metres over three kilometres of loose rock.
www.schoolboard.test/news/snow | School closures after the snowstorm
    All primary schools in the district stay closed on Monday and Tuesday.
www.bikerepair.test/brakes | Adjusting cantilever brakes
    Loosen the anchor bolt before you move the pad closer to the rim.
www.localhistory.test/mill | The old paper mill
    The mill on the river employed two hundred workers until it closed in 1961.
www.petcare.test/cats/diet | Feeding an older cat
    Senior cats often need food with more protein and less phosphorus.
www.astro-society.test/events | Observing night at the observatory
    Members may bring their own telescopes to the field behind the dome.
www.recipes-home.test/soup | Winter lentil soup
    Red lentils fall apart after twenty minutes and thicken the soup on their own.
www.library-branch.test/hours | New opening hours of the east branch
    The east branch now opens at ten and closes at eight on weekdays.
www.chess-club.test/openings | Learning the Sicilian defence
    Beginners should learn the ideas behind the moves before the long lines.
www.homebrew.test/cider | Making cider from windfall apples
    Wash the apples well and cut away any bruised or rotten parts.
www.birdwatch.test/reports/jan | January bird count results
    Volunteers counted forty-two species around the reservoir this year.
www.diy-house.test/insulation | Insulating an attic floor
    Leave a gap at the eaves so that air can still move under the roof.
www.runners.test/training | Training for a first marathon
    Most plans build up the long run by no more than ten percent a week.
www.photo-tips.test/low-light | Photographs in low light
    A tripod lets you use a slow shutter without shaking the picture.
www.orchestra.test/season | The spring concert season
    The season opens with a symphony by Sibelius and a new violin concerto.
www.farmmarket.test/stalls | Saturday farmers market
    Twenty stalls sell vegetables, cheese, honey and bread every Saturday.
www.knitting-circle.test/socks | Knitting socks on four needles
    Turning the heel is easier than it looks once you count the stitches.
www.aquarium-hobby.test/water | Keeping aquarium water clean
    Change a quarter of the water every week and rinse the filter in tank water.
www.citycouncil.test/minutes | Council meeting minutes
    The council approved the budget for repairing the bridge on Mill Street.
www.campsite.test/booking | Booking a pitch for the summer
    Pitches by the lake are booked out quickly, so reserve them before April.
www.oldcars.test/restoration | Restoring a 1965 sedan
    Rust in the floor pans was cut out and new steel was welded in place.
www.languages.test/spanish | Spanish for travellers
    Learning numbers and polite greetings first helps in shops and markets.
www.beekeepers.test/winter | Bees in winter
    A strong colony keeps the centre of its cluster warm all winter long.
www.woodwork.test/joints | Cutting dovetail joints by hand
    Mark the tails first and saw on the waste side of the line.
www.weather-station.test/records | Rainfall records for the valley
    The wettest month since records began was October with 212 millimetres.
www.theatre-group.test/auditions | Auditions for the spring play
    Auditions take place in the church hall on the last Thursday of the month.
"""
_LINES = [line.strip() for line in CLUEWEB09_PAGE_LINES.strip().splitlines()]
CLUEWEB09_PAGES = [(*head.split(" | "), lead) for head, lead in zip(_LINES[::2], _LINES[1::2], strict=True)]
CLUEWEB09_FILLER = (
    "Please read the notes below before you ask a question in the comments.",
    "We thank everyone who wrote to us with corrections and further tips over the last year.",
    "If something on this page is out of date, send a short message to the editors.",
)
CLUEWEB09_WARCINFO_ID = "993d3969-9643-4934-b1c6-000000000000"


def clueweb09_html(n: int, title: str, lead: str) -> bytes:
    """A small 2009-style page: navigation, the article and a footer, bare LF line breaks."""
    filler = " ".join(CLUEWEB09_FILLER[(n + k) % 3] for k in range(3))
    return (
        f'<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\n'
        f"<title>{title}</title>\n</head>\n<body>\n"
        '<div id="nav"><a href="/">Home</a> | <a href="/about">About us</a> | '
        '<a href="/contact">Contact</a></div>\n'
        f'<div id="content">\n<h1>{title}</h1>\n<p>{lead} {filler}</p>\n'
        "<p>This article was written for our members and first appeared in the newsletter "
        f"number {n + 3}.</p>\n"
        f'</div>\n<div id="footer">Copyright 2009. All rights reserved.</div>\n</body>\n</html>\n'
    ).encode()


def clueweb09_records() -> tuple[list[bytes], list[tuple[str, str, str]]]:
    """A ClueWeb09-style WARC as its records, and per response record (WARC-TREC-ID, URL, lead sentence).

    Built from the dataset's public description: WARC version 0.18, a warcinfo record, response records
    with a WARC-TREC-ID (clueweb09-<directory>-<file>-<record number>), bare "\\n" line breaks in WARC
    and HTTP headers, and (the writer bug) WARC-Payload-Digest set to the block digest, a sha1 over the
    whole HTTP block including its headers.
    """
    info = (
        b"software: Nutch 1.0-dev (modified for clueweb09)\nisPartOf: clueweb09-en\n"
        b"description: clueweb09 crawl with WARC output\nformat: WARC file version 0.18\n"
    )
    warcinfo = [
        ("WARC-Type", "warcinfo"),
        ("WARC-Date", "2009-01-13T18:05:10-0800"),
        ("WARC-Record-ID", f"<urn:uuid:{CLUEWEB09_WARCINFO_ID}>"),
        ("Content-Type", "application/warc-fields"),
    ]
    records, pages = [raw_record(warcinfo, info, "WARC/0.18", "\n")], []
    for n, (host_path, title, lead) in enumerate(CLUEWEB09_PAGES):
        html = clueweb09_html(n, title, lead)
        ctype = "text/html" if n % 3 else "text/html; charset=utf-8"
        http = (
            f"HTTP/1.1 200 OK\nContent-Type: {ctype}\nDate: Tue, 13 Jan 2009 18:{n:02d}:10 GMT\n"
            f"Server: Apache/2.2.3 (CentOS)\nContent-Length: {len(html)}\nConnection: close\n\n"
        ).encode() + html
        url, trec_id = f"http://{host_path}", f"clueweb09-en0000-00-{n:05d}"
        digest = sha1_digest(http)
        fields = [
            ("WARC-Type", "response"),
            ("WARC-Target-URI", url),
            ("WARC-Warcinfo-ID", CLUEWEB09_WARCINFO_ID),
            ("Content-Type", "application/http;msgtype=response"),
            ("WARC-Date", f"2009-01-13T18:{n:02d}:22-0800"),
            ("WARC-Record-ID", f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"),
            ("WARC-TREC-ID", trec_id),
            ("WARC-Payload-Digest", digest),
            ("WARC-Block-Digest", digest),
            ("WARC-Identified-Payload-Type", "text/html"),
        ]
        records.append(raw_record(fields, http, "WARC/0.18", "\n"))
        pages.append((trec_id, url, lead))
    return records, pages


def write_clueweb09(path: Path, per_record: bool) -> tuple[list[int], list[tuple[str, str, str]]]:
    """Write the ClueWeb09-style file (one gzip stream, as ClueWeb09 ships, or a member per record).

    Returns the offset of every record as a reader should report it (a whole-file gzip has no record
    offsets in the file: they count decompressed bytes) and the pages of the response records.
    """
    records, pages = clueweb09_records()
    if per_record:
        members = [gzip.compress(r, mtime=0) for r in records]
        path.write_bytes(b"".join(members))
        sizes = [len(m) for m in members]
    else:
        path.write_bytes(gzip.compress(b"".join(records), mtime=0))
        sizes = [len(r) for r in records]
    return [sum(sizes[:k]) for k in range(len(records))], pages


@pytest.mark.parametrize("per_record", [False, True], ids=["one-gzip-stream", "gzip-per-record"])
def test_clueweb09_records_are_kept_with_the_writer_quirk(tmp_path: Path, per_record: bool) -> None:
    path = tmp_path / "00.warc.gz"
    offsets, pages = write_clueweb09(path, per_record)
    outcomes = run(path)
    assert counts(outcomes) == {"doc": len(CLUEWEB09_PAGES)}
    for n, (doc, (trec_id, url, lead)) in enumerate(zip(outcomes, pages, strict=True)):
        assert isinstance(doc, Document) and doc.uri == url
        assert doc.meta["quirks"] == ["warc_payload_digest_is_block_digest"]
        assert doc.meta["warc_trec_id"] == trec_id
        assert doc.title == CLUEWEB09_PAGES[n][1] and lead in doc.text
        assert "All rights reserved" not in doc.text and "About us" not in doc.text
        assert doc.fetched_at == datetime(2009, 1, 14, 2, n, 22, tzinfo=UTC)
        assert doc.meta["warc_record_index"] == n + 2 and doc.meta["warc_offset"] == offsets[n + 1]
        assert doc.meta.get("warc_offset_uncompressed", False) is not per_record


@pytest.mark.parametrize("per_record", [False, True], ids=["one-gzip-stream", "gzip-per-record"])
def test_clueweb09_strict_digests_drops_every_response(tmp_path: Path, per_record: bool) -> None:
    path = tmp_path / "00.warc.gz"
    offsets, pages = write_clueweb09(path, per_record)
    outcomes = run(path, WarcConfig(strict_digests=True))
    assert counts(outcomes) == {"warc_malformed": len(CLUEWEB09_PAGES)}
    for n, drop in enumerate(outcomes):
        assert isinstance(drop, Drop) and drop.uri == pages[n][1]
        assert "payload digest failed" in drop.detail and "block digest" not in drop.detail
        assert (drop.record_index, drop.offset) == (n + 2, offsets[n + 1])
        assert ("decompressed bytes" in drop.detail) is not per_record


# ---------------------------------------------------------------- provenance and empty archives


def test_offsets_point_at_the_records(shared_data: Path) -> None:
    path = shared_data / "warc" / "pywb" / "iana.warc.gz"
    data = path.read_bytes()
    located = [where(o) for o in run(path)]
    for _, offset in located:
        assert offset is not None
        member = zlib.decompressobj(wbits=31).decompress(data[offset : offset + 4096], 8)
        assert member == b"WARC/1.0"
    with path.open("rb") as fh:
        records = sum(1 for _ in ArchiveIterator(fh))
    # Record 1 is the warcinfo and the last one a request: neither has an outcome.
    assert located[0][0] == 2 and located[-1][0] == records - 1


def test_arc_drops_carry_their_file_offset(shared_data: Path) -> None:
    outcomes = run(shared_data.joinpath("warc", *IAH_ARC))
    data = shared_data.joinpath("warc", *IAH_ARC).read_bytes()
    for o in outcomes:
        offset = where(o)[1]
        assert offset is not None and data[offset:].startswith(o.uri.encode())
        if isinstance(o, Drop):
            assert o.part == f"{IAH_ARC[1]}@{offset}"
    assert [where(o)[0] for o in outcomes] == list(range(2, 10))  # record 1 is the filedesc header


def test_unreadable_archive_drop_points_at_the_first_unread_record(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "warc" / "dolma" / "sample-0000.warc.gz"
    whole = {where(o)[0]: where(o)[1] for o in run(source)}
    damaged = bytearray(source.read_bytes())
    damaged[45_000:45_200] = bytes(200)  # inside the gzip member of record 15
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(damaged)
    outcomes = run(path)
    last = outcomes[-1]
    assert isinstance(last, Drop) and last.detail.startswith("archive unreadable after 14 records")
    assert last.record_index == 15 and last.offset == whole[15]
    assert all(where(o)[0] < 15 for o in outcomes[:-1])


def test_archive_that_is_not_a_warc_points_at_its_start(tmp_path: Path) -> None:
    path = tmp_path / "x.warc"
    path.write_bytes(b"<html>not an archive</html>\n" * 10)
    (drop,) = run(path)
    assert isinstance(drop, Drop) and (drop.record_index, drop.offset) == (1, 0)


def test_archive_without_content_records(shared_data: Path, tmp_path: Path) -> None:
    (drop,) = run(shared_data / "warc" / "warcio" / "example-digest.warc")
    assert isinstance(drop, Drop) and drop.reason == "warc_no_content_records"
    assert drop.detail == "4 records, none with content: request 4"
    assert drop.uri == (shared_data / "warc" / "warcio" / "example-digest.warc").resolve().as_uri()
    path = tmp_path / "bookkeeping.warc"
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=False)
        w.write_record(w.create_warcinfo_record("bookkeeping.warc", {"software": "test"}))
        for kind in ("request", "metadata", "request"):
            body = io.BytesIO(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n" if kind == "request" else b"k: v\r\n")
            w.write_record(w.create_warc_record("http://a.test/", kind, payload=body))
    (drop,) = run(path)
    assert isinstance(drop, Drop) and drop.reason == "warc_no_content_records"
    assert drop.detail == "4 records, none with content: metadata 1, request 2, warcinfo 1"
    assert drop.uri == path.resolve().as_uri() and drop.record_index is None


def test_a_lying_length_is_a_drop_not_a_flood_on_stderr(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    # warcio prints the whole line after a record whose length lies: megabytes of binary per damaged record.
    path = tmp_path / "lie.warc"
    with path.open("wb") as fh:
        w = WARCWriter(fh, gzip=False)
        record(w, 1, "http://a.test/one", PAGE.format(title="One", body=LONG).encode())
        record(w, 2, "http://a.test/two", PAGE.format(title="Two", body=LONG).encode())
    data = path.read_bytes()
    length = re.search(rb"Content-Length: (\d+)", data)
    assert length is not None
    short = b"Content-Length: %d" % (int(length.group(1)) - 20)  # the first record claims 20 bytes less
    path.write_bytes(data.replace(length.group(0), short, 1))
    outcomes = run(path)
    assert any(isinstance(o, Drop) and o.reason in ("warc_malformed", "warc_truncated") for o in outcomes)
    assert capfd.readouterr().err == ""
