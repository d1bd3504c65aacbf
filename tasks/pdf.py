"""PDF ingestion with PyMuPDF: one Document (or one Drop) per PDF, text in reading order."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import pymupdf
from pydantic import BaseModel, ConfigDict, Field

from storage.schemas import Document, Drop, new_document

# Ligatures are expanded, tabs and no-break spaces become spaces, and unknown glyphs become U+FFFD
# rather than raw CIDs, so later quality filters see "fi" and can count undecodable characters.
_TEXT_FLAGS = pymupdf.TEXT_MEDIABOX_CLIP
_MAX_WARNINGS = 20
_LETTER = re.compile(r"[^\W\d_]")
_DIGITS = re.compile(r"\d+")
# Roman page numbers stop at lxxxix: front matter is never longer, and "c", "d" or "mix" are words.
_ROMAN = r"(?=[ivxl])(?:xl|l?x{0,3})(?:ix|iv|v?i{0,3})"
_PAGE_NUMBER = re.compile(
    rf"[-–—\s]*(?:(?:page|p\.|seite)\s*)?(?:\d+|{_ROMAN})(?:\s*(?:/|of|von|de|sur)\s*\d+)?[-–—\s]*",
    re.IGNORECASE,
)
_HYPHENS = "-\u00ad\u2010"
# Only the hyphen and newline are matched; the letters around them are checked in Python, because
# a pattern that starts with a letter class scans ten times slower.
_HYPHEN_BREAK = re.compile(f"[{_HYPHENS}] *\n")

# Page text is handled as MuPDF's block tuples, (x0, y0, x1, y1, text, seq, kind), to avoid building
# objects per block: `seq` is the block's place in the content stream, the fallback reading order.
_Item = tuple[float, float, float, float, str, int, int]
_BY_X0, _BY_Y0, _BY_SEQ = itemgetter(0), itemgetter(1), itemgetter(5)


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


class _Page(NamedTuple):
    """One extracted page: block texts in reading order, header/footer candidates, scan or not."""

    # Only strings are kept per page (no boxes): less memory and less garbage-collector work.

    texts: list[str]
    edges: list[tuple[bool, int, int, str, str]]  # see _edge_lines
    needs_ocr: bool


# ---- reading order -------------------------------------------------------------------------------


def _parallel_candidates(blocks: list[_Item], page_w: float, cfg: PdfConfig) -> set[int]:
    """Blocks that may hold rows of parallel columns (wide, wordy lines side by side); empty if < 6 lines."""
    wide = 2 * cfg.min_column_width * page_w + cfg.column_gap_pt
    # Stacked lines need > 7 pt each (a 6 pt font); less height means some lines share a row.
    flat = [b for b in blocks if b[2] - b[0] >= wide and b[3] - b[1] < 7.0 * b[4].count("\n")]
    found, wordy = set(), 0
    for _, _, _, _, text, seq, _ in flat:
        # Wordy: three or more words and no dot leaders; a table's short cells mostly are not.
        count = sum(1 for ln in text.split("\n") if ln.count(" ") >= 2 and ". ." not in ln)
        if count >= max(2, text.count("\n") / 2):
            found.add(seq)
            wordy += count
    return found if wordy >= 6 else set()


def _block_lines(words: list[tuple]) -> dict[int, list[tuple[float, float, float, float, str]]]:
    """Group MuPDF words into positioned lines, per block."""
    lines: dict[tuple[int, int], list] = {}
    for x0, y0, x1, y1, word, block, line, _ in words:
        cur = lines.get((block, line))
        if cur is None:
            lines[(block, line)] = [x0, y0, x1, y1, [word]]
        else:
            cur[0], cur[2] = min(cur[0], x0), max(cur[2], x1)
            cur[4].append(word)
    out: dict[int, list] = {}
    for (block, _), (x0, y0, x1, y1, ws) in lines.items():
        out.setdefault(block, []).append((x0, y0, x1, y1, " ".join(ws)))
    return out


def _is_prose(text: str) -> bool:
    """Whether a line reads like running text (mostly letters, several words), not leaders or code."""
    chars = text.replace(" ", "")
    return len(text.split()) >= 3 and len(_LETTER.findall(chars)) >= 0.7 * len(chars)


def _justified(ends: list[float]) -> bool:
    """Whether most lines end at one x, as justified prose does and a table's ragged cells do not."""
    edge = max(ends)
    return sum(edge - x < 2.0 for x in ends) >= 0.6 * len(ends)


