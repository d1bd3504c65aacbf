"""PDF ingestion with PyMuPDF: one Document (or one Drop) per PDF, text in reading order.

This module opens, unlocks and reads PDFs, flags pages that need OCR and assembles the Document or
Drop; the page-layout work (reading order, headers, dehyphenation) is in tasks.pdf_layout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymupdf
from pydantic import BaseModel, ConfigDict, Field

from storage.schemas import Document, Drop, clean_str, new_document
from tasks.pdf_layout import (
    Item,
    Page,
    assemble,
    edge_lines,
    page_items,
    page_text,
    reading_order,
    strip_headers,
)

_MAX_WARNINGS = 20


class PdfConfig(BaseModel):
    """How PDFs become documents: passwords, limits, and the text cleanup steps."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    passwords: tuple[str, ...] = ()
    """Passwords to try, in order, after the empty password, on encrypted PDFs."""
    max_pages: int = Field(2000, ge=1)
    """Extract at most this many pages; later pages are skipped and meta records `truncated`."""
    time_limit_s: float = Field(120.0, gt=0)
    """Soft deadline per PDF in seconds, checked between pages; past it the PDF is dropped (`pdf_timeout`)."""
    min_page_chars: int = Field(1, ge=1)
    """A page showing an image with fewer non-space characters than this has no text layer (needs OCR)."""
    remove_headers: bool = True
    """Remove running headers and footers: lines recurring at the top or bottom of nearby pages."""
    header_lines: int = Field(3, ge=0)
    """Most lines the top (and the bottom) row of a page may hold to count as a header (0: no cleanup)."""
    header_min_pages: int = Field(3, ge=2)
    """A candidate line (digits ignored) must recur on this many pages, each at most 2 pages from the next."""
    remove_page_numbers: bool = True
    """Remove bare page numbers among the header/footer candidates (`12`, `xiv`, `Page 3 of 10`, `- 4 -`)."""
    dehyphenate: bool = True
    """Join words split by a hyphen at a line end (`exam-` + `ple`) when the next line starts lowercase."""
    column_gap_pt: float = Field(7.0, gt=0)
    """Minimum width, in points, of a vertical strip of white space that separates two text columns."""
    min_column_width: float = Field(0.2, gt=0, lt=0.5)
    """Each side of a column split spans at least this fraction of the page width (line numbers don't)."""


# ---- pages ---------------------------------------------------------------------------------------


def _has_text(items: list[Item], min_chars: int) -> bool:
    """Whether the items hold >= min_chars non-space characters (counting stops once they do)."""
    count = 0
    for it in items:
        count += len(it[4]) - it[4].count(" ") - it[4].count("\n")
        if count >= min_chars:
            return True
    return False


def _read_page(page: pymupdf.Page, cfg: PdfConfig) -> Page:
    """Extract one page in reading order and tell whether it is a scan without a text layer."""
    page_w = page.rect.width
    items = page_items(page, page_w, cfg)
    # Only near-empty pages pay for the image lookup; a page with neither text nor images is blank.
    scan = not _has_text(items, cfg.min_page_chars) and bool(page.get_images())
    items = reading_order(items, page_w, cfg)
    return Page([it[4] for it in items], edge_lines(items, cfg.header_lines), scan)


# ---- documents and drops -------------------------------------------------------------------------


@contextmanager
def _quiet_mupdf() -> Iterator[None]:
    """Keep MuPDF's messages off the console (they are collected instead); restore the settings after."""
    errors, warnings = pymupdf.TOOLS.mupdf_display_errors(), pymupdf.TOOLS.mupdf_display_warnings()
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    pymupdf.TOOLS.reset_mupdf_warnings()
    try:
        yield
    finally:
        pymupdf.TOOLS.mupdf_display_errors(errors)
        pymupdf.TOOLS.mupdf_display_warnings(warnings)


def _warnings() -> list[str]:
    """MuPDF's warnings since the last call, deduplicated in order, capped, and always encodable."""
    # MuPDF quotes names from the file (a resource, a font) byte for byte; bytes that are not UTF-8 come
    # back as lone surrogates, which no UTF-8 writer (Arrow, JSON files) accepts.
    lines = clean_str(pymupdf.TOOLS.mupdf_warnings()).splitlines()
    return list(dict.fromkeys(line for line in lines if line.strip()))[:_MAX_WARNINGS]


def _drop(
    uri: str, reason: str, detail: str, warnings: list[str] | None = None, page: int | None = None
) -> Drop:
    """A Drop for this PDF (about one page when `page` is given), MuPDF's warnings appended to the detail."""
    if warnings:
        detail = f"{detail} (MuPDF: {'; '.join(warnings)})"
    return Drop(uri=uri, source="pdf", reason=reason, detail=detail, page=page)


def _unlock(doc: pymupdf.Document, passwords: tuple[str, ...]) -> bool:
    """Try the empty password, then each configured one; True when the document is readable."""
    # Read needs_pass only before authenticating: in PyMuPDF 2.0 it re-runs MuPDF's empty-password
    # check, which resets the key and makes every page of a decrypted file come out empty.
    return not doc.needs_pass or any(doc.authenticate(pw) for pw in ("", *passwords))


def _read_pages(doc: pymupdf.Document, count: int, cfg: PdfConfig) -> tuple[list[Page], list[int]] | int:
    """The first `count` pages and the (1-based) numbers of those that failed; pages done on timeout."""
    deadline = time.monotonic() + cfg.time_limit_s
    pages, failed = [], []
    for i in range(count):
        if time.monotonic() > deadline:
            return i
        try:
            pages.append(_read_page(doc.load_page(i), cfg))
        except Exception:  # one damaged page (bad content stream, font) must not lose the rest
            pages.append(Page([], [], False))
            failed.append(i + 1)
    return pages, failed


