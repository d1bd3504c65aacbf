"""Tests for tasks/pdf.py and tasks/pdf_layout.py: PDF files in, one Document or Drop out, clean text."""

from __future__ import annotations

import csv
import itertools
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pymupdf
import pytest
from pydantic import ValidationError

import tasks.pdf as pdf_module
from storage.schemas import Document, Drop, documents_table
from tasks.pdf import PdfConfig, extract_pdf

CFG = PdfConfig()
MTIME = 1_700_000_000  # 2023-11-14T22:13:20Z
WORDS = ["ants", "bees", "cats", "dogs", "eels", "foxes", "gnus", "hens", "ibis", "jays", "kites"]


# ---- helpers: tiny PDFs written with PyMuPDF -----------------------------------------------------


def write_pdf(path: Path, pages: list[list[tuple[float, float, str]]], **metadata: str) -> Path:
    """A PDF with one page per entry, each a list of (x, y, text) written in that (stream) order."""
    doc = pymupdf.open()
    for spec in pages:
        page = doc.new_page(width=595, height=842)
        for x, y, text in spec:
            page.insert_text((x, y), text, fontname="cour", fontsize=9)
    if metadata:
        doc.set_metadata(metadata)
    doc.save(path)
    os.utime(path, (MTIME, MTIME))
    return path


def one(path: Path, cfg: PdfConfig = CFG) -> Document | Drop:
    """Extract a PDF and check the one-record contract."""
    out = extract_pdf(path, cfg)
    assert len(out) == 1
    return out[0]


def doc_of(path: Path, cfg: PdfConfig = CFG) -> Document:
    """Extract a PDF that must become a Document."""
    rec = one(path, cfg)
    assert isinstance(rec, Document), rec
    return rec


def drop_of(path: Path, cfg: PdfConfig = CFG) -> Drop:
    """Extract a PDF that must become a Drop."""
    rec = one(path, cfg)
    assert isinstance(rec, Drop), rec
    return rec


def page_texts(doc: Document) -> list[str]:
    """The document text cut at meta.page_starts."""
    starts = [*doc.meta["page_starts"], len(doc.text)]
    return [doc.text[a:b] for a, b in itertools.pairwise(starts)]


def manual_page(n: int, total: int) -> list[tuple[float, float, str]]:
    """A two-column page with a running header, a page footer and a hyphenated word.

    The right column is written first, so stream order alone would read it before the left one.
    """
    left = [f"Left column {n}.{k} tells of {WORDS[(3 * n + k) % 11]}." for k in range(8)]
    left[3] = "This line ends in an exam-"
    left[4] = f"ple of a split word {n}."
    right = [f"Right column {n}.{k} sings of {WORDS[(5 * n + k) % 11]}." for k in range(8)]
    spec = [(320, 120 + 14 * k, line) for k, line in enumerate(right)]
    spec += [(72, 120 + 14 * k, line) for k, line in enumerate(left)]
    spec += [(72, 50, f"ACME Widget Manual, chapter {1 + n // 3}"), (290, 800, f"Page {n} of {total}")]
    return spec


def write_undecodable_warning_pdf(path: Path) -> Path:
    """A one-page PDF whose content stream names a missing image with raw bytes 0xE9 0xFF in its name.

    MuPDF warns "cannot find XObject resource" quoting the name byte for byte, so its warnings carry
    bytes that are not UTF-8 (as lone surrogates), as with fuzzed files from PDF-renderer test suites.
    """
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text(
        (72, 100), "The text of this page is fine; an image it names is missing.", fontname="helv"
    )
    xref = page.get_contents()[0]
    doc.update_stream(xref, doc.xref_stream(xref) + b"\n/Im\xe9\xff Do\n")
    doc.save(path)
    return path


def has_surrogates(text: str) -> bool:
    """Whether the string holds lone surrogates (undecodable bytes), which UTF-8 cannot encode."""
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@pytest.fixture
def manual(tmp_path: Path) -> Path:
    """A 5-page two-column 'manual' with headers, footers and hyphenation."""
    return write_pdf(
        tmp_path / "manual.pdf", [manual_page(n, 5) for n in range(1, 6)], title="ACME", author="Ann"
    )


# ---- the contract on tiny generated files --------------------------------------------------------


def test_generated_manual_document_fields(manual: Path) -> None:
    doc = doc_of(manual)
    assert doc.source == "pdf"
    assert doc.uri == manual.resolve().as_uri()
    assert doc.title == "ACME"
    assert doc.meta["author"] == "Ann"
    assert doc.fetched_at == datetime.fromtimestamp(MTIME, tz=UTC)
    assert doc.meta["pages"] == doc.meta["pages_total"] == 5
    assert doc.meta["truncated"] is False
    assert doc.meta["needs_ocr"] is False and doc.meta["ocr_pages"] == 0
    json.dumps(doc.meta)  # JSON-serializable