def _parallel_gutter(blocks: dict[int, list], page_w: float, cfg: PdfConfig) -> float | None:
    """The x of a gutter between two equally wide sides of justified prose, >= 3 lines each, if any."""
    min_w, gaps = cfg.min_column_width * page_w, []
    for lines in blocks.values():
        spans = sorted(lines)
        # Right edges of column-wide prose lines (a line number beside the text does not count).
        ends = [s[2] if s[2] - s[0] >= min_w and _is_prose(s[4]) else None for s in spans]
        reach = spans[0][2]
        for i in range(1, len(spans)):
            sides = [x for x in ends[:i] if x is not None], [x for x in ends[i:] if x is not None]
            if spans[i][0] - reach >= cfg.column_gap_pt and all(sides):
                # Parallel columns are typeset equally wide; a table's columns seldom are.
                widths = reach - spans[0][0], max(s[2] for s in spans[i:]) - spans[i][0]
                if min(widths) >= 0.85 * max(widths):
                    gaps.append((reach, spans[i][0], sides))
            reach = max(reach, spans[i][2])
    for g0, g1, _ in gaps:
        mid = (g0 + g1) / 2
        hits = [sides for h0, h1, sides in gaps if h0 <= mid <= h1]
        left, right = [x for s in hits for x in s[0]], [x for s in hits for x in s[1]]
        if min(len(left), len(right)) >= 3 and _justified(left) and _justified(right):
            return mid
    return None


def _box(lines: list[tuple], seq: int) -> _Item:
    """An item made of positioned lines; lines sharing a row (a line number and its text) are joined."""
    rows: list[list[tuple]] = []
    for line in lines:
        # Vertical centres within half a line height: the same row.
        if rows and abs(line[1] + line[3] - rows[-1][-1][1] - rows[-1][-1][3]) < line[3] - line[1]:
            rows[-1].append(line)
        else:
            rows.append([line])
    text = "\n".join(" ".join(ln[4] for ln in row) for row in rows)
    x0, y0 = min(ln[0] for ln in lines), min(ln[1] for ln in lines)
    return (x0, y0, max(ln[2] for ln in lines), max(ln[3] for ln in lines), text, seq, 0)


def _split_at(lines: list[tuple], gutter: float, seq: int) -> list[_Item]:
    """A block's lines as two items split at the gutter, or one item when a line crosses it."""
    left = [ln for ln in lines if ln[2] <= gutter]
    right = [ln for ln in lines if ln[0] >= gutter]
    if left and right and len(left) + len(right) == len(lines):
        return [_box(left, seq), _box(right, seq)]
    return [_box(lines, seq)]


def _page_items(page: pymupdf.Page, page_w: float, cfg: PdfConfig) -> list[_Item]:
    """The text blocks of one page in content-stream order, split at a parallel-text gutter if any."""
    textpage = page.get_textpage(flags=_TEXT_FLAGS)
    blocks = [b for b in textpage.extractBLOCKS() if b[6] == 0 and b[4] and not b[4].isspace()]
    # Parallel texts (original | translation) come out of MuPDF as one block per row holding both
    # sides; only line positions (words, which cost extra) reveal the gutter between them.
    candidates = _parallel_candidates(blocks, page_w, cfg)
    if not candidates:
        return blocks
    words = textpage.extractWORDS()
    gutter = _parallel_gutter(_block_lines([w for w in words if w[5] in candidates]), page_w, cfg)
    if gutter is None:
        return blocks
    lines = _block_lines(words)
    return [item for seq in sorted(lines) for item in _split_at(lines[seq], gutter, seq)]


