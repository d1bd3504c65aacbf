"""Tests for plain text, Markdown and JSONL ingestion (tasks/text.py)."""

from __future__ import annotations

import codecs
import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage.schemas import Document, Drop, doc_id, documents_table, drops_table
from tasks.text import TextConfig, decode_text, extract_text_file, markdown_to_text, strip_gutenberg

CFG = TextConfig()

# file -> (encoding, title, author, first line of the book proper, words from its last line)
GUTENBERG = {
    "pg11-alice-in-wonderland.en.utf8.txt": (
        "utf-8-sig", "Alice’s Adventures in Wonderland", "Lewis Carroll",
        "ALICE’S ADVENTURES IN WONDERLAND", "THE END",
    ),
    "pg1342-pride-and-prejudice.en.utf8.txt": (
        "utf-8-sig", "Pride and Prejudice", "Jane Austen",
        "PRIDE AND PREJUDICE", "the means of uniting them.",
    ),
    "pg1661-adventures-of-sherlock-holmes.en.latin1.txt": (
        "latin_1", "The Adventures of Sherlock Holmes", "Arthur Conan Doyle",
        "THE ADVENTURES OF SHERLOCK HOLMES", "met with considerable success.",
    ),
    "pg22367-die-verwandlung.de.latin1.txt": (
        "latin_1", "Die Verwandlung", "Franz Kafka", "DIE VERWANDLUNG", "ihren jungen Körper dehnte.",
    ),
    "pg2701-moby-dick.en.utf8.txt": (
        "utf-8-sig", "Moby Dick; or The Whale", "Herman Melville", "MOBY-DICK;", "only found another orphan.",
    ),
    "pg3261-news-from-nowhere.en.txt": (
        "utf-8", "News from Nowhere or An Epoch of Rest, being some chapters from A Utopian Romance",
        "William Morris", "NEWS FROM NOWHERE", "Cirencester and Burford he must have meant.",
    ),
    "pg5200-metamorphosis.en.txt": (
        "utf-8", "Metamorphosis", "Franz Kafka", "Metamorphosis", "stretch out her young body.",
    ),
    "pg76-huckleberry-finn.en.utf8.txt": (
        "utf-8-sig", "Adventures of Huckleberry Finn, Complete", "Mark Twain (Samuel Clemens)",
        "ADVENTURES", "YOURS TRULY, _HUCK FINN_.",
    ),
    "pg84-frankenstein.en.utf8.txt": (
        "utf-8-sig", "Frankenstein or The Modern Prometheus", "Mary Wollstonecraft (Godwin) Shelley",
        "Frankenstein;", "lost in darkness and distance.",
    ),
    "pg972-devils-dictionary.en.txt": (
        "utf-8", "The Devil's Dictionary", "Ambrose Bierce", "THE DEVIL'S DICTIONARY",
        "sheds its horn every two years.",
    ),
}  # fmt: skip

# Phrases of the PG header, footer and license that must not survive stripping.
BOILERPLATE = (
    "This eBook is for the use of anyone anywhere",
    "Project Gutenberg License",
    "Project Gutenberg-tm",
    "START OF TH",
    "END OF TH",
    "End of the Project Gutenberg",
    "End of Project Gutenberg",
    "This file should be named",
    "FULL LICENSE",
    "Character set encoding",
    "Produced by",
)


def run(path: Path, cfg: TextConfig = CFG) -> list[Document | Drop]:
    """All records of one file."""
    return list(extract_text_file(path, cfg))


def only(records: list[Document | Drop]) -> Document | Drop:
    """The single record of a one-document file."""
    assert len(records) == 1, records
    return records[0]


def reasons(records: list[Document | Drop]) -> list[str]:
    """Drop reasons in order, with "doc" for documents."""
    return [r.reason if isinstance(r, Drop) else "doc" for r in records]


