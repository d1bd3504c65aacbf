"""Tokenization end to end (read shards, encode, write Arrow) vs the bare library; the loader.

Real text (paragraphs of ../shared/data/text, recombined into documents by benchmarks/dedup_corpus.py)
is written as document shards until it passes `--mb` megabytes. A tokenizer is trained once; then, each in
a fresh process so peak RSS is its own: the bare library on the same texts already in memory, both ways
(`encode_batch`, the issue's reference, and `encode_batch_fast`, which skips offsets and is what our stage
calls), and our `tokenize_shard` over the shards, in `--rounds` rounds whose order rotates. Finally the
loader serves 10,000 batches from the token shards.

    python benchmarks/bench_tokenize.py --mb 60 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
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

from model.data import TokenLoader  # noqa: E402
from storage.schemas import DOCUMENT_SCHEMA, documents_table, new_document  # noqa: E402
from storage.shards import file_fingerprint, read_shard, write_shard  # noqa: E402
from tasks.tokenize_shards import TokenizeConfig, tokenize_shard, train_tokenizer  # noqa: E402
from tasks.tokenizer import TokenizerConfig, load  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SHARD_DOCS = 5000


def write_corpus(megabytes: int, out: Path) -> list[tuple[str, str]]:
    """Document shards holding at least `megabytes` MB of UTF-8 text."""
    texts: list[str] = []
    seed = 0
    while sum(len(t.encode()) for t in texts) < megabytes * 1_000_000:
        batch, _ = build_corpus(10_000, seed=seed, data_dir=DATA)
        texts += batch
        seed += 1
    docs = [new_document(t, source="text", uri=f"bench://{i}") for i, t in enumerate(texts)]
    shards = []
    for k in range(0, len(docs), SHARD_DOCS):
        path = out / f"shard-{k // SHARD_DOCS:05d}.parquet"
        write_shard(path, documents_table(docs[k : k + SHARD_DOCS]), DOCUMENT_SCHEMA)
        shards.append((str(path), file_fingerprint(path)))
    return shards


def _peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bare(shards: list[tuple[str, str]], tokenizer: str, method: str) -> dict[str, Any]:
    """The library alone: texts already in memory, `method` in batches of 1,000, ids materialized."""
    tok = load(Path(tokenizer))
    encode = getattr(tok, method)
    texts = [
        t for path, _ in shards for t in read_shard(Path(path), DOCUMENT_SCHEMA, ["text"])["text"].to_pylist()
    ]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), 1000):
        tokens += sum(len(e.ids) for e in encode(texts[i : i + 1000]))
    return {"mb": mb, "seconds": time.perf_counter() - start, "tokens": tokens}


def ours(shards: list[tuple[str, str]], tokenizer: str, out: str, digest: str) -> dict[str, Any]:
    """Our stage: read each document shard, encode, write its train and val token shards."""
    start = time.perf_counter()
    refs = [tokenize_shard(p, f, tokenizer, digest, out, TokenizeConfig()) for p, f in shards]
    tokens = sum(sum(r.tokens.values()) for r in refs) - sum(sum(r.documents.values()) for r in refs)
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def loader(out: str, digest: str, batches: int) -> dict[str, Any]:
    """Serve `batches` batches of 16 x 1024 tokens; RSS after the first 100 and after all."""
    data = TokenLoader(sorted(Path(out).glob("*.train.arrow")), 1024, 16, seed=0, tokenizer_hash=digest)
    for _ in range(100):
        data.next_batch()
    rss_100 = _current_rss_mb()
    start = time.perf_counter()
    for _ in range(batches):
        data.next_batch()
    seconds = time.perf_counter() - start
    return {
        "batches_per_s": batches / seconds,
        "rss_after_100_mb": rss_100,
        "rss_after_all_mb": _current_rss_mb(),
    }


def _current_rss_mb() -> float:
    """Resident memory now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...], queue: Any) -> None:
    """Run one measurement and report it with the peak RSS."""
    queue.put({**fn(*args), "peak_rss_mb": _peak_rss_mb()})


def in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run a measurement in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    """Build the corpus, train once, measure the bare library and ours in rotating rounds, then the loader."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=60)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the three runs, order rotating")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "docs").mkdir()
        shards = write_corpus(args.mb, work / "docs")
        start = time.perf_counter()
        info = train_tokenizer([p for p, _ in shards], [], str(work), TokenizerConfig(train_bytes=20_000_000))
        train_s = time.perf_counter() - start
        sides: dict[str, tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]] = {
            "encode_batch": (bare, (shards, info["path"], "encode_batch")),
            "encode_batch_fast": (bare, (shards, info["path"], "encode_batch_fast")),
            "ours": (ours, (shards, info["path"], str(work / "tokens"), info["hash"])),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        names = list(sides)
        for r in range(args.rounds):
            for name in names[r % 3 :] + names[: r % 3]:  # each side goes first in turn
                fn, fn_args = sides[name]
                runs[name].append(in_child(fn, *fn_args))
        ld = in_child(loader, str(work / "tokens"), info["hash"], args.batches)
    print(json.dumps({"train_tokenizer_s": train_s, "runs": runs, "loader": ld}, indent=1))
    _report(runs, ld, len(shards), train_s, args.batches)


def _report(
    runs: dict[str, list[dict[str, Any]]], ld: dict[str, Any], shards: int, train_s: float, batches: int
) -> None:
    """MB/s and peak RSS of each side's best round; ours against each bare way, best and median per round."""
    mb = runs["encode_batch"][0]["mb"]
    print(
        f"{mb:.1f} MB of text, {shards} shards; tokenizer (8,192 tokens, 20 MB sample) "
        f"trained in {train_s:.1f} s"
    )
    for name, label in (
        ("encode_batch", "bare encode_batch"),
        ("encode_batch_fast", "bare encode_batch_fast"),
    ):
        best = min(r["seconds"] for r in runs[name])
        peak = max(r["peak_rss_mb"] for r in runs[name])
        print(f"{label}: {mb / best:.2f} MB/s, peak RSS {peak:.0f} MB")
    ours_best = min(r["seconds"] for r in runs["ours"])
    same = all(r["tokens"] == runs["encode_batch"][0]["tokens"] for rs in runs.values() for r in rs)
    peak = max(r["peak_rss_mb"] for r in runs["ours"])
    print(
        f"ours (read, encode, write): {mb / ours_best:.2f} MB/s, peak RSS {peak:.0f} MB; same tokens: {same}"
    )
    for name in ("encode_batch", "encode_batch_fast"):
        paired = [b["seconds"] / o["seconds"] for b, o in zip(runs[name], runs["ours"], strict=True)]
        best = min(r["seconds"] for r in runs[name]) / ours_best
        print(
            f"ours / bare {name}: best {best:.2f}x, median of rounds {statistics.median(paired):.2f}x "
            f"[{', '.join(f'{x:.2f}' for x in paired)}] (target >= 0.8)"
        )
    print(
        f"loader: {ld['batches_per_s']:.0f} batches/s (16 x 1024), RSS {ld['rss_after_100_mb']:.0f} MB "
        f"after 100 batches, {ld['rss_after_all_mb']:.0f} MB after {batches:,} more"
    )


if __name__ == "__main__":
    main()
