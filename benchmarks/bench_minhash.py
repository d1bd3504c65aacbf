"""MinHash signature throughput: ours vs datasketch and datatrove on the same real documents, one run.

The parent builds the corpus (benchmarks/dedup_corpus.py) once and saves it as JSONL; each method runs in
a fresh subprocess that loads it before the clock starts and reports docs per CPU-second, wall time and
peak RSS (VmHWM). Normalizing and shingling are inside every clock. Methods: ours (`signatures` on batches
of 1,000; ours+save also np.save's the (n, 112) array); datasketch's MinHash(num_perm=112) per document
fed by update() in a loop or by update_batch(), and MinHash.bulk per 1,000 kept as LeanMinHash, all on
word 5-grams of `tasks.shingles.normalize` text; datatrove's MinhashDedupSignature with FineWeb's config
(14 x 8, 5-grams, 64-bit) run as a pipeline step writing its files; prep-only, datasketch's shingling.

    python benchmarks/bench_minhash.py [--docs N] [--methods ours,datatrove,...] [--rounds R] [--scaling]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
NGRAM, PERMS, BATCH = 5, 112, 1000
SKETCH = ("datasketch-update", "datasketch-update-batch", "datasketch-bulk")
METHODS = ("ours", "ours+save", *SKETCH, "datatrove", "prep-only")
SCALING_SIZES = (10_000, 30_000, 100_000)
Work = Callable[[list[str]], Any]


# --- The methods (run in the child) -----------------------------------------------------------------


def _ours(out_dir: Path | None) -> Work:
    """Our batched signatures; with out_dir, the (n, 112) array is also written there."""
    from tasks.minhash import MinHashConfig, signatures

    cfg = MinHashConfig()

    def work(texts: list[str]) -> np.ndarray:
        """Signatures of every text, batch by batch, into one preallocated array (then saved)."""
        sigs = np.empty((len(texts), cfg.permutations), dtype=np.uint64)
        for lo in range(0, len(texts), BATCH):
            sigs[lo : lo + BATCH] = signatures(texts[lo : lo + BATCH], cfg)
        if out_dir is not None:
            np.save(out_dir / "signatures.npy", sigs)
        return sigs

    return work


def _shingler() -> Callable[[str], list[bytes]]:
    """Word 5-gram shingles (bytes) of our normalized text: the same input ours hashes."""
    from tasks.shingles import normalize

    def shingles(text: str) -> list[bytes]:
        """Shingles of one text; fewer than 5 words give one shingle of them all, none give none."""
        words = normalize(text).split()
        if len(words) < NGRAM:
            return [" ".join(words).encode()] if words else []
        return [" ".join(words[i : i + NGRAM]).encode() for i in range(len(words) - NGRAM + 1)]

    return shingles


def _datasketch(way: str) -> Work:
    """One of datasketch's usual ways; signatures are kept as an (n, 112) array like ours."""
    from datasketch import LeanMinHash, MinHash

    shingles = _shingler()

    def per_document(texts: list[str]) -> np.ndarray:
        """A fresh MinHash per document, fed by update() or update_batch()."""
        out = np.empty((len(texts), PERMS), dtype=np.uint64)
        for i, text in enumerate(texts):
            m = MinHash(num_perm=PERMS)
            if way == "datasketch-update":
                for shingle in shingles(text):
                    m.update(shingle)
            else:
                m.update_batch(shingles(text))
            out[i] = m.hashvalues
        return out

    def bulk(texts: list[str]) -> np.ndarray:
        """MinHash.bulk per batch (one permutation setup per batch), each kept as a LeanMinHash."""
        out = np.empty((len(texts), PERMS), dtype=np.uint64)
        for lo in range(0, len(texts), BATCH):
            batch = MinHash.bulk([shingles(t) for t in texts[lo : lo + BATCH]], num_perm=PERMS)
            for i, m in enumerate(batch, start=lo):
                out[i] = LeanMinHash(m).hashvalues
        return out

    return bulk if way == "datasketch-bulk" else per_document


