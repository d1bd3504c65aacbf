"""The whole dedup stage at scale: signatures (2 worker processes), buckets, clustering, filtering.

Real text cut into documents with planted duplicates (benchmarks/dedup_corpus.py) is written as document
shards of 10,000 rows; each step then runs as the flow runs it, minus Prefect. Buckets and clustering each
run in a fresh process so their peak RSS is their own; the report gives it per million documents, the
planted copies found, and how total time grows with the corpus.

    python benchmarks/bench_dedup_stage.py --docs 100000
    python benchmarks/bench_dedup_stage.py --scaling 10000 30000 100000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dedup_corpus import build_corpus  # noqa: E402

from storage.schemas import DEDUP_SCHEMA, DOCUMENT_SCHEMA, documents_table, new_document  # noqa: E402
from storage.shards import file_fingerprint, read_shard, write_shard  # noqa: E402
from tasks.dedup_config import DedupConfig  # noqa: E402
from tasks.dedup_sigs import SigRef, signature_shard  # noqa: E402
from tasks.dedup_stage import bucket_step, cluster_step, filter_shard, sidecar_name  # noqa: E402
from tasks.minhash import jaccard  # noqa: E402
from tasks.shingles import shingle_hashes  # noqa: E402

SHARD_ROWS = 10_000
DATA = ROOT.parent / "shared" / "data"


def write_shards(
    n_docs: int, out: Path
) -> tuple[list[tuple[str, str]], list[int], dict[str, int], list[float]]:
    """Corpus as document shards: (path, fingerprint) per shard, origins, id positions, planted Jaccards."""
    texts, origins = build_corpus(n_docs, seed=0, data_dir=DATA)
    similarity = [
        jaccard(shingle_hashes(texts[i], 5), shingle_hashes(texts[o], 5))
        for i, o in enumerate(origins)
        if o >= 0
    ]
    docs = [new_document(t, source="text", uri=f"bench://{i}") for i, t in enumerate(texts)]
    shards = []
    for k in range(0, n_docs, SHARD_ROWS):
        path = out / f"shard-{k // SHARD_ROWS:05d}.parquet"
        write_shard(path, documents_table(docs[k : k + SHARD_ROWS]), DOCUMENT_SCHEMA)
        shards.append((str(path), file_fingerprint(path)))
    return shards, origins, {d.id: i for i, d in enumerate(docs)}, similarity


def _signature(item: tuple[str, str, str]) -> SigRef:
    """Worker: one shard's signature file."""
    return signature_shard(item[0], item[1], item[2], DedupConfig())


def _measured(fn: Callable[..., Any], args: tuple[Any, ...], queue: Any) -> None:
    """Child: run one step and report its result, CPU seconds and peak RSS."""
    start = time.process_time()
    result = fn(*args)
    queue.put((result, time.process_time() - start, _peak_rss_mb()))