def test_headers_footers_and_page_numbers_removed(manual: Path) -> None:
    doc = doc_of(manual)
    assert "ACME Widget Manual" not in doc.text
    assert "Page 3 of 5" not in doc.text and " of 5" not in doc.text
    assert doc.meta["header_lines_removed"] == 10
    # Body text survives, including the first and last line of every page.
    for n in range(1, 6):
        assert f"Left column {n}.0 tells" in doc.text
        assert f"Right column {n}.7 sings" in doc.text


def test_cleanup_switches(manual: Path) -> None:
    kept = doc_of(manual, PdfConfig(header_lines=0, dehyphenate=False))
    assert kept.text.count("ACME Widget Manual") == 5 and "Page 3 of 5" in kept.text
    assert "exam-\nple" in kept.text and kept.meta["header_lines_removed"] == 0
    numbers = doc_of(manual, PdfConfig(remove_headers=False))
    assert "ACME Widget Manual" in numbers.text and "Page 3 of 5" not in numbers.text
    # "Page n of 5" also goes as a running footer; bare numbers only by the page-number rule.
    headers = doc_of(manual, PdfConfig(remove_page_numbers=False))
    assert "ACME Widget Manual" not in headers.text and "Page 3 of 5" not in headers.text


def test_columns_read_left_then_right_without_interleaving(manual: Path) -> None:
    pages = page_texts(doc_of(manual))
    assert len(pages) == 5
    for n, text in enumerate(pages, start=1):
        assert text.startswith(f"Left column {n}.0")
        # The whole left column comes before any of the right column.
        assert text.index(f"Left column {n}.7") < text.index(f"Right column {n}.0")
        left = [f"Left column {n}.{k}" for k in (0, 1, 2, 5, 6, 7)]
        assert [text.index(s) for s in left] == sorted(text.index(s) for s in left)


def test_hyphenated_line_end_joined(manual: Path) -> None:
    doc = doc_of(manual)
    assert all(f"This line ends in an example of a split word {n}." in doc.text for n in range(1, 6))
    assert "exam-" not in doc.text


def test_hyphen_kept_before_uppercase_and_across_page_break(tmp_path: Path) -> None:
    pages = [
        [
            (72, 100, "A painting by Jean-"),
            (72, 114, "Paul Riopelle hangs here."),
            (72, 700, "The text runs on to an exam-"),
        ],
        [(72, 100, "ple on the next page."), (72, 114, "More text.")],
    ]
    doc = doc_of(write_pdf(tmp_path / "h.pdf", pages))
    assert "A painting by Jean-\n\nPaul Riopelle" in doc.text  # a capital: no join
    assert "an example on the next page." in doc.text
    # The second page starts where its own text starts, after the joined word's head.
    assert doc.text[doc.meta["page_starts"][1] :].startswith("ple on the next page.")


def test_interleaved_parallel_columns_are_separated(tmp_path: Path) -> None:
    """Parallel texts typeset row by row (left line, right line, ...) must not come out interleaved."""
    spec = []
    for k in range(8):
        spec += [(72, 100 + 13 * k, f"Left side line {k:02d} reads lorem ipsum")]
        spec += [(330, 100 + 13 * k, f"Right side line {k:02d} says dolor sit")]
    text = doc_of(write_pdf(tmp_path / "parallel.pdf", [spec])).text
    left = "\n".join(f"Left side line {k:02d} reads lorem ipsum" for k in range(8))
    right = "\n".join(f"Right side line {k:02d} says dolor sit" for k in range(8))
    assert left in text and right in text
    assert text.index(left) < text.index(right)


def test_table_rows_stay_together(tmp_path: Path) -> None:
    """Two ragged table columns are not parallel prose: rows keep their cells side by side."""
    rows = [("apt", "install a package"), ("dpkg", "query the package database now"), ("aptitude", "browse")]
    spec = [
        (x, 100 + 13 * k, cell)
        for k, row in enumerate(rows * 3)
        for x, cell in zip((72, 330), row, strict=True)
    ]
    text = doc_of(write_pdf(tmp_path / "table.pdf", [spec])).text
    assert text.index("apt") < text.index("install a package") < text.index("dpkg")


