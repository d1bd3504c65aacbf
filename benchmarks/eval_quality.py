"""Train the fastText quality classifier on offline data and measure its AUC on DCLM's human labels.

Training data comes from ../shared/data only; the evaluation file is never trained on. Recipes:
- `mixed` (default): positives are trusted text (English Project Gutenberg books without the PG header,
  the main content of the Python 3.11, PostgreSQL 15 and English Debian Handbook pages, the Debian/GNU/R
  PDF manuals) plus the main content of real web pages (trafilatura on the WARC samples and on
  trafilatura's evaluation pages) and CCNet's lowest-perplexity Common Crawl documents; negatives are raw
  crawl (the same pages' full text WITHOUT boilerplate removal), the boilerplate alone (full text minus
  main content, of the web pages and of the documentation pages) and the junk file. At most 300 passages
  per source.
- `web`: only the web sources of `mixed`, every passage.
- `trusted-vs-crawl`: books/manuals/docs versus raw crawl and junk, every passage (the naive contrast: it
  learns "book or web page", not quality, and scores below chance on DCLM's web-only labels).
Web sources keep English pages only (lid.176). One JSONL file per source is written under --work/data
and reused (delete it to rebuild); the trainer cuts documents into paragraph-sized passages.

The script prints held-out metrics and the AUC, precision and recall on
`quality/dclm_labeled_shared.jsonl` (label 1 = good, 0 = bad), with one-feature baselines for scale.

    python benchmarks/eval_quality.py [--recipe mixed] [--seeds 5] [--work runs/eval-quality]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import mean, pstdev

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.schemas import Document  # noqa: E402
from tasks.gutenberg import strip_gutenberg  # noqa: E402
from tasks.langid import LangIdConfig, detect_languages  # noqa: E402
from tasks.pdf import PdfConfig, extract_pdf  # noqa: E402
from tasks.quality import (  # noqa: E402
    QualityTrainConfig,
    evaluate_labeled,
    read_labeled,
    read_texts,
    roc_auc,
    train_quality_classifier,
)
from tasks.text import decode_text  # noqa: E402
from tasks.web import HtmlConfig, decode_html, extract_html, extract_html_file  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
EVAL_FILE = "quality/dclm_labeled_shared.jsonl"
ENGLISH = LangIdConfig(languages=("en",), threshold=0.5)


def gutenberg_books(data: Path) -> Iterator[str]:
    """English Gutenberg books, decoded, without the PG header and licence."""
    for path in sorted((data / "text" / "gutenberg").glob("pg*.txt")):
        if ".de." not in path.name:
            yield strip_gutenberg(decode_text(path.read_bytes())[0])[0]


def doc_pages(data: Path) -> Iterator[str]:
    """Main content of the Python, PostgreSQL and English Debian Handbook HTML pages."""
    cfg = HtmlConfig()
    for sub in ("python-3.11-docs", "postgresql-15-docs", "debian-handbook/en-US"):
        for path in sorted((data / "html" / sub).rglob("*.htm*")):
            for item in extract_html_file(path, cfg):
                if isinstance(item, Document):
                    yield item.text


def doc_boilerplate(data: Path) -> Iterator[str]:
    """Navigation and footers of the same documentation pages (their full text minus the main content)."""
    for sub in ("python-3.11-docs", "postgresql-15-docs", "debian-handbook/en-US"):
        for path in sorted((data / "html" / sub).rglob("*.htm*")):
            yield _split_page(path.as_uri(), path.read_bytes(), None)[1]


def pdf_manuals(data: Path) -> Iterator[str]:
    """Text of the English technical PDF manuals."""
    for path in sorted((data / "pdf" / "debian").glob("*.pdf")):
        for item in extract_pdf(path, PdfConfig()):
            if isinstance(item, Document):
                yield item.text


def _full_text(raw: bytes, content_type: str | None = None) -> str:
    """All visible text of a page, boilerplate included (what a crawler stores before any cleaning)."""
    from resiliparse.extract.html2text import extract_plain_text

    html, _ = decode_html(raw, content_type)
    return extract_plain_text(html, main_content=False, alt_texts=False)


def _web_pages(data: Path) -> Iterator[tuple[str, bytes, str | None]]:
    """(uri, raw bytes, content type) of every HTML page in the WARC samples and trafilatura's eval set."""
    from warcio.archiveiterator import ArchiveIterator

    for path in [
        *sorted((data / "warc" / "dolma").glob("*.warc.gz")),
        data / "warc" / "pywb" / "iana.warc.gz",
    ]:
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f):
                ctype = rec.http_headers.get_header("Content-Type", "") if rec.http_headers else ""
                if rec.rec_type == "response" and "html" in ctype:
                    yield rec.rec_headers.get_header("WARC-Target-URI"), rec.content_stream().read(), ctype
    for path in sorted((data / "html" / "trafilatura-eval" / "raw").iterdir()):
        yield path.as_uri(), path.read_bytes(), None


