"""Page layout for PDF text: reading order, running headers and page numbers, page assembly.

Pure text and geometry work on MuPDF's text blocks: the recursive XY-cut that orders columns, the
gutter search that splits parallel texts, header/footer and page-number removal, dehyphenation and
joining pages into one text. Opening files, OCR detection and building documents live in tasks.pdf.
"""

from __future__ import annotations

import math
import re
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

import pymupdf

if TYPE_CHECKING:  # type hints only: tasks.pdf imports this module, so a runtime import would be circular
    from tasks.pdf import PdfConfig

# Ligatures are expanded, tabs and no-break spaces become spaces, and unknown glyphs become U+FFFD
# rather than raw CIDs, so later quality filters see "fi" and can count undecodable characters.
_TEXT_FLAGS = pymupdf.TEXT_MEDIABOX_CLIP
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
Item = tuple[float, float, float, float, str, int, int]
_BY_X0, _BY_Y0, _BY_SEQ = itemgetter(0), itemgetter(1), itemgetter(5)


class Page(NamedTuple):
    """One extracted page: block texts in reading order, header/footer candidates, scan or not."""

    # Only strings are kept per page (no boxes): less memory and less garbage-collector work.

    texts: list[str]
    edges: list[tuple[bool, int, int, str, str]]  # see edge_lines
    needs_ocr: bool


# ---- reading order -------------------------------------------------------------------------------


def _parallel_candidates(blocks: list[Item], page_w: float, cfg: PdfConfig) -> set[int]:
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


def _box(lines: list[tuple], seq: int) -> Item:
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


def _split_at(lines: list[tuple], gutter: float, seq: int) -> list[Item]:
    """A block's lines as two items split at the gutter, or one item when a line crosses it."""
    left = [ln for ln in lines if ln[2] <= gutter]
    right = [ln for ln in lines if ln[0] >= gutter]
    if left and right and len(left) + len(right) == len(lines):
        return [_box(left, seq), _box(right, seq)]
    return [_box(lines, seq)]


def page_items(page: pymupdf.Page, page_w: float, cfg: PdfConfig) -> list[Item]:
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


def _side_by_side(items: list[Item], gap: float, min_w: float) -> bool:
    """Whether two column-wide items sit >= gap apart horizontally; if not, no subset has a gutter."""
    # Narrow items (a page number in the margin, a short label) alone make no column.
    wide = [it for it in items if it[2] - it[0] >= min_w]
    return len(wide) > 1 and max(it[0] for it in wide) - min(it[2] for it in wide) >= gap


def _column_cut(items: list[Item], page_w: float, cfg: PdfConfig) -> tuple[list, list] | None:
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


def _bands(items: list[Item]) -> list[list[Item]]:
    """Group items into horizontal bands separated by white space across the whole region."""
    bands: list[list[Item]] = []
    bottom = -math.inf
    for it in sorted(items, key=_BY_Y0):
        if it[1] < bottom - 0.5:
            bands[-1].append(it)
            bottom = max(bottom, it[3])
        else:
            bands.append([it])
            bottom = it[3]
    return bands


def reading_order(items: list[Item], page_w: float, cfg: PdfConfig) -> list[Item]:
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
        return reading_order(cut[0], page_w, cfg) + reading_order(cut[1], page_w, cfg)
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
    return [it for group in groups for it in reading_order(group, page_w, cfg)]


# ---- headers, footers and page numbers -----------------------------------------------------------


def _key(line: str) -> str:
    """Compare header candidates with case, spacing and numbers (page, chapter) ignored."""
    return _DIGITS.sub("#", " ".join(line.split()).casefold())


def edge_lines(items: list[Item], k: int) -> list[tuple[bool, int, int, str, str]]:
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


def strip_headers(pages: list[Page], cfg: PdfConfig) -> tuple[list[Page], int]:
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


def page_text(texts: list[str], dehyphenate: bool) -> str:
    """One page's text: blocks in reading order, joined by a line or a paragraph break."""
    parts: list[str] = []
    for block in texts:
        part = block.strip()
        if part:
            # A line break where a sentence runs on (next text starts lowercase), else a paragraph.
            parts += ["\n" if part[0].islower() else "\n\n", part] if parts else [part]
    text = "".join(parts)
    return _HYPHEN_BREAK.sub(_unhyphenate, text) if dehyphenate else text


def assemble(texts: list[str], dehyphenate: bool) -> tuple[str, list[int]]:
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