# --- decoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [
        (codecs.BOM_UTF8 + "Grüße\r\nzwei".encode(), "utf-8-sig"),
        (codecs.BOM_UTF16_LE + "Grüße\r\nzwei".encode("utf-16-le"), "utf-16-le"),
        (codecs.BOM_UTF16_BE + "Grüße\r\nzwei".encode("utf-16-be"), "utf-16-be"),
        (codecs.BOM_UTF32_LE + "Grüße\r\nzwei".encode("utf-32-le"), "utf-32-le"),
        ("Grüße\r\nzwei".encode(), "utf-8"),
    ],
)
def test_decode_text_boms_and_utf8(raw: bytes, encoding: str) -> None:
    assert decode_text(raw) == ("Grüße\nzwei", encoding)


def test_decode_text_legacy_western_text_is_not_mojibake() -> None:
    # charset-normalizer alone calls this cp1250 and yields "crčme"; ties must favour cp1252.
    french = "Café crème brûlée à la façon de grand-mère. Ça coûte très cher, n’est-ce pas?"
    text, encoding = decode_text(french.encode("cp1252"))
    assert text == french
    assert encoding == "cp1252"
    assert decode_text("Grüße aus München\rdort".encode("latin-1"))[0] == "Grüße aus München\ndort"
    spanish = (
        "El pingüino Wenceslao hizo kilómetros bajo exhaustiva lluvia y frío, añoraba a su querido cachorro."
    )
    assert decode_text(spanish.encode("cp1252")) == (spanish, "cp1252")


def test_decode_text_keeps_central_european_text() -> None:
    polish = (
        "Wszystkie dzieci, oprócz jednego, dorastają. Wiedzą o tym, że dorosną, a Wendy dowiedziała się. " * 3
    )
    assert decode_text(polish.encode("cp1250")) == (polish, "cp1250")


def test_decode_text_keeps_non_latin_legacy_encodings() -> None:
    russian = "Съешь же ещё этих мягких французских булок, да выпей чаю."
    assert decode_text(russian.encode("cp1251")) == (russian, "cp1251")


# --- Project Gutenberg (real files) -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GUTENBERG))
def test_gutenberg_books_decode_and_strip(shared_data: Path, name: str) -> None:
    encoding, title, author, first_line, last_words = GUTENBERG[name]
    doc = only(run(shared_data / "text" / "gutenberg" / name))
    assert isinstance(doc, Document)
    assert doc.meta["encoding"] == encoding
    assert doc.title == title
    assert doc.meta["gutenberg"]["author"] == author
    assert doc.meta["gutenberg"]["header_stripped"] and doc.meta["gutenberg"]["footer_stripped"]
    assert doc.text.split("\n", 1)[0].strip() == first_line
    assert doc.text.endswith(last_words)
    for phrase in BOILERPLATE:
        assert phrase not in doc.text, phrase
    assert "\ufffd" not in doc.text and "Ã" not in doc.text and "\r" not in doc.text


def test_gutenberg_accented_words(shared_data: Path) -> None:
    folder = shared_data / "text" / "gutenberg"
    holmes = only(run(folder / "pg1661-adventures-of-sherlock-holmes.en.latin1.txt")).text
    for word in ("née ADLER", "employé", "dénouement", "Voilà tout", "pâté de foie gras", "répertoire"):
        assert word in holmes
    kafka = only(run(folder / "pg22367-die-verwandlung.de.latin1.txt")).text
    assert kafka.count("daß") >= 100 and "Tür" in kafka and "über" in kafka and "während" in kafka
    alice = only(run(folder / "pg11-alice-in-wonderland.en.utf8.txt")).text
    assert "Alice’s" in alice and not alice.startswith("\ufeff")


def test_gutenberg_credits_kept_in_meta_and_fields(shared_data: Path) -> None:
    doc = only(run(shared_data / "text" / "gutenberg" / "pg5200-metamorphosis.en.txt"))
    pg = doc.meta["gutenberg"]
    assert pg["credits"] == ["Copyright (C) 2002 David Wyllie."]
    assert (pg["translator"], pg["language"], pg["ebook"]) == ("David Wyllie", "English", "5200")