def _peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM: unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float, float]:
    """Run a step in a fresh process: result, wall seconds, CPU seconds, peak RSS MB."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = time.perf_counter()
    proc = ctx.Process(target=_measured, args=(fn, args, queue))
    proc.start()
    result, cpu, rss = queue.get()
    proc.join()
    return result, time.perf_counter() - start, cpu, rss


def run_stage(n_docs: int, work: Path) -> dict[str, Any]:
    """Build, sign, bucket, cluster and filter one corpus; return the timings and counts."""
    (work / "docs").mkdir(parents=True)
    shards, origins, position, similarity = write_shards(n_docs, work / "docs")
    cfg = DedupConfig()
    report: dict[str, Any] = {"docs": n_docs}
    start = time.perf_counter()
    with mp.get_context("forkserver").Pool(2) as pool:
        refs = pool.map(_signature, [(p, f, str(work / "sigs")) for p, f in shards])
    report["signatures_s"] = time.perf_counter() - start
    pairs = str(work / "pairs.npy")
    buckets, report["buckets_s"], _, report["buckets_rss_mb"] = in_child(
        bucket_step, refs, str(work / "index"), [], pairs, cfg
    )
    summary, report["cluster_s"], _, report["cluster_rss_mb"] = in_child(
        cluster_step, refs, str(work / "index"), [], pairs, str(work / "out"), cfg
    )
    start = time.perf_counter()
    with mp.get_context("forkserver").Pool(2) as pool:
        decided = summary["sidecars"]
        jobs = [(p, f, decided[sidecar_name(Path(p).name)], str(work / "out"), 2000) for p, f in shards]
        pool.starmap(filter_shard, jobs)
    report["filter_s"] = time.perf_counter() - start
    report["total_s"] = sum(report[k] for k in ("signatures_s", "buckets_s", "cluster_s", "filter_s"))
    report.update(
        candidate_pairs=buckets["candidate_pairs"], **{k: summary[k] for k in ("dup_exact", "dup_minhash")}
    )
    resolved = _planted_resolved(work / "out", shards, origins, position)
    high = [r for r, j in zip(resolved, similarity, strict=True) if j >= 0.8]
    report.update(planted=len(resolved), planted_resolved=sum(resolved) / max(1, len(resolved)))
    report.update(planted_j08=len(high), planted_j08_resolved=sum(high) / max(1, len(high)))
    return report


def _planted_resolved(
    out: Path, shards: list[tuple[str, str]], origins: list[int], position: dict[str, int]
) -> list[bool]:
    """Per planted copy: does it end up represented by the same kept document as its original?"""
    kept_of = list(range(len(origins)))
    for path, _ in shards:
        side = read_shard(out / sidecar_name(Path(path).name), DEDUP_SCHEMA, columns=["id", "kept_id"])
        for row in side.to_pylist():
            if row["kept_id"]:
                kept_of[position[row["id"]]] = position[row["kept_id"]]
    planted = [(i, o) for i, o in enumerate(origins) if o >= 0]
    return [kept_of[i] == kept_of[o] for i, o in planted]


def print_report(r: dict[str, Any]) -> None:
    """One readable block per corpus size."""
    print(
        f"{r['docs']:>9,} docs: total {r['total_s']:.1f} s = signatures {r['signatures_s']:.1f} + buckets "
        f"{r['buckets_s']:.1f} + cluster {r['cluster_s']:.1f} + filter {r['filter_s']:.1f}; "
        f"{r['docs'] / r['total_s']:,.0f} docs/s wall on 2 processes"
    )
    print(
        f"           peak RSS buckets {r['buckets_rss_mb']:.0f} MB, cluster {r['cluster_rss_mb']:.0f} MB; "
        f"{r['candidate_pairs']:,} candidate pairs; removed {r['dup_exact']:,} exact + "
        f"{r['dup_minhash']:,} near"
    )
    print(
        f"           planted copies resolved with their original: {r['planted_resolved']:.3f} of "
        f"{r['planted']:,}; of those at Jaccard >= 0.8: {r['planted_j08_resolved']:.3f} "
        f"of {r['planted_j08']:,}"
    )


def print_growth(reports: list[dict[str, Any]]) -> None:
    """Time per document and clustering RSS per extra million documents between the sizes run."""
    first, last = reports[0], reports[-1]
    times, sizes = last["total_s"] / first["total_s"], last["docs"] / first["docs"]
    slope = (last["cluster_rss_mb"] - first["cluster_rss_mb"]) / (last["docs"] - first["docs"]) * 1e6
    print(
        f"{first['docs']:,} -> {last['docs']:,} docs: total time x{times:.1f} for x{sizes:.0f} documents "
        f"(per document x{times / sizes:.2f}); clustering RSS grows {slope:,.0f} MB per million documents"
    )


def main() -> None:
    """Run the stage at one size or several and print the reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--scaling", type=int, nargs="*", help="run these sizes instead of --docs")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return
    reports = []
    for n in args.scaling or [args.docs]:
        with tempfile.TemporaryDirectory() as tmp:
            reports.append(run_stage(n, Path(tmp)))
        print_report(reports[-1])
    if len(reports) > 1:
        print_growth(reports)
    print(json.dumps(reports))


if __name__ == "__main__":
    main()