def _side_by_side(items: list[_Item], gap: float, min_w: float) -> bool:
    """Whether two column-wide items sit >= gap apart horizontally; if not, no subset has a gutter."""
    # Narrow items (a page number in the margin, a short label) alone make no column.
    wide = [it for it in items if it[2] - it[0] >= min_w]
    return len(wide) > 1 and max(it[0] for it in wide) - min(it[2] for it in wide) >= gap


def _column_cut(items: list[_Item], page_w: float, cfg: PdfConfig) -> tuple[list, list] | None:
    """Split items at the widest vertical white gutter whose both sides are column-wide, if any."""
    min_w = cfg.min_column_width * page_w
    if not _side_by_side(items, cfg.column_gap_pt, min_w):
        return None
    xs = sorted(items, key=_BY_X0)
    right_x1, edge = [0.0] * len(xs), -math.inf
    for i in range(len(xs) - 1, -1, -1):
        edge = right_x1[i] = max(edge, xs[i][2])
    best, best_gap, reach = 0, cfg.column_gap_pt, xs[0][2]
    for i in range(1, len(xs)):
        gap = xs[i][0] - reach
        if gap >= best_gap and reach - xs[0][0] >= min_w and right_x1[i] - xs[i][0] >= min_w:
            best, best_gap = i, gap
        reach = max(reach, xs[i][2])
    return (xs[:best], xs[best:]) if best else None


def _bands(items: list[_Item]) -> list[list[_Item]]:
    """Group items into horizontal bands separated by white space across the whole region."""
    bands: list[list[_Item]] = []
    bottom = -math.inf
    for it in sorted(items, key=_BY_Y0):
        if it[1] < bottom - 0.5:
            bands[-1].append(it)
            bottom = max(bottom, it[3])
        else:
            bands.append([it])
            bottom = it[3]
    return bands


def _reading_order(items: list[_Item], page_w: float, cfg: PdfConfig) -> list[_Item]:
    """Order items column by column (recursive XY-cut); keep stream order where no cut applies."""
    if len(items) < 2:
        return items
    if not _side_by_side(items, cfg.column_gap_pt, cfg.min_column_width * page_w):  # one column
        ys, seqs = [it[1] for it in items], [it[5] for it in items]
        if ys == sorted(ys) and seqs == sorted(seqs):  # the usual case: stream order is top-down
            return items
        return [it for band in _bands(items) for it in sorted(band, key=_BY_SEQ)]
    cut = _column_cut(items, page_w, cfg)
    if cut is not None:
        return _reading_order(cut[0], page_w, cfg) + _reading_order(cut[1], page_w, cfg)
    bands = _bands(items)
    if len(bands) == 1:
        return sorted(items, key=_BY_SEQ)
    # Re-join neighbouring bands that share a gutter, so a paragraph break that happens at the same
    # height in both columns does not make us read the columns in alternating slices. Two lone items
    # (a heading, then a caption off to the side) are no columns: each side needs two.
    groups = [bands[0]]
    for band in bands[1:]:
        cut = _column_cut(groups[-1] + band, page_w, cfg)
        if cut is not None and min(len(cut[0]), len(cut[1])) >= 2:
            groups[-1] = groups[-1] + band
        else:
            groups.append(band)
    return [it for group in groups for it in _reading_order(group, page_w, cfg)]


def _has_text(items: list[_Item], min_chars: int) -> bool:
    """Whether the items hold >= min_chars non-space characters (counting stops once they do)."""
    count = 0
    for it in items:
        count += len(it[4]) - it[4].count(" ") - it[4].count("\n")
        if count >= min_chars:
            return True
    return False


def _read_page(page: pymupdf.Page, cfg: PdfConfig) -> _Page:
    """Extract one page in reading order and tell whether it is a scan without a text layer."""
    page_w = page.rect.width
    items = _page_items(page, page_w, cfg)
    # Only near-empty pages pay for the image lookup; a page with neither text nor images is blank.
    scan = not _has_text(items, cfg.min_page_chars) and bool(page.get_images())
    items = _reading_order(items, page_w, cfg)
    return _Page([it[4] for it in items], _edge_lines(items, cfg.header_lines), scan)


