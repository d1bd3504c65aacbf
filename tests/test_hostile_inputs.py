"""Hostile inputs through the real ingest path (discovery, planning, the isolated worker with its caps).

Every input, however built to hurt, ends as documents or drops naming it with a reason, within a time and
memory bound, and never fails its group: gzip bombs, 64 MB lines, deep nesting, PDFs whose lengths lie,
thousands of blank pages, and file names a shell would misread.
"""

from __future__ import annotations

import gzip
import os
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from test_pdf import has_surrogates, write_pdf, write_undecodable_warning_pdf

from storage.refs import ShardRef
from storage.schemas import DOCUMENT_SCHEMA, DROP_SCHEMA
from storage.shards import read_shard
from tasks.extract import IngestConfig
from tasks.ingest import ingest_group
from tasks.inputs import discover, plan_groups

pytestmark = pytest.mark.slow

# Small caps, so a runaway input meets them quickly: the worker is killed after 20 s without progress and
# fails allocations past 3 GB of address space. (The cap counts address space the preloaded worker reserves
# before it reads anything, ~0.75-1 GB, so it is no tighter; the tests bound resident memory themselves.)
CFG = IngestConfig(file_timeout_s=20, worker_memory_mb=3072)
MB = 1 << 20
SENTENCE = "A plain sentence, long enough to be kept as the text of a small document about hostile input."


@dataclass
class Ingested:
    """What ingesting one folder produced: its inputs, shard refs, document and drop rows, and wall time."""

    inputs: dict[str, str]
    """File name -> the input URI ingest names it by."""
    refs: list[ShardRef]
    docs: list[dict[str, Any]]
    drops: list[dict[str, Any]]
    seconds: float

    def docs_of(self, name: str) -> list[dict[str, Any]]:
        """The document rows of one input file, by its name."""
        return [d for d in self.docs if d["input_uri"] == self.inputs[name]]

    def drops_of(self, name: str) -> list[dict[str, Any]]:
        """The drop rows of one input file, by its name."""
        return [d for d in self.drops if d["input_uri"] == self.inputs[name]]

    def reasons_of(self, name: str) -> list[str]:
        """The drop reasons of one input file, in order."""
        return [d["drop_reason"] for d in self.drops_of(name)]

    def unaccounted(self) -> set[str]:
        """Input URIs that no document or drop row names."""
        named = {row["input_uri"] for row in [*self.docs, *self.drops]}
        return set(self.inputs.values()) - named

    @property
    def peak_worker_mb(self) -> float:
        """The highest peak resident memory of any extraction worker."""
        return max(ref.peak_worker_rss_mb or 0.0 for ref in self.refs)


def ingest_folder(folder: Path, out: Path, cfg: IngestConfig = CFG) -> Ingested:
    """Discover, plan and ingest a folder as the ingest flow does (each group in turn, without Prefect)."""
    files, urls = discover([str(folder)])
    groups = plan_groups(files, urls, cfg.group_files, cfg.group_bytes, cfg.urls_per_group)
    start = time.perf_counter()
    refs = [ingest_group(group, cfg, str(out)) for group in groups]
    seconds = time.perf_counter() - start
    docs = [row for ref in refs for row in read_shard(out / ref.path, DOCUMENT_SCHEMA).to_pylist()]
    drops = [row for ref in refs for row in read_shard(out / ref.drops_path, DROP_SCHEMA).to_pylist()]
    inputs = {Path(f.path).name: Path(f.path).as_uri() for f in files}
    return Ingested(inputs, refs, docs, drops, seconds)


def gzip_member(data: bytes) -> bytes:
    """One gzip member; members concatenated are one gzip file that inflates to their contents in turn."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def inputs_dir(tmp_path: Path) -> Path:
    """An empty input folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


# ---- gzip bombs and long lines ---------------------------------------------------------------------