def test_roman_and_bare_page_numbers_removed_body_number_kept(tmp_path: Path) -> None:
    pages = [
        [
            (300, 40, roman),
            (72, 100, f"Front matter page {k} starts here."),
            (72, 300, "42"),
            (72, 314, WORDS[k]),
        ]
        for k, roman in enumerate(["i", "ii", "iii", "iv"], start=1)
    ]
    doc = doc_of(write_pdf(tmp_path / "roman.pdf", pages))
    for k in range(1, 5):
        assert page_texts(doc)[k - 1].startswith(f"Front matter page {k}")
    assert doc.text.count("\n42\n") == 4
    assert "iv" not in doc.text.split()
    kept = doc_of(tmp_path / "roman.pdf", PdfConfig(remove_page_numbers=False))
    assert page_texts(kept)[3].startswith("iv\n\nFront matter page 4")


def test_max_pages_truncates(manual: Path) -> None:
    doc = doc_of(manual, PdfConfig(max_pages=2))
    assert doc.meta["pages"] == 2 and doc.meta["pages_total"] == 5 and doc.meta["truncated"] is True
    assert len(doc.meta["page_starts"]) == 2
    assert "Left column 3.0" not in doc.text


def test_soft_time_limit_gives_pdf_timeout(manual: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(0, 10_000, 50))

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return float(next(ticks))

    monkeypatch.setattr(pdf_module, "time", Clock)
    drop = drop_of(manual, PdfConfig(time_limit_s=120))
    assert drop.reason == "pdf_timeout"
    assert drop.detail.startswith("stopped after 2 of 5 pages")
    assert drop.page == 3  # the page it stopped at


def test_image_only_page_flagged_for_ocr(tmp_path: Path) -> None:
    path = write_pdf(
        tmp_path / "mixed.pdf", [[(72, 100, "Typed page one.")], [], [(72, 100, "Typed page three.")]]
    )
    doc = pymupdf.open(path)
    pix = pymupdf.Pixmap(pymupdf.csGRAY, pymupdf.IRect(0, 0, 40, 40), False)
    pix.clear_with(128)
    doc[1].insert_image(pymupdf.Rect(100, 100, 300, 300), pixmap=pix)
    doc.saveIncr()
    rec = doc_of(path)
    assert rec.meta["needs_ocr"] is True
    assert rec.meta["ocr_pages"] == 1 and rec.meta["ocr_page_numbers"] == [2]
    assert rec.meta["repaired"] is False


def test_all_scans_drop_and_blank_pdf_drop(tmp_path: Path) -> None:
    doc = pymupdf.open()
    pix = pymupdf.Pixmap(pymupdf.csGRAY, pymupdf.IRect(0, 0, 40, 40), False)
    for _ in range(2):
        doc.new_page().insert_image(pymupdf.Rect(0, 0, 200, 200), pixmap=pix)
    doc.save(tmp_path / "scan.pdf")
    assert drop_of(tmp_path / "scan.pdf").reason == "pdf_no_text_layer"
    assert drop_of(write_pdf(tmp_path / "blank.pdf", [[], []])).reason == "pdf_no_text"


def test_bad_files_become_drops(tmp_path: Path) -> None:
    (tmp_path / "text.pdf").write_text("hello, this is not a PDF at all\n" * 20)
    (tmp_path / "empty.pdf").write_bytes(b"")
    pymupdf.open().new_page().get_pixmap().save(tmp_path / "image.pdf", output="png")  # a PNG named .pdf
    for name in ("text.pdf", "empty.pdf", "image.pdf", "missing.pdf"):
        drop = drop_of(tmp_path / name)
        assert drop.reason == "pdf_unreadable", (name, drop)
        assert drop.uri == (tmp_path / name).resolve().as_uri() and drop.source == "pdf"
    assert "not a PDF" in drop_of(tmp_path / "image.pdf").detail


def test_mupdf_warnings_with_undecodable_bytes_become_encodable(tmp_path: Path) -> None:
    path = write_undecodable_warning_pdf(tmp_path / "fuzzed.pdf")
    pymupdf.TOOLS.reset_mupdf_warnings()
    with pymupdf.open(path) as raw:
        raw[0].get_text()
    assert has_surrogates(pymupdf.TOOLS.mupdf_warnings())  # the file really provokes such warnings
    doc = doc_of(path)
    assert doc.text == "The text of this page is fine; an image it names is missing."
    warnings = doc.meta["mupdf_warnings"]
    assert "syntax error: cannot find XObject resource 'Im\ufffd\ufffd'" in warnings
    assert not has_surrogates(json.dumps(doc.meta, ensure_ascii=False))
    json.dumps(doc.meta, ensure_ascii=False).encode("utf-8")  # strict UTF-8, as every writer needs