# ---- headers, footers and page numbers -----------------------------------------------------------


def _key(line: str) -> str:
    """Compare header candidates with case, spacing and numbers (page, chapter) ignored."""
    return _DIGITS.sub("#", " ".join(line.split()).casefold())


def _edge_lines(items: list[_Item], k: int) -> list[tuple[bool, int, int, str, str]]:
    """(is_top, item, line index, line, key) of the lines in the top and the bottom row of a page."""
    # A row is the block nearest the edge plus the blocks beside it (a title left, a page number
    # right). A row of more than k lines is body text, and gives no candidates.
    out: list[tuple[bool, int, int, str, str]] = []
    if not items or not k:
        return out
    top_y1 = min(items, key=_BY_Y0)[3]
    bottom_y0 = max(items, key=itemgetter(3))[1]
    for top, row in (
        (True, [i for i, it in enumerate(items) if it[1] < top_y1]),
        (False, [i for i, it in enumerate(items) if it[3] > bottom_y0]),
    ):
        if sum(items[i][4].count("\n") for i in row) > k + len(row):  # the body: skip splitting it
            continue
        lines = [(i, j, ln) for i in row for j, ln in enumerate(items[i][4].split("\n")) if ln.strip()]
        if len(lines) <= k:
            out += [(top, i, j, ln, _key(ln)) for i, j, ln in lines]
    return out


def _runs(pages: list[int], min_pages: int) -> set[int]:
    """Pages in runs of >= min_pages occurrences at most two pages apart (odd/even page headers)."""
    keep: set[int] = set()
    run: list[int] = []
    for p in [*pages, math.inf]:
        if run and p - run[-1] > 2:
            if len(run) >= min_pages:
                keep.update(run)
            run = []
        run.append(p)
    return keep


def _strip_headers(pages: list[_Page], cfg: PdfConfig) -> tuple[list[_Page], int]:
    """Drop recurring header/footer lines and bare page numbers at page edges; count removed lines."""
    seen: dict[tuple[bool, str], list[int]] = {}
    for n, page in enumerate(pages):
        for top_key in {(c[0], c[4]) for c in page.edges}:
            seen.setdefault(top_key, []).append(n)
    # A running header recurs on nearby pages; a "Note" or "Table" label that happens to open a few
    # scattered pages does not. Keys need a letter: bare numbers are left to the page-number rule.
    runs = {k: _runs(ps, cfg.header_min_pages) for k, ps in seen.items() if _LETTER.search(k[1])}
    out, removed = [], 0
    for n, page in enumerate(pages):
        drop: dict[int, set[int]] = {}
        for top, i, j, line, key in page.edges:
            header = cfg.remove_headers and n in runs.get((top, key), ())
            if header or (cfg.remove_page_numbers and _PAGE_NUMBER.fullmatch(line)):
                drop.setdefault(i, set()).add(j)
        if drop:
            texts = list(page.texts)
            for i, js in drop.items():
                texts[i] = "\n".join(ln for j, ln in enumerate(texts[i].split("\n")) if j not in js)
                removed += len(js)
            page = page._replace(texts=texts)
        out.append(page)
    return out, removed


# ---- text assembly -------------------------------------------------------------------------------


def _unhyphenate(match: re.Match[str]) -> str:
    """Drop a line-end hyphen between letters when the next line starts lowercase ("exam-\\nple")."""
    text, i, j = match.string, match.start(), match.end()
    if i and j < len(text) and text[i - 1].isalpha() and text[j].islower():
        return ""
    return match.group(0)


def _page_text(texts: list[str], dehyphenate: bool) -> str:
    """One page's text: blocks in reading order, joined by a line or a paragraph break."""
    parts: list[str] = []
    for block in texts:
        part = block.strip()
        if part:
            # A line break where a sentence runs on (next text starts lowercase), else a paragraph.
            parts += ["\n" if part[0].islower() else "\n\n", part] if parts else [part]
    text = "".join(parts)
    return _HYPHEN_BREAK.sub(_unhyphenate, text) if dehyphenate else text