def test_gzip_bombs_are_too_large_in_bounded_time_and_memory(tmp_path: Path) -> None:
    folder = inputs_dir(tmp_path)
    block = gzip_member(b"a" * (64 * MB))  # ~65 KB that inflate to 64 MiB
    good = b'{"text": "%s"}\n' % SENTENCE.encode()
    with (folder / "bomb.jsonl.gz").open("wb") as f:  # one 1 GiB line between two good ones
        f.write(gzip_member(good + b'{"text": "'))
        f.write(block * 16)
        f.write(gzip_member(b'"}\n' + good))
    (folder / "bomb.txt.gz").write_bytes(block * 64)  # 4 GiB
    assert all(p.stat().st_size < 5 * MB for p in folder.iterdir())
    tracemalloc.start()
    try:
        got = ingest_folder(folder, tmp_path / "out")
        parent_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not got.unaccounted()
    assert got.reasons_of("bomb.txt.gz") == ["text_too_large"]
    assert "decompressed size is over max_doc_bytes" in got.drops_of("bomb.txt.gz")[0]["detail"]
    assert [d["text"] for d in got.docs_of("bomb.jsonl.gz")] == [SENTENCE, SENTENCE]
    (line,) = got.drops_of("bomb.jsonl.gz")
    assert (line["drop_reason"], line["record_index"], line["offset"]) == ("text_too_large", 2, len(good))
    # Neither process holds an inflated bomb: the worker reads at most one max_doc_bytes (64 MiB) line.
    assert got.peak_worker_mb < 700 and parent_peak < 64 * MB
    assert got.seconds < 45, got.seconds