def test_gutenberg_strip_can_be_disabled(shared_data: Path) -> None:
    path = shared_data / "text" / "gutenberg" / "pg972-devils-dictionary.en.txt"
    doc = only(run(path, TextConfig(strip_gutenberg=False)))
    assert doc.title is None and "gutenberg" not in doc.meta
    assert doc.text.startswith("The Project Gutenberg EBook of The Devil's Dictionary")


def test_gutenberg_old_small_print_marker() -> None:
    text = (
        "The Project Gutenberg Etext of Old Book\n\nTitle: Old Book\n\n"
        "**The Legal Small Print**\nlicense words\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n"
        "This etext was prepared by A. Volunteer.\n\n\nCHAPTER I\nIt began.\n\n"
        "End of The Project Gutenberg Etext of Old Book\n"
    )
    body, facts = strip_gutenberg(text)
    assert body.strip() == "CHAPTER I\nIt began."
    assert facts is not None and facts["title"] == "Old Book"
    assert facts["credits"] == ["This etext was prepared by A. Volunteer."]


def test_gutenberg_mention_alone_is_not_a_footer() -> None:
    text = "An essay.\nEnd of Project Gutenberg talk, and more words.\nLast line."
    assert strip_gutenberg(text) == (text, None)
    footer_only = (
        "Book text.\nEnd of Project Gutenberg's Book\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicense"
    )
    assert strip_gutenberg(footer_only) == (
        "Book text.\nEnd of Project Gutenberg's Book",
        {"header_stripped": False, "footer_stripped": True},
    )


def test_text_without_gutenberg_markers_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "plain.txt"
    path.write_bytes(b"  Title: Not a book\r\n\r\nJust some words.\r\n")
    doc = only(run(path))
    assert isinstance(doc, Document)
    assert doc.text == "Title: Not a book\n\nJust some words."
    assert doc.title is None and doc.meta == {"format": "text", "encoding": "utf-8"}


# --- JSONL ----------------------------------------------------------------------------------------------