def _assemble(texts: list[str], dehyphenate: bool) -> tuple[str, list[int]]:
    """Join page texts into one document; also return the offset where each page starts."""
    parts: list[str] = []
    starts: list[int] = []
    size, last = 0, ""
    for text in texts:
        if last and text:
            if dehyphenate and last[-1] in _HYPHENS and last[-2:-1].isalpha() and text[0].islower():
                parts[-1] = last = last[:-1]  # a word hyphenated across the page break
                size -= 1
            else:
                parts.append("\n" if text[0].islower() else "\n\n")  # as between blocks
                size += len(parts[-1])
        starts.append(size)
        if text:
            parts.append(text)
            size += len(text)
            last = text
    return "".join(parts), starts


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
    """MuPDF's warnings since the last call, deduplicated in order and capped."""
    lines = pymupdf.TOOLS.mupdf_warnings().splitlines()
    return list(dict.fromkeys(line for line in lines if line.strip()))[:_MAX_WARNINGS]


def _drop(uri: str, reason: str, detail: str, warnings: list[str] | None = None) -> Drop:
    """A Drop for this PDF, with MuPDF's warnings appended to the detail when there are any."""
    if warnings:
        detail = f"{detail} (MuPDF: {'; '.join(warnings)})"
    return Drop(uri=uri, source="pdf", reason=reason, detail=detail)


def _unlock(doc: pymupdf.Document, passwords: tuple[str, ...]) -> bool:
    """Try the empty password, then each configured one; True when the document is readable."""
    # Read needs_pass only before authenticating: in PyMuPDF 2.0 it re-runs MuPDF's empty-password
    # check, which resets the key and makes every page of a decrypted file come out empty.
    return not doc.needs_pass or any(doc.authenticate(pw) for pw in ("", *passwords))


def _read_pages(doc: pymupdf.Document, count: int, cfg: PdfConfig) -> tuple[list[_Page], list[int]] | int:
    """The first `count` pages and the (1-based) numbers of those that failed; pages done on timeout."""
    deadline = time.monotonic() + cfg.time_limit_s
    pages, failed = [], []
    for i in range(count):
        if time.monotonic() > deadline:
            return i
        try:
            pages.append(_read_page(doc.load_page(i), cfg))
        except Exception:  # one damaged page (bad content stream, font) must not lose the rest
            pages.append(_Page([], [], False))
            failed.append(i + 1)
    return pages, failed


def _info(doc: pymupdf.Document) -> tuple[str | None, dict[str, Any]]:
    """The title, and the info-dictionary fields worth keeping in meta (empty ones left out)."""
    info = doc.metadata or {}
    keep = {"author": "author", "creator": "creator", "producer": "producer", "format": "pdf_format"}
    meta = {name: info[key].strip() for key, name in keep.items() if (info.get(key) or "").strip()}
    return (info.get("title") or "").strip() or None, meta


def _build(path: Path, uri: str, cfg: PdfConfig) -> Document | Drop:
    """Open, unlock and extract one PDF; every failure mode becomes a Drop."""
    try:
        doc = pymupdf.open(path, filetype="pdf")
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
            limit = cfg.time_limit_s
            return _drop(uri, "pdf_timeout", f"stopped after {result} of {total} pages: over {limit} s")
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
    pages: list[_Page],
    failed: list[int],
    cfg: PdfConfig,
    fetched_at: datetime | None,
) -> Document | Drop:
    """Clean the extracted pages and build the document (or the drop when no text came out)."""
    warnings = _warnings()
    if len(failed) == len(pages):
        return _drop(uri, "pdf_unreadable", f"all {len(pages)} pages failed to extract", warnings)
    ocr = [i + 1 for i, p in enumerate(pages) if p.needs_ocr]
    pages, removed = _strip_headers(pages, cfg)
    text, starts = _assemble([_page_text(p.texts, cfg.dehyphenate) for p in pages], cfg.dehyphenate)
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