def _datatrove_minhash() -> ModuleType:
    """datatrove.pipeline.dedup.minhash, loaded from its file without the package's __init__."""
    # The dedup package __init__ also imports exact-substring dedup, which needs `tokenizers` (the
    # datatrove[processing] extra the project does not install); minhash.py itself only uses absolute imports.
    import datatrove

    path = Path(datatrove.__file__).parent / "pipeline" / "dedup" / "minhash.py"
    spec = importlib.util.spec_from_file_location("datatrove_dedup_minhash", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _datatrove(out_dir: Path) -> tuple[Work, str]:
    """datatrove's signature step with FineWeb's config; xxhash (its default) when installed, else sha1."""
    from datatrove.data import Document
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.logging import logger

    minhash = _datatrove_minhash()
    logger.remove()  # its per-step log lines would only interleave with the table
    # xxhash is datatrove's default (HashConfig) and in our dev extra; without it, sha1 (slower).
    hash_fc = "xxhash" if importlib.util.find_spec("xxhash") else "sha1"
    hashing = HashConfig(precision=64, hash_fc=hash_fc)
    cfg = minhash.MinhashConfig(n_grams=NGRAM, num_buckets=14, hashes_per_bucket=8, hash_config=hashing)
    step = minhash.MinhashDedupSignature(output_folder=str(out_dir), config=cfg)

    def work(texts: list[str]) -> None:
        """Run the step over Documents as a pipeline would, exhausting it if it yields."""
        docs = (Document(text=t, id=str(i)) for i, t in enumerate(texts))
        result = step.run(data=docs, rank=0, world_size=1)
        if result is not None:
            deque(result, maxlen=0)

    return work, f"hash_fc={hash_fc}"


def _prep_only() -> Work:
    """Only the normalization and shingling the datasketch methods do, each document's shingles dropped."""
    shingles = _shingler()
    # Holding every shingle of 100k documents (tens of millions of bytes objects) would make the garbage
    # collector, not the shingling, dominate; the datasketch methods drop them after each document too.
    return lambda texts: sum(len(shingles(t)) for t in texts)


def _method(name: str, out_dir: Path) -> tuple[Work, str]:
    """The work function of one method (imports and setup done, outside the clock) and a note."""
    if name in ("ours", "ours+save"):
        return _ours(out_dir if name == "ours+save" else None), ""
    if name in SKETCH:
        return _datasketch(name), "scheme=affine32 (default), sha1_hash32"
    if name == "datatrove":
        return _datatrove(out_dir)
    if name == "prep-only":
        return _prep_only(), ""
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def _peak_rss_mb() -> float:
    """Peak RSS of this process so far in MB: VmHWM where /proc has it, else ru_maxrss (KiB on Linux)."""
    # Not ru_maxrss first: exec folds the pre-exec (forked) address space's peak into it, so a child
    # spawned by a parent holding the 100k-document corpus would report at least the parent's RSS.
    status = Path("/proc/self/status")
    if status.exists():
        return int(re.search(r"VmHWM:\s*(\d+)", status.read_text())[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(method: str, corpus: Path, docs: int) -> dict[str, Any]:
    """Time one method on the first `docs` texts of the corpus; RSS before and after the work."""
    with corpus.open(encoding="utf-8") as f:
        texts = [json.loads(line) for line in itertools.islice(f, docs)]
    with tempfile.TemporaryDirectory(prefix="bench-minhash-") as tmp:
        work, note = _method(method, Path(tmp))
        base = _peak_rss_mb()
        cpu, wall = time.process_time(), time.perf_counter()
        work(texts)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = _peak_rss_mb()
    return dict(
        method=method, docs=len(texts), cpu_s=cpu, wall_s=wall, base_rss_mb=base, peak_rss_mb=peak, note=note
    )


# --- The parent ---------------------------------------------------------------------------------------


def write_corpus(n_docs: int, seed: int, path: Path) -> None:
    """Build the corpus, print its statistics and save its texts as JSONL (one JSON string a line)."""
    if str(Path(__file__).parent) not in sys.path:  # imported rather than run as a script
        sys.path.insert(0, str(Path(__file__).parent))
    from dedup_corpus import build_corpus, corpus_stats

    texts, origins = build_corpus(n_docs, seed, DATA)
    stats = corpus_stats(texts, origins)
    print(
        f"corpus: {stats['docs']:,} docs, mean {stats['mean_words']:.0f} words/doc, "
        f"{stats['planted']:,} planted duplicates ({stats['exact_copies']:,} exact copies), "
        f"{sum(map(len, texts)) / 1e6:.0f} M characters",
        flush=True,
    )
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(t) + "\n" for t in texts)


def spawn(method: str, corpus: Path, docs: int, rounds: int = 1) -> dict[str, Any]:
    """Run one method in a fresh Python process per round and return the report of the fastest round."""
    cmd = [sys.executable, __file__, "--method", method, "--corpus", str(corpus), "--docs", str(docs)]
    reports = []
    for _ in range(rounds):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
        reports.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {method}: {reports[-1]['cpu_s']:.1f} CPU s, {reports[-1]['wall_s']:.1f} s wall", flush=True)
    return min(reports, key=lambda r: r["cpu_s"])


def _rate(report: dict[str, Any]) -> float:
    """Documents per CPU-second of one report."""
    return report["docs"] / report["cpu_s"]


def _ratio_line(label: str, ours: dict[str, Any], ref: dict[str, Any], target: float) -> str:
    """Ours/reference on docs per CPU-second (and wall) with its target."""
    cpu = _rate(ours) / _rate(ref)
    wall = (ours["docs"] / ours["wall_s"]) / (ref["docs"] / ref["wall_s"])
    verdict = "met" if cpu >= target else "NOT met"
    return f"{label}: {cpu:.1f}x per CPU-s, {wall:.1f}x wall (target >= {target:g}x: {verdict})"


def print_table(reports: list[dict[str, Any]]) -> None:
    """The per-method table, then ours/reference ratios against their targets."""
    by = {r["method"]: r for r in reports}
    ours = by.get("ours")
    print(
        f"\n{'method':<24}{'docs':>8}{'CPU s':>9}{'wall s':>9}{'docs/CPU-s':>12}{'base MB':>9}"
        f"{'peak MB':>9}{'ours/this':>11}  note"
    )
    for r in reports:
        ratio = f"{_rate(ours) / _rate(r):.1f}x" if ours else "-"
        print(
            f"{r['method']:<24}{r['docs']:>8}{r['cpu_s']:>9.1f}{r['wall_s']:>9.1f}"
            f"{_rate(r):>12,.0f}{r['base_rss_mb']:>9.0f}{r['peak_rss_mb']:>9.0f}"
            f"{ratio:>11}  {r['note']}"
        )
    print("(base MB: peak RSS after imports and loading the corpus, before the work; peak MB: at the end)")
    if ours is None:
        return
    sketch = [r for r in reports if r["method"] in SKETCH]
    if sketch:
        best = min(sketch, key=lambda r: r["cpu_s"])
        print(_ratio_line(f"ours vs fastest datasketch way ({best['method']})", ours, best, 2))
    if "datatrove" in by:
        print(_ratio_line("ours vs datatrove", ours, by["datatrove"], 10))
        if "ours+save" in by:
            print(_ratio_line("ours+save vs datatrove", by["ours+save"], by["datatrove"], 10))
        print(
            "note: datatrove's time includes writing and sorting its 14 bucket files; ours does not "
            "write, ours+save adds np.save of the (n, 112) array."
        )


def print_scaling(reports: list[dict[str, Any]]) -> None:
    """Ours at each size: total time, docs per CPU-second and per-document cost relative to the first."""
    first = reports[0]["cpu_s"] / reports[0]["docs"]
    columns = (("docs", 8), ("CPU s", 9), ("wall s", 9), ("docs/CPU-s", 12), ("us/doc", 9), ("vs first", 10))
    print("\n" + "".join(f"{name:>{width}}" for name, width in columns) + f"{'peak MB':>9}")
    for r in reports:
        per_doc = r["cpu_s"] / r["docs"]
        print(
            f"{r['docs']:>8}{r['cpu_s']:>9.2f}{r['wall_s']:>9.2f}{r['docs'] / r['cpu_s']:>12,.0f}"
            f"{per_doc * 1e6:>9.0f}{per_doc / first:>9.2f}x{r['peak_rss_mb']:>9.0f}"
        )
    print("(vs first ~1.00x at every size = time grows linearly with the number of documents)")


def main() -> None:
    """Parse arguments; run one method (child) or build the corpus and run them all (parent)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents in the corpus")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of methods")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--rounds", type=int, default=1, help="runs per method; the fastest is reported")
    parser.add_argument("--scaling", action="store_true", help="ours at 10k, 30k and 100k documents")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_child(args.method, args.corpus, args.docs)))
        return
    if not DATA.is_dir():
        print("skipped: ../shared/data not found")
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    sizes = SCALING_SIZES if args.scaling else (args.docs,)
    with tempfile.TemporaryDirectory(prefix="bench-minhash-corpus-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(max(sizes), args.seed, corpus)
        if args.scaling:
            print_scaling([spawn("ours", corpus, n, args.rounds) for n in sizes])
        else:
            print_table([spawn(m, corpus, args.docs, args.rounds) for m in methods])


if __name__ == "__main__":
    main()