def _split_page(uri: str, raw: bytes, ctype: str | None) -> tuple[str, str]:
    """(main content, boilerplate): trafilatura's main text, and the full-text lines not inside it."""
    item = extract_html(raw, uri=uri, cfg=HtmlConfig(), content_type=ctype)
    main = item.text if isinstance(item, Document) else ""
    # Substring, not line, matching: the two extractors break the same paragraph into lines differently.
    flat = " ".join(main.split())
    rest = [line for line in _full_text(raw, ctype).splitlines() if " ".join(line.split()) not in flat]
    return main, "\n".join(line for line in rest if line.strip())


def web_main(data: Path) -> Iterator[str]:
    """Main content of the crawled and evaluation web pages (what boilerplate removal keeps)."""
    for page in _web_pages(data):
        yield _split_page(*page)[0]


def web_boilerplate(data: Path) -> Iterator[str]:
    """Boilerplate of the same pages: navigation, footers, link lists (what boilerplate removal drops)."""
    for page in _web_pages(data):
        yield _split_page(*page)[1]


def crawl_pages(data: Path) -> Iterator[str]:
    """Full text of every crawled and evaluation web page, boilerplate included."""
    for _, raw, ctype in _web_pages(data):
        yield _full_text(raw, ctype)


def ccnet(data: Path) -> Iterator[str]:
    """CCNet 'head' (lowest perplexity) Common Crawl documents."""
    for path in sorted((data / "text" / "ccnet-samples-dolma").glob("*.jsonl")):
        yield from read_texts(path)


def junk(data: Path) -> Iterator[str]:
    """The FTP directory listing published as a book."""
    for path in sorted((data / "text" / "quality-negatives").glob("*.txt")):
        yield decode_text(path.read_bytes())[0]


# name -> (class, reader, keep only English texts)
Source = tuple[str, Callable[[Path], Iterator[str]], bool]
TRUSTED: dict[str, Source] = {
    "pos-gutenberg": ("positive", gutenberg_books, True),
    "pos-docs": ("positive", doc_pages, True),
    "pos-manuals": ("positive", pdf_manuals, True),
}
WEB: dict[str, Source] = {
    "pos-web-main": ("positive", web_main, True),
    "pos-ccnet": ("positive", ccnet, True),
    "neg-web-boilerplate": ("negative", web_boilerplate, True),
    "neg-crawl": ("negative", crawl_pages, True),
    "neg-junk": ("negative", junk, False),
}
RECIPES: dict[str, tuple[dict[str, Source], dict[str, object]]] = {
    # The default: trusted books and manuals plus web main content versus web boilerplate and raw crawl,
    # at most 300 passages per source so the books (thousands of passages) cannot turn the model into a
    # 'book or web page' detector.
    "mixed": (
        {**TRUSTED, **WEB, "neg-docs-boilerplate": ("negative", doc_boilerplate, True)},
        {"max_passages_per_source": 300},
    ),
    # Web text only: main content (and CCNet's best bucket) versus boilerplate and raw crawl.
    "web": (WEB, {}),
    # The naive contrast, trusted books/manuals versus raw crawl, every passage.
    "trusted-vs-crawl": ({**TRUSTED, "neg-crawl": WEB["neg-crawl"], "neg-junk": WEB["neg-junk"]}, {}),
}