def test_64_mb_lines_and_text_nodes(tmp_path: Path) -> None:
    folder = inputs_dir(tmp_path)
    good = b'{"text": "%s"}\n' % SENTENCE.encode()
    words = b"word " * (64_000_000 // 5)  # 64 MB, just under max_doc_bytes (64 MiB)
    (folder / "long.jsonl").write_bytes(good + b'{"text": "' + words + b"x" * (4 * MB) + b'"}\n' + good)
    (folder / "long.txt").write_bytes(words)
    (folder / "long.html").write_bytes(b"<html><body><p>" + words + b"</p></body></html>")
    got = ingest_folder(folder, tmp_path / "out")
    assert not got.unaccounted()
    assert [d["text"] for d in got.docs_of("long.jsonl")] == [SENTENCE, SENTENCE]  # the lines around it
    (line,) = got.drops_of("long.jsonl")
    assert (line["drop_reason"], line["record_index"], line["offset"]) == ("text_too_large", 2, len(good))
    assert got.reasons_of("long.html") == ["html_too_large"]
    (text,) = got.docs_of("long.txt")
    assert len(text["text"]) == len(words) - 1  # the trailing space stripped
    # Hashing the normalized text of a 64 MB document of short words takes ~1.2 GB (storage.schemas).
    assert got.peak_worker_mb < 2000 and got.seconds < 60, (got.peak_worker_mb, got.seconds)


# ---- deep nesting --------------------------------------------------------------------------------


def test_deeply_nested_html_and_jsonl(tmp_path: Path) -> None:
    folder = inputs_dir(tmp_path)
    body = f"<p>{SENTENCE}</p>".encode() * 5
    (folder / "deep.html").write_bytes(b"<html><body>" + b"<div>" * 100_000 + body + b"</div>" * 100_000)
    (folder / "unclosed.html").write_bytes(b"<html><body>" + b"<div><p><span><b><i>" * 20_000 + body)
    (folder / "shallow.html").write_bytes(b"<html><body>" + b"<div>" * 50 + body + b"</div>" * 50)
    good = b'{"text": "%s"}\n' % SENTENCE.encode()
    # Too deep for json.loads (100,000 levels), and deep enough to stop pickle, which sends records (600).
    sendable = b'{"a": ' + b"[" * 600 + b"]" * 600 + b', "text": "deep record"}\n'
    (folder / "deep.jsonl").write_bytes(
        good + b"[" * 100_000 + b"\n" + b'{"a":' * 100_000 + b"\n" + sendable + good
    )
    got = ingest_folder(folder, tmp_path / "out")
    assert not got.unaccounted()
    assert SENTENCE in got.docs_of("shallow.html")[0]["text"]
    for name in ("deep.html", "unclosed.html"):  # libxml2 stops at its depth limit: the text is not reached
        assert got.docs_of(name) or got.reasons_of(name) == ["html_no_main_content"], name
    assert [d["text"] for d in got.docs_of("deep.jsonl")] == [SENTENCE, SENTENCE]
    assert [(d["drop_reason"], d["record_index"]) for d in got.drops_of("deep.jsonl")] == [
        ("jsonl_bad_line", 2),
        ("jsonl_bad_line", 3),
        ("jsonl_bad_line", 4),
    ]
    assert got.peak_worker_mb < 1000 and got.seconds < 30, (got.peak_worker_mb, got.seconds)


# ---- PDFs ----------------------------------------------------------------------------------------

PAGE_TEXT = b"A page of text that survives the lies."


def raw_pdf(length: bytes | None = None, count: int = 1) -> bytes:
    """A one-page PDF written byte by byte, its stream /Length and page /Count as given (or true)."""
    content = b"BT /F1 12 Tf 72 720 Td (" + PAGE_TEXT + b") Tj ET"
    resources = b"/Resources << /Font << /F1 5 0 R >> >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count %d >>" % count,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] " + resources + b" /Contents 4 0 R >>",
        b"<< /Length " + (length or b"%d" % len(content)) + b" >>\nstream\n" + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_pdfs_whose_lengths_and_xref_lie(tmp_path: Path) -> None:
    folder = inputs_dir(tmp_path)
    true = raw_pdf()
    xref = true.index(b"xref")
    lies = {
        "length-999999.pdf": raw_pdf(b"999999"),
        "length-negative.pdf": raw_pdf(b"-5"),
        "length-int64.pdf": raw_pdf(b"9223372036854775807"),
        "length-missing-object.pdf": raw_pdf(b"99 0 R"),
        "xref-truncated.pdf": true[: xref + 40],
        "xref-offsets-wrong.pdf": true.replace(b"0000000009 00000 n", b"0000099999 00000 n"),
        "startxref-past-eof.pdf": true.replace(b"startxref\n%d" % xref, b"startxref\n99999999"),
    }
    counts = {"count-billion.pdf": raw_pdf(count=10**9), "count-negative.pdf": raw_pdf(count=-3)}
    for name, data in (lies | counts).items():
        (folder / name).write_bytes(data)
    got = ingest_folder(folder, tmp_path / "out")
    assert not got.unaccounted() and len(got.inputs) == 9
    for name in lies:  # MuPDF reads past the lying length, or rebuilds the cross-reference table
        (doc,) = got.docs_of(name)
        assert doc["text"] == PAGE_TEXT.decode(), name
    for name in counts:  # a page tree that lies about its size: a document, or unreadable, never a failure
        assert got.docs_of(name) or got.reasons_of(name) == ["pdf_unreadable"], name
    assert got.seconds < 30, got.seconds


def test_pdf_with_undecodable_mupdf_warnings_costs_nothing_of_its_group(tmp_path: Path) -> None:
    """A PDF whose MuPDF warnings carry non-UTF-8 bytes once failed its whole group (8 PDFs) on storage."""
    folder = inputs_dir(tmp_path)
    write_undecodable_warning_pdf(folder / "fuzzed.pdf")
    for k in range(7):
        write_pdf(folder / f"healthy-{k}.pdf", [[(72, 100, f"Healthy document number {k}. {SENTENCE}")]])
    one_group = CFG.model_copy(update={"group_files": 10**6})  # no content-defined cut among 8 files
    got = ingest_folder(folder, tmp_path / "out", one_group)
    assert len(got.refs) == 1 and len(got.inputs) == 8 and not got.unaccounted()
    assert len(got.docs) >= 7 and all(not has_surrogates(d["meta_json"]) for d in got.docs)
    for k in range(7):
        assert got.docs_of(f"healthy-{k}.pdf")[0]["text"].startswith(f"Healthy document number {k}.")
    # The damaged file is still read; its warnings are kept, the undecodable bytes as U+FFFD.
    assert "'Im\ufffd\ufffd'" in got.docs_of("fuzzed.pdf")[0]["meta_json"]


