"""WARC/ARC ingestion: every real archive, revisits, damage, and streaming on synthetic files."""

from __future__ import annotations

import gzip
import io
import re
import tracemalloc
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from storage.schemas import Document, Drop, doc_id
from tasks.warc import WarcConfig, extract_warc
from tasks.web import HtmlConfig

CFG = WarcConfig()
HTML = HtmlConfig()
REASON = re.compile(r"^[a-z]+(_[a-z]+)+$")

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
    "warcio/example-digest.warc": {},  # four request records only: nothing to ingest
    "warcio/example-iana.org-chunked.warc": {"doc": 1},
    "warcio/example-resource.warc.gz": {"doc": 1},
    "warcio/example-space-in-target-uri.warc.gz": {"warc_not_html": 1},
    "warcio/example-space-in-url.arc": {"warc_truncated": 1},
    "warcio/example-trunc.warc": {"warc_malformed": 1},
    "warcio/example-wget-bad-target-uri.warc.gz": {"doc": 1, "warc_not_html": 2},
    "warcio/example-wrong-chunks.warc.gz": {"warc_malformed": 1},
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


def test_wrong_chunks_record_fails_its_digest(shared_data: Path) -> None:
    (drop,) = run(shared_data / "warc" / "warcio" / "example-wrong-chunks.warc.gz")
    assert isinstance(drop, Drop) and "block digest failed" in drop.detail
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