def _english(texts: list[str]) -> list[str]:
    """Only the texts language ID calls English (the evaluation set is English web text)."""
    langs = detect_languages(texts, ENGLISH)
    return [t for t, (lang, score) in zip(texts, langs, strict=True) if lang == "en" and score >= 0.5]


def prepare(data: Path, work: Path, sources: dict[str, Source]) -> tuple[list[Path], list[Path]]:
    """Write one JSONL file per source (reused when present); return positive and negative paths."""
    work.mkdir(parents=True, exist_ok=True)
    pos, neg = [], []
    for name, (side, read, english_only) in sources.items():
        path = work / f"{name}.jsonl"
        if not path.exists():
            start = time.perf_counter()
            texts = [t for t in read(data) if t.strip()]
            texts = _english(texts) if english_only else texts
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
            tmp.replace(path)
            chars = sum(map(len, texts))
            print(f"  {name}: {len(texts)} docs, {chars:,} chars ({time.perf_counter() - start:.1f}s)")
        (pos if side == "positive" else neg).append(path)
    return pos, neg


def baselines(data: Path) -> dict[str, float]:
    """AUC on the labeled file of single features, to give the classifier's number a scale."""
    texts, labels = read_labeled(data / EVAL_FILE)
    lines = [[ln for ln in t.splitlines() if ln.strip()] or [""] for t in texts]
    chars = roc_auc(labels, [len(t) for t in texts]) or 0.0
    line_chars = roc_auc(labels, [sum(map(len, ls)) / len(ls) for ls in lines]) or 0.0
    return {"chars": round(chars, 4), "mean_line_chars": round(line_chars, 4)}


def main(argv: list[str] | None = None) -> int:
    """Prepare the data, train, and print held-out and DCLM metrics."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "eval-quality")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="mixed")
    ap.add_argument("--seeds", type=int, default=1, help="train with seeds 0..N-1 and summarize")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="training config overrides")
    args = ap.parse_args(argv)
    if not (args.data / EVAL_FILE).exists():
        print(f"no evaluation file at {args.data / EVAL_FILE}", file=sys.stderr)
        return 2
    sources, recipe_cfg = RECIPES[args.recipe]
    overrides = dict(kv.split("=", 1) for kv in args.set)
    print(f"recipe {args.recipe}; preparing training data in {args.work}")
    pos, neg = prepare(args.data, args.work / "data", sources)
    aucs = []
    for seed in range(args.seeds):
        cfg = QualityTrainConfig.model_validate({**recipe_cfg, **overrides, "seed": seed})
        start = time.perf_counter()
        ref = train_quality_classifier(pos, neg, args.work / "models", cfg)
        took = time.perf_counter() - start
        card = json.loads(Path(ref["card_path"]).read_text(encoding="utf-8"))
        dclm = evaluate_labeled(ref["model_path"], args.data / EVAL_FILE)
        aucs.append(dclm["auc"])
        print(f"seed {seed}: trained in {took:.1f}s -> {ref['model_path']}")
        print(f"  passages: {card['counts']}")
        print(f"  held-out: {json.dumps(ref['metrics'])}")
        print(f"  DCLM labeled: {json.dumps(dclm)}")
    if len(aucs) > 1:
        spread = f"mean {mean(aucs):.3f}, sd {pstdev(aucs):.3f}, min {min(aucs):.3f}"
        print(f"DCLM AUC over {len(aucs)} seeds: {spread}")
    print(f"single-feature baselines (AUC on the labeled file): {json.dumps(baselines(args.data))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