def test_ccnet_jsonl_records_become_documents(shared_data: Path) -> None:
    for path in sorted((shared_data / "text" / "ccnet-samples-dolma").glob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        docs = run(path)
        assert len(docs) == len(records) == 10
        uri = path.resolve().as_uri()
        for n, (doc, rec) in enumerate(zip(docs, records, strict=True), start=1):
            assert isinstance(doc, Document)
            assert doc.id == doc_id(uri, f"id:{rec['id']}")
            assert doc.text == rec["text"] and doc.source == "text" and doc.uri == uri
            assert doc.meta["url"] == rec["metadata"]["url"] and doc.meta["line"] == n
            assert doc.meta["record"]["metadata"]["language_score"] == rec["metadata"]["language_score"]
            assert "text" not in doc.meta["record"]
            assert doc.title and "\ufeff" not in doc.title
        assert documents_table(docs).num_rows == 10
    getty = run(shared_data / "text" / "ccnet-samples-dolma" / "cc_en_head-0091.jsonl")[7]
    assert getty.title == "Ajitu Capoeira - History"  # the source title starts with a stray BOM


def test_jsonl_every_drop_reason_and_keeps_going(tmp_path: Path) -> None:
    lines = [
        '{"id": "a", "text": "first good", "title": "T", "url": "http://x.org/a"}',
        "{not json",
        "[1, 2]",
        '{"id": "c", "text": NaN}',
        "",
        '{"id": "d"}',
        '{"id": "e", "text": "   "}',
        '{"id": "f", "text": 42}',
        '{"text": "' + "\\u0001" * 20 + 'abc"}',
        '{"id": "a", "text": "same id again"}',
        '{"text": "no id\\r\\nhere"}',
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = run(path)
    assert reasons(records) == [
        "doc", "jsonl_bad_line", "jsonl_bad_line", "jsonl_bad_line", "jsonl_missing_text",
        "jsonl_missing_text", "jsonl_missing_text", "text_binary", "doc", "doc",
    ]  # fmt: skip
    uri = path.resolve().as_uri()
    first, dup, last = records[0], records[8], records[9]
    assert isinstance(first, Document) and first.title == "T" and first.meta["url"] == "http://x.org/a"
    assert first.id == doc_id(uri, "id:a")
    assert dup.id == doc_id(uri, "line:10") and dup.meta["record_id"] == "a"
    assert last.text == "no id\nhere" and last.id == doc_id(uri, "line:11")
    assert records[1].detail.startswith("line 2: ") and records[1].id == doc_id(uri, "line:2")
    assert "expected a JSON object, got list" in records[2].detail
    assert "NaN" in records[3].detail
    assert records[7].detail == "line 9: 87.0% control characters is over max_control_ratio=0.05"
    assert [r.detail for r in records[4:7]] == [
        "line 6: text field 'text' is missing",
        "line 7: text field 'text' is empty",
        "line 8: text field 'text' is int",
    ]
    assert records[4].id == doc_id(uri, "id:d")
    assert drops_table([r for r in records if isinstance(r, Drop)]).num_rows == 7


def test_jsonl_gz_nested_fields_and_huge_line(tmp_path: Path) -> None:
    path = tmp_path / "nested.jsonl.gz"
    rows = [{"doc": {"body": "x" * 500}}, {"doc": {"body": "small one"}, "meta": {"name": "N"}}]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = TextConfig(jsonl_text_field="doc.body", jsonl_title_fields=("meta.name",), max_doc_bytes=100)
    records = run(path, cfg)
    assert reasons(records) == ["text_too_large", "doc"]
    assert records[0].detail == "line 1 is over max_doc_bytes=100"
    assert records[1].text == "small one" and records[1].title == "N"
    assert records[1].meta["record"] == {"doc": {}, "meta": {"name": "N"}}


def test_jsonl_utf16_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "wide.ndjson"
    path.write_bytes(codecs.BOM_UTF16_LE + '{"text": "Grüße"}\r\n{"text": "zwei"}\r\n'.encode("utf-16-le"))
    records = run(path)
    assert [r.text for r in records] == ["Grüße", "zwei"]
    assert records[0].meta["encoding"] == "utf-16"


def test_truncated_jsonl_gz_keeps_good_lines_and_reports(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(b'{"text": "line %d here"}\n' % i for i in range(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    records = run(path)
    assert all(isinstance(r, Document) for r in records[:-1]) and len(records) > 10
    assert records[-1].reason == "text_read_error"
    assert records[-1].detail.startswith(f"read failed after line {len(records) - 1}: ")


def _line_starts(data: bytes) -> list[int]:
    """The byte offset of every line's start."""
    return [0, *(i + 1 for i, b in enumerate(data) if b == ord("\n"))]


def test_jsonl_drops_carry_line_number_and_byte_offset(tmp_path: Path) -> None:
    lines = ['{"text": "Grüße, first"}', "{bad", "", '{"id": "x"}', '{"text": "' + "y" * 300 + '"}', "[]"]
    data = ("\n".join(lines) + "\n").encode()
    for path in (tmp_path / "plain.jsonl", tmp_path / "packed.jsonl.gz"):
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
        records = run(path, TextConfig(max_doc_bytes=200))
        assert reasons(records) == [
            "doc",
            "jsonl_bad_line",
            "jsonl_missing_text",
            "text_too_large",
            "jsonl_bad_line",
        ]
        drops = [r for r in records if isinstance(r, Drop)]
        assert [d.record_index for d in drops] == [2, 4, 5, 6]
        # Offsets count bytes of the (decompressed) stream, past the two-byte "ü" and the skipped long line.
        assert [d.offset for d in drops] == [_line_starts(data)[i - 1] for i in (2, 4, 5, 6)]
        assert all(data[d.offset :].startswith(lines[d.record_index - 1].encode()) for d in drops)
        assert drops_table(drops).column("record_index").to_pylist() == [2, 4, 5, 6]


def test_utf16_jsonl_drops_have_line_numbers_and_no_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "wide.jsonl"
    path.write_bytes(codecs.BOM_UTF16_LE + '{"text": "a"}\n{oops\n'.encode("utf-16-le"))
    _, bad = run(path)
    assert (bad.reason, bad.record_index, bad.offset) == ("jsonl_bad_line", 2, None)


def test_broken_utf16_unit_costs_its_line_not_the_file(tmp_path: Path) -> None:
    # A lone high surrogate (0xD800) in the middle of line 2: strict UTF-16 decoding raises on it.
    body = '{"text": "one"}\n{"text": "the second'.encode("utf-16-le") + b"\x00\xd8"
    body += ' line, a long one"}\n{"text": "three"}\n'.encode("utf-16-le")
    path = tmp_path / "broken.jsonl"
    path.write_bytes(codecs.BOM_UTF16_LE + body)
    records = run(path)
    assert reasons(records) == ["doc", "doc", "doc"]
    assert [r.text for r in records] == ["one", "the second\ufffd line, a long one", "three"]


def test_deeply_nested_jsonl_line_is_one_bad_line(tmp_path: Path) -> None:
    # json raises RecursionError (not a ValueError) on deep nesting; it must not end the file.
    head = '{"text": "before"}\n'
    path = tmp_path / "deep.jsonl"
    path.write_text(head + "[" * 100_000 + '\n{"text": "' + "{" * 50 + '"}\n' + '{"a":' * 5000 + "\n")
    records = run(path)
    assert reasons(records) == ["doc", "jsonl_bad_line", "doc", "jsonl_bad_line"]
    deep = records[1]
    assert deep.record_index == 2 and deep.offset == len(head) and deep.id == doc_id(deep.uri, "line:2")
    assert deep.detail == "line 2: nested deeper than 100 levels"
    assert records[2].text == "{" * 50 and records[3].record_index == 4


def test_jsonl_record_too_deep_to_send_is_a_bad_line(tmp_path: Path) -> None:
    # json.loads parses 600 levels, but pickle (records leave the isolated worker pickled) stops near 500.
    # The record is one level, its list of lists n more.
    lines = ['{"a": ' + "[" * n + "]" * n + f', "text": "depth {n + 1}"}}' for n in (99, 100, 600)]
    path = tmp_path / "deep.jsonl"
    brackets = '"' + "[" * 200 + '"'  # a string: brackets, but no nesting
    path.write_text("\n".join([*lines, '{"text": "null next"}', "null", brackets]) + "\n")
    records = run(path)
    assert reasons(records) == [
        "doc",
        "jsonl_bad_line",
        "jsonl_bad_line",
        "doc",
        "jsonl_bad_line",
        "jsonl_bad_line",
    ]
    assert records[0].text == "depth 100"
    assert records[0].meta["record"]["a"] == json.loads("[" * 99 + "]" * 99)
    assert [r.detail for r in records[1:3]] == [f"line {n}: nested deeper than 100 levels" for n in (2, 3)]
    assert records[4].detail == "line 5: expected a JSON object, got NoneType"
    assert records[5].detail == "line 6: expected a JSON object, got str"


# Runs the extractor in a process whose address space may grow only `budget` MB past its size at start, as
# the isolated worker's cap does (set relative to the start, so the libraries' own reservations don't count).
_CAPPED_RUN = """
import resource, sys
from pathlib import Path
from tasks.text import TextConfig, extract_text_file
start = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (start + int(sys.argv[2]) * 2**20, hard))
for r in extract_text_file(Path(sys.argv[1]), TextConfig()):
    print(getattr(r, "reason", "doc"), getattr(r, "record_index", None), getattr(r, "offset", None))
"""


def _capped_reasons(path: Path, budget_mb: int) -> list[str]:
    """Lines of "reason record_index offset" from extracting a file under a memory cap."""
    done = subprocess.run(
        [sys.executable, "-c", _CAPPED_RUN, str(path), str(budget_mb)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(
    not Path("/proc/self/statm").exists(), reason="needs Linux /proc to set a relative memory cap"
)
def test_jsonl_line_over_the_memory_cap_costs_only_that_line(tmp_path: Path) -> None:
    # 12 MB of empty objects: within max_doc_bytes, but parsed they need ~330 MB.
    good = b'{"text": "a good line"}\n'
    path = tmp_path / "dense.jsonl"
    path.write_bytes(good + b'{"text": "x", "a": [' + b"{}," * 4_000_000 + b"{}]}\n" + good)
    assert _capped_reasons(path, 150) == [
        "doc None None",
        f"extract_out_of_memory 2 {len(good)}",
        "doc None None",
    ]
    # Hashing a 20 MB text of short words in one piece took ~14 times its size; in 1 MB pieces it fits.
    words = tmp_path / "words.txt"
    words.write_bytes(b"word " * 4_000_000)
    assert _capped_reasons(words, 150) == ["doc None None"]


def test_read_error_names_the_line_and_offset_where_reading_failed(tmp_path: Path) -> None:
    data = b"".join(b'{"text": "line %d here"}\n' % i for i in range(2000))
    packed = gzip.compress(data)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    *docs, error = run(path)
    assert error.reason == "text_read_error" and error.record_index == len(docs) + 1
    assert error.offset == _line_starts(data)[len(docs)]


# --- single-document files ------------------------------------------------------------------------------


def test_utf16_text_file_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "wide.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + "Zoë’s naïve café\r\nline two\r\n".encode("utf-16-le"))
    doc = only(run(path))
    assert doc.text == "Zoë’s naïve café\nline two"
    assert doc.meta["encoding"] == "utf-16-le"


def test_text_gz_document_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress("Größe matters.\n".encode("latin-1")))
    os.utime(path, (1_700_000_000, 1_700_000_000))
    doc = only(run(path))
    assert doc.text == "Größe matters."
    assert doc.fetched_at == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert doc.uri == path.resolve().as_uri() and doc.source == "text"


@pytest.mark.parametrize(
    ("name", "content", "reason", "detail"),
    [
        ("empty.txt", b"", "text_empty", "no text left after decoding (utf-8) and cleaning"),
        ("blank.md", b"  \n\n<!-- only a comment -->\n", "text_empty", None),
        ("junk.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), "text_binary", None),
        ("ctrl.text", b"ab\x01\x02\x03\x04\x05\x06\x07\x08cd" * 10, "text_binary", None),
        ("doc.pdf", b"%PDF-1.4", "unsupported_file_type", None),
    ],
)
def test_single_file_drops(
    tmp_path: Path, name: str, content: bytes, reason: str, detail: str | None
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    drop = only(run(path))
    assert isinstance(drop, Drop) and drop.reason == reason and drop.source == "text"
    assert drop.uri == path.resolve().as_uri()
    if detail is not None:
        assert drop.detail == detail


def test_too_large_is_decided_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.txt"
    path.write_text("word " * 100)

    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("file was read")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    drop = only(run(path, TextConfig(max_doc_bytes=100)))
    assert (drop.reason, drop.detail) == ("text_too_large", "500 bytes is over max_doc_bytes=100")


def test_gzip_bomb_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "bomb.md.gz"
    path.write_bytes(gzip.compress(b"a" * 100_000))
    drop = only(run(path, TextConfig(max_doc_bytes=1000)))
    assert (drop.reason, drop.detail) == ("text_too_large", "decompressed size is over max_doc_bytes=1000")


def test_missing_and_corrupt_files_are_read_errors(tmp_path: Path) -> None:
    assert only(run(tmp_path / "nope.txt")).reason == "text_read_error"
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip at all")
    drop = only(run(bad))
    assert drop.reason == "text_read_error" and "BadGzipFile" in drop.detail


# --- Markdown -----------------------------------------------------------------------------------------

MARKDOWN = """---
title: "Hello: World"
date: 2024-01-02
tags: [a, b]
---
# Heading *one*

Para with [a link](http://x.org) and ![the alt](i.png) and <b>bold</b> &amp; more

- item one
- item **two**

| h1 | h2 |
|----|----|
| c1 | `c2` |

```python
print("code")
```

<div>block <i>html</i><script>var x = 1;</script></div>

> quoted
"""


def test_markdown_file_with_yaml_front_matter(tmp_path: Path) -> None:
    path = tmp_path / "post.markdown"
    path.write_text(MARKDOWN.replace("\n", "\r\n"), encoding="utf-8")
    doc = only(run(path))
    assert doc.title == "Hello: World"
    assert doc.meta["front_matter"] == {"title": "Hello: World", "date": "2024-01-02", "tags": ["a", "b"]}
    assert doc.text == (
        "Heading one\n\nPara with a link and the alt and bold & more\n\nitem one\nitem two\n\n"
        'h1\th2\nc1\tc2\n\nprint("code")\n\nblock html\n\nquoted'
    )
    json.dumps(doc.meta, allow_nan=False)  # meta must be plain JSON


def test_markdown_toml_front_matter_and_h1_title() -> None:
    text, title, meta = markdown_to_text('+++\ntitle = "Toml"\nweight = 3\n+++\nBody *text*.\n')
    assert (text, title, meta) == ("Body text.", "Toml", {"front_matter": {"title": "Toml", "weight": 3}})
    text, title, meta = markdown_to_text(
        "---\ntitle: 1984\ndraft: yes\n---\nIntro\n\n# First Heading\n\n## Second\n"
    )
    assert (text, title) == ("Intro\n\nFirst Heading\n\nSecond", "1984")
    assert meta == {"front_matter": {"title": 1984, "draft": True}}
    assert markdown_to_text("Intro\n\n# First Heading\n")[1] == "First Heading"


def test_markdown_bad_front_matter_stays_as_text() -> None:
    text, title, meta = markdown_to_text("---\nkey: [unclosed\n---\nBody.\n")
    assert "key: [unclosed" in text and text.endswith("Body.") and title is None
    assert meta["front_matter_error"].startswith("ParserError: ")
    text, _, meta = markdown_to_text("---\nJust a sentence.\n---\nMore.\n")
    assert "Just a sentence." in text and "not a mapping" in meta["front_matter_error"]


def test_reruns_are_identical(tmp_path: Path) -> None:
    path = tmp_path / "post.md"
    path.write_text(MARKDOWN, encoding="utf-8")
    first, second = run(path), run(path)
    assert documents_table(first).equals(documents_table(second))


def test_split_chars_cuts_one_long_file_at_blank_lines(shared_data: Path) -> None:
    path = shared_data / "text" / "tinyshakespeare" / "input.txt"
    whole = list(extract_text_file(path, TextConfig()))
    docs = list(extract_text_file(path, TextConfig(split_chars=4000)))
    assert len(whole) == 1 and 250 < len(docs) < 400 and all(isinstance(d, Document) for d in docs)
    paragraphs = [p.strip("\n") for p in whole[0].text.split("\n\n") if p.strip()]
    # Every paragraph survives once, in order, and no chunk is over the limit unless one paragraph is.
    assert [p for d in docs for p in d.text.split("\n\n")] == paragraphs
    assert all(len(d.text) <= 4000 or "\n\n" not in d.text for d in docs)
    assert docs[0].id == doc_id(whole[0].uri, "chunk:0") and len({d.id for d in docs}) == len(docs)
    assert docs[1].meta["chunk"] == 1 and docs[1].meta["chunks"] == len(docs)
    # A short file stays one document with the file's own id.
    junk = next((shared_data / "text" / "quality-negatives").glob("*.txt"))
    (short,) = extract_text_file(junk, TextConfig(split_chars=10**9))
    assert isinstance(short, Document) and short.id == doc_id(short.uri, "")


@pytest.mark.parametrize(
    ("name", "data"),
    [("blank.jsonl", b" \n\n"), ("empty.jsonl.gz", b""), ("bom.ndjson", codecs.BOM_UTF16_LE)],
)
def test_jsonl_without_a_record_is_text_empty(tmp_path: Path, name: str, data: bytes) -> None:
    # Found by the fuzzer: such files yielded nothing, so only ingest's catch-all accounted for them.
    path = tmp_path / name
    path.write_bytes(data)
    (drop,) = run(path)
    assert isinstance(drop, Drop) and drop.reason == "text_empty" and drop.uri == path.resolve().as_uri()