def _info(doc: pymupdf.Document) -> tuple[str | None, dict[str, Any]]:
    """The title, and the info-dictionary fields worth keeping in meta (empty ones left out)."""
    info = doc.metadata or {}
    keep = {"author": "author", "creator": "creator", "producer": "producer", "format": "pdf_format"}
    meta = {name: info[key].strip() for key, name in keep.items() if (info.get(key) or "").strip()}
    return (info.get("title") or "").strip() or None, meta


def _open(path: Path) -> pymupdf.Document:
    """Open a PDF file; one whose name is not UTF-8 is read into memory, as MuPDF takes only UTF-8 names."""
    try:
        str(path).encode()
    except UnicodeEncodeError:  # undecodable bytes in the name, carried as lone surrogates
        return pymupdf.open(stream=path.read_bytes(), filetype="pdf")
    return pymupdf.open(path, filetype="pdf")


# Readers accept the %PDF- header anywhere in the first 1024 bytes (the PDF spec's allowance for junk).
_HEADER_WINDOW = 1024


def _markup_not_pdf(path: Path) -> str | None:
    """A reason not to open a file named .pdf that has no PDF header and starts with markup, else None.

    MuPDF recognizes documents by content, whatever type it is told: such a file is parsed as XHTML, HTML
    or SVG, and deeply nested markup takes it minutes (a 40 KB page of nested divs: 7 s). Files without a
    header that do not look like markup still go to MuPDF, whose repair may find PDF objects in them.
    """
    with path.open("rb") as f:
        head = f.read(_HEADER_WINDOW)
    if b"%PDF-" in head or not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return None
    return f"not a PDF: no %PDF- header, and it starts with markup ({head[:40]!r})"


def _build(path: Path, uri: str, cfg: PdfConfig) -> Document | Drop:
    """Open, unlock and extract one PDF; every failure mode becomes a Drop."""
    if reason := _markup_not_pdf(path):
        return _drop(uri, "pdf_unreadable", reason)
    try:
        doc = _open(path)
    except Exception as exc:  # MuPDF raises several types for files it cannot even repair
        return _drop(uri, "pdf_unreadable", f"MuPDF cannot open the file: {exc}", _warnings())
    with doc:
        if not doc.is_pdf:
            return _drop(uri, "pdf_unreadable", f"not a PDF: MuPDF reads it as {doc.metadata.get('format')}")
        encrypted = doc.is_encrypted
        if not _unlock(doc, cfg.passwords):
            tried = f"the empty password and {len(cfg.passwords)} configured password(s)"
            return _drop(uri, "pdf_encrypted", f"encrypted, and {tried} do not open it")
        total = doc.page_count
        if total == 0:
            how = "the repaired file" if doc.is_repaired else "the file"
            return _drop(uri, "pdf_no_pages", f"{how} has no pages", _warnings())
        result = _read_pages(doc, min(total, cfg.max_pages), cfg)
        if isinstance(result, int):
            detail = f"stopped after {result} of {total} pages: over {cfg.time_limit_s} s"
            return _drop(uri, "pdf_timeout", detail, page=result + 1)
        title, meta = _info(doc)
        meta |= {"encrypted": encrypted, "repaired": doc.is_repaired, "pages_total": total}
    try:
        mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    except OSError:
        mtime = None
    return _finish(uri, title, meta, *result, cfg, mtime)


def _finish(
    uri: str,
    title: str | None,
    meta: dict[str, Any],
    pages: list[Page],
    failed: list[int],
    cfg: PdfConfig,
    fetched_at: datetime | None,
) -> Document | Drop:
    """Clean the extracted pages and build the document (or the drop when no text came out)."""
    warnings = _warnings()
    if len(failed) == len(pages):
        return _drop(uri, "pdf_unreadable", f"all {len(pages)} pages failed to extract", warnings)
    ocr = [i + 1 for i, p in enumerate(pages) if p.needs_ocr]
    pages, removed = strip_headers(pages, cfg)
    text, starts = assemble([page_text(p.texts, cfg.dehyphenate) for p in pages], cfg.dehyphenate)
    if not text or text.isspace():
        if ocr:
            detail = f"{len(ocr)} of {len(pages)} pages are images without a text layer; OCR needed"
            return _drop(uri, "pdf_no_text_layer", detail, warnings)
        return _drop(uri, "pdf_no_text", f"none of the {len(pages)} pages has text or images", warnings)
    meta |= {
        "pages": len(pages),
        "truncated": len(pages) < meta["pages_total"],
        "page_starts": starts,
        "needs_ocr": bool(ocr),
        "ocr_pages": len(ocr),
        "ocr_page_numbers": ocr,
        "header_lines_removed": removed,
        "unknown_chars": text.count("\ufffd"),
    }
    if failed:
        meta["failed_page_numbers"] = failed
    if warnings:
        meta["mupdf_warnings"] = warnings
    return new_document(text, source="pdf", uri=uri, title=title, fetched_at=fetched_at, meta=meta)


def extract_pdf(path: Path, cfg: PdfConfig) -> list[Document | Drop]:
    """Turn one PDF file into exactly one Document, or one Drop saying why not; never raises on bad input."""
    path = Path(path)
    uri = path.absolute().as_uri()
    try:
        uri = path.resolve().as_uri()
        with _quiet_mupdf():
            return [_build(path, uri, cfg)]
    except Exception as exc:  # last line of defence: bad input becomes a Drop, never an exception
        return [_drop(uri, "pdf_unreadable", f"{type(exc).__name__}: {exc}")]