def test_pdf_with_a_non_utf8_file_name_is_read(manual: Path, tmp_path: Path) -> None:
    # MuPDF takes file names as UTF-8 only; a name with an undecodable byte must not make a good file a drop.
    raw_name = os.path.join(os.fsencode(tmp_path), b"caf\xe9 manual.pdf")
    with open(raw_name, "wb") as f:
        f.write(manual.read_bytes())
    path = Path(os.fsdecode(raw_name))
    doc = doc_of(path)
    assert doc.uri == path.resolve().as_uri() and doc.uri.endswith("/caf%E9%20manual.pdf")
    assert doc.text == doc_of(manual).text


def test_truncated_generated_pdf_is_repaired(manual: Path, tmp_path: Path) -> None:
    data = manual.read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(data[: data.rindex(b"xref")])  # lose the cross-reference table and trailer
    doc = doc_of(cut)
    assert doc.meta["repaired"] is True and doc.meta["pages"] == 5
    assert "Left column 5.7 tells of" in doc.text


def test_output_is_deterministic(manual: Path) -> None:
    first, second = doc_of(manual), doc_of(manual)
    assert first.row() == second.row()
    assert documents_table([first]).equals(documents_table([second]))


def test_config_is_frozen_and_strict() -> None:
    with pytest.raises(ValidationError):
        PdfConfig(max_page=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CFG.max_pages = 1  # type: ignore[misc]
    assert PdfConfig.model_fields["max_pages"].description  # attribute docstrings reach the UI


# ---- the real files in ../shared/data/pdf ---------------------------------------------------------


@pytest.fixture(scope="session")
def shared_results(shared_data: Path) -> dict[str, Document | Drop]:
    """Every shared PDF extracted once, keyed by its path relative to pdf/."""
    root = shared_data / "pdf"
    results = {}
    for path in sorted(root.rglob("*.pdf")):
        out = extract_pdf(path, CFG)
        assert len(out) == 1, path
        results[str(path.relative_to(root))] = out[0]
    return results


@pytest.fixture(scope="session")
def index_rows(shared_data: Path) -> list[dict[str, str]]:
    """The rows of pdf/index.tsv."""
    with (shared_data / "pdf" / "index.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_every_shared_pdf_gives_one_record(shared_results: dict, index_rows: list[dict[str, str]]) -> None:
    assert set(shared_results) == {row["path"] for row in index_rows}
    table = documents_table([r for r in shared_results.values() if isinstance(r, Document)])
    assert table.num_rows == 35  # 51 files: 16 drops (scans, encrypted, invalid, no pages)


def test_index_facts_match(shared_results: dict, index_rows: list[dict[str, str]]) -> None:
    for row in index_rows:
        rec, path = shared_results[row["path"]], row["path"]
        if "FileDataError" in row["repaired_or_error"]:
            assert isinstance(rec, Drop) and rec.reason == "pdf_unreadable", path
        elif row["encrypted"] == "1":
            assert isinstance(rec, Drop) and rec.reason == "pdf_encrypted", path
        elif row["pages"] == "0":
            assert isinstance(rec, Drop) and rec.reason == "pdf_no_pages", path
            assert "repaired" in rec.detail
        elif row["image_only_pages"] == row["pages"] and row["text_chars"] == "0":
            assert isinstance(rec, Drop) and rec.reason == "pdf_no_text_layer", path
        else:
            assert isinstance(rec, Document), (path, rec)
            assert rec.meta["pages_total"] == rec.meta["pages"] == int(row["pages"]), path
            assert rec.meta["ocr_pages"] == int(row["image_only_pages"]), path
            assert rec.meta["needs_ocr"] is (row["image_only_pages"] != "0"), path
            assert len(rec.meta["page_starts"]) == int(row["pages"]), path
            # Cleanup removes headers and numbers but keeps nearly all the text (spaces aside).
            assert len(rec.text) > 0.9 * int(row["text_chars"]) - 100, path


def test_encrypted_shared_file_opens_with_password(shared_data: Path) -> None:
    path = shared_data / "pdf" / "pypdf-sample-files" / "libreoffice-writer-password.pdf"
    assert "openpassword" not in drop_of(path, PdfConfig(passwords=("wrong",))).detail
    doc = doc_of(path, PdfConfig(passwords=("wrong", "openpassword")))
    assert doc.meta["encrypted"] is True
    assert doc.text.startswith("Lorem ipsum dolor sit amet")
    assert "openpassword" not in json.dumps(doc.meta)


def test_multipage_scan_lists_ocr_pages(shared_results: dict) -> None:
    doc = shared_results["ocrmypdf/multipage.pdf"]
    assert doc.meta["ocr_page_numbers"] == [1, 2, 3, 5, 6]
    assert shared_results["debian/debian-reference.en.pdf"].meta["ocr_page_numbers"] == [1]


def test_running_headers_removed_from_real_manuals(shared_data: Path, shared_results: dict) -> None:
    path = shared_data / "pdf" / "debian" / "R-intro.pdf"
    raw = "".join(page.get_text() for page in pymupdf.open(path))
    text = shared_results["debian/R-intro.pdf"].text
    assert raw.count("Chapter 10: Writing your own functions") == 9
    assert "Chapter 10: Writing your own functions" not in text
    assert "10 Writing your own functions" in text  # the chapter title itself stays
    ref = shared_results["debian/debian-reference.en.pdf"].text
    assert "103 / 233" not in ref
    assert ref.count("Debian Reference\n") <= 3  # the title page and two sentences; was on all 261 pages


def test_real_multicolumn_reading_order(shared_results: dict) -> None:
    text = shared_results["pypdf-sample-files/multicolumn.pdf"].text
    # Column 1 ends mid-sentence and column 2 carries on; no line of column 2 comes earlier.
    assert text.index("congue non, volutpat at") < text.index("pellentesque ante. Phasellus")
    assert text.index("Nulla malesuada porttitor diam") < text.index("Quisque ullamcorper placerat")
    card = shared_results["debian/asymptote-asyRefCard.pdf"].text
    assert card.index("C strings: octal, hexadecimal bytes") < card.index("Operators\narithmetic operations")
    parallel = page_texts(
        shared_results["texlive-humanities/4-reledpar_columns_titles_in_line_numbering_with_notes.pdf"]
    )[4]
    assert "16 lines, but not the forgotten." in parallel
    assert parallel.index("16 lines, but not the forgotten.") < parallel.index(
        "I use git to manage some packages. 2R"
    )


def test_truncated_real_files(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "pdf" / "pypdf-sample-files" / "google-doc-document.pdf").read_bytes()
    (tmp_path / "half.pdf").write_bytes(data[: len(data) // 2])
    doc = doc_of(tmp_path / "half.pdf")
    assert doc.meta["repaired"] is True and doc.meta["pages"] == 1
    assert "Beautiful is better than ugly." in doc.text  # the text survives the repair
    assert "repairing PDF document" in doc.meta["mupdf_warnings"]
    manual = (shared_data / "pdf" / "debian" / "R-data.pdf").read_bytes()
    (tmp_path / "manual-half.pdf").write_bytes(manual[: len(manual) // 2])
    drop = drop_of(tmp_path / "manual-half.pdf")
    assert drop.reason == "pdf_no_pages" and "repaired" in drop.detail


def test_mupdf_messages_are_kept_off_the_console(
    shared_data: Path, manual: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """MuPDF's own printing is silenced while we run (even if a caller enabled it) and restored after."""
    data = manual.read_bytes()
    (tmp_path / "cut.pdf").write_bytes(data[: data.rindex(b"xref")])
    pymupdf.TOOLS.mupdf_display_warnings(True)
    pymupdf.TOOLS.mupdf_display_errors(True)
    try:
        drop = drop_of(shared_data / "pdf" / "ocrmypdf" / "invalid.pdf")
        doc = doc_of(tmp_path / "cut.pdf")
        assert pymupdf.TOOLS.mupdf_display_warnings() and pymupdf.TOOLS.mupdf_display_errors()
    finally:
        pymupdf.TOOLS.mupdf_display_warnings(False)
        pymupdf.TOOLS.mupdf_display_errors(False)
    assert capfd.readouterr() == ("", "")
    assert "repairing PDF document" in drop.detail
    assert "trying to repair broken xref" in doc.meta["mupdf_warnings"]


def test_markup_named_pdf_is_not_handed_to_mupdf(tmp_path: Path) -> None:
    # MuPDF sniffs content and parsed this as XHTML for 7 s (a fuzzed page of nested divs named .pdf).
    page = tmp_path / "page.pdf"
    page.write_bytes(b'\xef\xbb\xbf <?xml version="1.0"?><html><body>' + b"<div>" * 8000)
    (drop,) = extract_pdf(page, PdfConfig())
    assert isinstance(drop, Drop) and drop.reason == "pdf_unreadable" and "starts with markup" in drop.detail
    # Junk before the header is allowed within the first 1024 bytes, as readers do.
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "A page of real text after some junk.")
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"<junk>\n" * 20 + doc.tobytes())
    (kept,) = extract_pdf(junk, PdfConfig())
    assert isinstance(kept, Document) and "real text" in kept.text
