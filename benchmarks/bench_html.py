"""HTML extraction throughput: our extract_html vs trafilatura.extract() on the same pages, one run.

Each side runs in its own fresh subprocess (same pages, loaded before the clock starts) and reports
pages/s, MB/s of HTML, its RSS after imports and loading (before the work) and its own peak RSS
(ru_maxrss of that process), so neither side's memory or imports leak into the other.

    python benchmarks/bench_html.py [--corpus DIR ...] [--limit N] [--repeat R] [--rounds K]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT.parent / "shared" / "data" / "html"
# Real news/blog/government pages in many languages; add the docs folders with --corpus for long pages.
DEFAULT_CORPORA = [HTML / "trafilatura-eval" / "raw"]
SIDES = ("crucible", "trafilatura", "crucible-resiliparse")


def load_pages(corpora: list[Path], limit: int | None) -> list[tuple[str, bytes]]:
    """(uri, raw bytes) of every .html/.htm file under the corpora, in a stable order."""
    paths = sorted(p for c in corpora for p in c.rglob("*") if p.suffix in (".html", ".htm") and p.is_file())
    return [(p.resolve().as_uri(), p.read_bytes()) for p in paths[:limit]]


def _extractor(side: str) -> Callable[[str, bytes], bool]:
    """The callable benchmarked for one side: (uri, raw) -> produced a document or not."""
    sys.path.insert(0, str(ROOT))
    if side == "trafilatura":
        import trafilatura

        return lambda uri, raw: trafilatura.extract(raw, url=uri) is not None
    from storage.schemas import Document
    from tasks.web import HtmlConfig, extract_html

    cfg = HtmlConfig(extractor="resiliparse" if side == "crucible-resiliparse" else "trafilatura")
    return lambda uri, raw: isinstance(extract_html(raw, uri=uri, cfg=cfg), Document)


def worker(side: str, corpora: list[Path], limit: int | None, repeat: int) -> dict[str, float]:
    """Run one side over the pages (in this process) and measure it."""
    pages = load_pages(corpora, limit)
    extract = _extractor(side)
    extract(*pages[0])  # warm-up: lazy imports and caches are not part of the steady state
    import psutil

    baseline_mb = psutil.Process().memory_info().rss / 2**20  # imports + pages, before the work
    docs = 0
    start = time.perf_counter()
    for _ in range(repeat):
        docs = sum(extract(uri, raw) for uri, raw in pages)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
    n = len(pages) * repeat
    mb = sum(len(raw) for _, raw in pages) * repeat / 1e6
    return {"pages": n, "docs": docs, "seconds": seconds, "pages_s": n / seconds, "mb_s": mb / seconds,
            "baseline_rss_mb": baseline_mb, "peak_rss_mb": peak_kib / 1024}  # fmt: skip


def run_side(side: str, args: argparse.Namespace) -> dict[str, float]:
    """Run one side in a fresh interpreter and collect its JSON report."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        side,
        "--limit",
        str(args.limit or 0),
        "--repeat",
        str(args.repeat),
    ]
    for corpus in args.corpus:
        cmd += ["--corpus", str(corpus)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def best_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The fastest run of a side (least disturbed by other load), with the highest peak RSS seen."""
    best = dict(max(runs, key=lambda r: r["pages_s"]))
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    best["median_pages_s"] = statistics.median(r["pages_s"] for r in runs)
    return best


def main() -> None:
    """Parse arguments; either be a worker or orchestrate the sides and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, action="append", help="folder of .html files (repeatable)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N pages (0 = all)")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the pages per run")
    ap.add_argument("--rounds", type=int, default=3, help="runs per side, interleaved; the best counts")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {SIDES}")
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.corpus = args.corpus or DEFAULT_CORPORA
    if args.worker:
        print(json.dumps(worker(args.worker, args.corpus, args.limit or None, args.repeat)))
        return
    sides = args.sides.split(",")
    # Interleaved rounds: on a shared machine, load from other jobs hits every side alike.
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side in sides:
            runs[side].append(run_side(side, args))
    results = {side: best_of(r) for side, r in runs.items()}
    pages = next(iter(results.values()))["pages"]
    print(f"{pages} pages from {', '.join(str(c) for c in args.corpus)}; best of {args.rounds} rounds\n")
    header = f"{'side':22s} {'pages/s':>9s} {'median':>8s} {'MB/s':>7s} {'docs':>6s}"
    print(f"{header} {'RSS before MB':>14s} {'peak RSS MB':>12s}")
    for side, r in results.items():
        print(
            f"{side:22s} {r['pages_s']:9.1f} {r['median_pages_s']:8.1f} {r['mb_s']:7.2f} {r['docs']:6d} "
            f"{r['baseline_rss_mb']:14.1f} {r['peak_rss_mb']:12.1f}"
        )
    if "crucible" in results and "trafilatura" in results:
        ratio = results["crucible"]["pages_s"] / results["trafilatura"]["pages_s"]
        print(f"\ncrucible / trafilatura.extract() throughput ratio (best runs): {ratio:.2f}")


if __name__ == "__main__":
    main()