def test_thousands_of_blank_pages(tmp_path: Path) -> None:
    folder = inputs_dir(tmp_path)
    doc = pymupdf.open()
    for _ in range(5000):
        doc.new_page()
    doc.save(folder / "blank.pdf", deflate=True)
    assert (folder / "blank.pdf").stat().st_size < 2 * MB
    got = ingest_folder(folder, tmp_path / "out")
    (drop,) = got.drops
    assert drop["drop_reason"] == "pdf_no_text" and drop["input_uri"] == got.inputs["blank.pdf"]
    assert got.peak_worker_mb < 1000 and got.seconds < 60, (got.peak_worker_mb, got.seconds)


# ---- file names a shell would misread ----------------------------------------------------------------

HOSTILE_NAMES: list[str | bytes] = [
    "with  two spaces.txt",
    'it\'s "quoted".md',
    "$(touch x).txt",
    "`touch x`.pdf",
    "a;rm -rf canary;b.txt",
    "-rf --help.jsonl",
    "new\nline.html",
    "back\\slash.txt",
    "star*and?question[1].txt",
    "pipe|amp&gt>lt<.txt",
    "n" * 246 + ".pdf",  # 250 bytes: the longest a name may be is 255
    "📚 books 😀.txt",
    "שלום עולם.txt",
    "\u202etxt.exe.html",  # a right-to-left override
    b"latin1-caf\xe9.txt",  # names that are not UTF-8: Python carries them as lone surrogates
    b"bad\xff.pdf",
    b"cut-utf8-\xc3.jsonl",
]


def write_named(folder: Path, name: str | bytes) -> None:
    """A small valid input of the kind the name's suffix says (bytes names are written as they are)."""
    suffix = Path(os.fsdecode(name)).suffix
    path = os.path.join(os.fsencode(folder), os.fsencode(name))
    if suffix == ".pdf":
        doc = pymupdf.open()
        doc.new_page().insert_text((72, 100), SENTENCE)
        data = doc.tobytes()  # PyMuPDF cannot save to a name that is not UTF-8; Python can
    elif suffix == ".html":
        data = f"<html><head><title>T</title></head><body><p>{SENTENCE}</p></body></html>".encode()
    elif suffix == ".jsonl":
        data = f'{{"text": "{SENTENCE}"}}\n'.encode()
    else:
        data = SENTENCE.encode()
    with open(path, "wb") as f:
        f.write(data)


def test_shell_hostile_file_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = inputs_dir(tmp_path)
    cwd = tmp_path / "cwd"
    (cwd / "canary").mkdir(parents=True)
    (folder / "canary").mkdir()
    monkeypatch.chdir(cwd)  # where a shell would have run `touch x` or `rm -rf canary`
    for name in HOSTILE_NAMES:
        write_named(folder, name)
    got = ingest_folder(folder, tmp_path / "out")
    expected = {
        Path(os.fsdecode(os.path.join(os.fsencode(folder), os.fsencode(n)))).resolve().as_uri()
        for n in HOSTILE_NAMES
    }
    assert set(got.inputs.values()) == expected and not got.unaccounted()
    assert not got.drops, got.drops
    assert sorted(d["input_uri"] for d in got.docs) == sorted(expected)
    assert all(SENTENCE in d["text"] for d in got.docs)
    assert not (cwd / "x").exists() and not (folder / "x").exists()
    assert (cwd / "canary").is_dir() and (folder / "canary").is_dir()
