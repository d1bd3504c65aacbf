"""Main-content extraction quality on trafilatura's evaluation set: ours vs plain trafilatura.extract().

Each annotated page lists segments the main text must contain (`with`) and boilerplate it must not
(`without`). We report, per extractor, the share of `with` segments found (recall-like) and the share of
`without` segments wrongly kept (noise), after collapsing whitespace on both sides.

    python benchmarks/eval_extraction.py [--limit N] [--data ../shared/data/html/trafilatura-eval]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "html" / "trafilatura-eval"
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Case:
    """One annotated page."""

    url: str
    raw: bytes
    with_: tuple[str, ...]
    without: tuple[str, ...]


@dataclass(frozen=True)
class Score:
    """Segment counts for one extractor over many pages."""

    with_found: int = 0
    with_total: int = 0
    without_kept: int = 0
    without_total: int = 0
    empty: int = 0
    seconds: float = 0.0

    def __add__(self, other: Score) -> Score:
        """Sum two scores field by field."""
        return Score(*(a + b for a, b in zip(self.__dict__.values(), other.__dict__.values(), strict=True)))

    @property
    def recall(self) -> float:
        """Share of `with` segments present in the output."""
        return self.with_found / max(self.with_total, 1)

    @property
    def noise(self) -> float:
        """Share of `without` segments wrongly present in the output."""
        return self.without_kept / max(self.without_total, 1)


def _norm(text: str) -> str:
    """Collapse whitespace so line wrapping differences do not count as misses."""
    return _WS.sub(" ", text).strip()


def load_cases(data: Path, limit: int | None = None) -> list[Case]:
    """The annotated pages of evaldata.json whose raw HTML file exists, in a stable order."""
    spec = json.loads((data / "evaldata.json").read_text(encoding="utf-8"))
    cases = []
    for url in sorted(spec):
        item = spec[url]
        path = data / "raw" / item["file"]
        if path.is_file():
            cases.append(Case(url, path.read_bytes(), tuple(item["with"]), tuple(item["without"])))
    return cases[:limit] if limit else cases


def score_text(text: str | None, case: Case) -> Score:
    """Segment counts for one extracted text."""
    out = _norm(text or "")
    return Score(
        with_found=sum(_norm(s) in out for s in case.with_),
        with_total=len(case.with_),
        without_kept=sum(_norm(s) in out for s in case.without),
        without_total=len(case.without),
        empty=int(not out),
    )


def evaluate(extract: Callable[[Case], str | None], cases: list[Case]) -> Score:
    """Run one extractor over all cases and sum its scores (with total wall time)."""
    total = Score()
    start = time.perf_counter()
    for case in cases:
        total = total + score_text(extract(case), case)
    return total + Score(seconds=time.perf_counter() - start)


def extractors() -> dict[str, Callable[[Case], str | None]]:
    """The extractors compared: our extract_html with each backend, and the references."""
    sys.path.insert(0, str(ROOT))
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    from storage.schemas import Document
    from tasks.web import HtmlConfig, extract_html

    def ours(backend: str) -> Callable[[Case], str | None]:
        cfg = HtmlConfig(extractor=backend)

        def run(case: Case) -> str | None:
            out = extract_html(case.raw, uri=case.url, cfg=cfg)
            return out.text if isinstance(out, Document) else None

        return run

    def plain_resiliparse(case: Case) -> str:
        html = bytes_to_str(case.raw, detect_encoding(case.raw))
        return extract_plain_text(html, main_content=True)

    return {
        "crucible extract_html (trafilatura)": ours("trafilatura"),
        "crucible extract_html (resiliparse)": ours("resiliparse"),
        "trafilatura.extract() defaults": lambda c: trafilatura.extract(c.raw, url=c.url),
        "resiliparse extract_plain_text(main_content)": plain_resiliparse,
    }


def main() -> None:
    """Print the side-by-side quality table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N pages")
    args = ap.parse_args()
    cases = load_cases(args.data, args.limit)
    n_with = sum(len(c.with_) for c in cases)
    n_without = sum(len(c.without) for c in cases)
    print(f"{len(cases)} pages, {n_with} `with` segments, {n_without} `without` segments\n")
    print(f"{'extractor':46s} {'with found':>10s} {'without kept':>12s} {'empty':>6s} {'pages/s':>8s}")
    for name, fn in extractors().items():
        s = evaluate(fn, cases)
        print(
            f"{name:46s} {s.recall:10.1%} {s.noise:12.1%} {s.empty:6d} {len(cases) / s.seconds:8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
