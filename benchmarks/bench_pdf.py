"""Benchmark: our PDF ingest path (extract_pdf + zstd Parquet) against raw PyMuPDF page.get_text().

Usage: python benchmarks/bench_pdf.py [PDF or folder ...] [--rounds N]
Defaults to ../shared/data/pdf/debian and ../shared/data/pdf/texlive-humanities. Each side runs in a
fresh subprocess (same files, same order) that reports its pages/s and its own peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pdf"
DEFAULT_INPUTS = (DATA / "debian", DATA / "texlive-humanities")


def pdf_files(inputs: list[Path]) -> list[Path]:
    """Every PDF under the given files and folders, sorted for a stable order."""
    files: list[Path] = []
    for p in inputs:
        files += sorted(p.rglob("*.pdf")) if p.is_dir() else [p]
    return files


def run_raw(files: list[Path]) -> dict[str, float]:
    """The reference: plain page.get_text() on every page, nothing else."""
    import pymupdf

    pages = chars = 0
    for f in files:
        with pymupdf.open(f) as doc:
            for page in doc:
                chars += len(page.get_text())
                pages += 1
    return {"pages": pages, "chars": chars}


def run_ours(files: list[Path]) -> dict[str, float]:
    """Our full path: extract_pdf on every file, then all documents to one zstd Parquet file."""
    import pyarrow.parquet as pq

    from storage.schemas import Document, documents_table
    from tasks.pdf import PdfConfig, extract_pdf

    cfg = PdfConfig()
    docs = [r for f in files for r in extract_pdf(f, cfg) if isinstance(r, Document)]
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(documents_table(docs), Path(tmp) / "docs.parquet", compression="zstd")
    return {"pages": sum(d.meta["pages"] for d in docs), "chars": sum(len(d.text) for d in docs)}


def _cpu() -> float:
    """CPU seconds this process has used (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(side: str, files: list[Path]) -> None:
    """Run one side in this (fresh) process and print its numbers as JSON."""
    sys.path.insert(0, str(ROOT))
    # Import outside the timed part on both sides (throughput, not start-up); each side imports only
    # what it uses, so peak RSS stays comparable.
    import pymupdf  # noqa: F401

    if side == "ours":
        import pyarrow.parquet  # noqa: F401

        import tasks.pdf  # noqa: F401

    start, cpu = time.perf_counter(), _cpu()
    stats = (run_ours if side == "ours" else run_raw)(files)
    stats["seconds"] = time.perf_counter() - start
    # CPU time is reported too: on a shared machine it is the steadier of the two.
    stats["cpu_seconds"] = _cpu() - cpu
    # ru_maxrss is in KiB on Linux: this process's own peak, imports included.
    stats["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(stats))


def measure(side: str, files: list[Path]) -> dict[str, float]:
    """Run one side in a fresh subprocess and return what it reports."""
    cmd = [sys.executable, __file__, "--worker", side, *map(str, files)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    """Measure both sides on the same files and print throughput, ratio and peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", type=Path, default=list(DEFAULT_INPUTS))
    parser.add_argument("--rounds", type=int, default=1, help="alternate the sides N times, keep the best")
    parser.add_argument("--worker", choices=("ours", "raw"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    files = pdf_files(args.inputs)
    if args.worker:
        worker(args.worker, files)
        return
    if not files:
        sys.exit(f"no PDFs found under {', '.join(map(str, args.inputs))}")
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for side in ("raw", "ours"):
            stats = measure(side, files)
            if side not in best or stats["cpu_seconds"] < best[side]["cpu_seconds"]:
                best[side] = stats
    print(f"{len(files)} PDFs, {int(best['raw']['pages'])} pages, best of {args.rounds} round(s)")
    rates = {}
    for side, label in (("raw", "raw page.get_text()"), ("ours", "extract_pdf + parquet")):
        s = best[side]
        rates[side] = (s["pages"] / s["seconds"], s["pages"] / s["cpu_seconds"])
        print(
            f"{label:22s} {rates[side][0]:6.0f} pages/s wall ({s['seconds']:5.2f} s)  "
            f"{rates[side][1]:6.0f} pages/s CPU ({s['cpu_seconds']:5.2f} s)  "
            f"peak RSS {s['peak_rss_mib']:4.0f} MiB"
        )
    wall, cpu = (rates["ours"][i] / rates["raw"][i] for i in (0, 1))
    print(f"ratio ours/raw: {wall:.2f}x wall, {cpu:.2f}x CPU (target >= 0.80x)")


if __name__ == "__main__":
    main()
