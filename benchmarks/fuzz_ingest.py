"""Fuzz benchmark: mutated real files of every kind through the real ingest flow, the property checked.

Generates fuzz cases (tests/fuzzing.py: seeds from ../shared/data, generic and structure-aware mutators,
hostile and mislabelled names) in batches into a temporary folder, runs the ingest flow on each batch
against one Prefect server, and checks on every batch: the stage completes, every fuzzed file is some
document's or drop's input, no file took longer than the time cap and no worker went over the memory cap.
Prints a line per batch and, at the end, a markdown summary: cases per kind, documents, drops by reason,
stage failures, unaccounted inputs, the isolation net's catches (extractor exceptions, crashes,
timeouts), max seconds per file, max worker RSS, wall and CPU time.

    python benchmarks/fuzz_ingest.py --cases 100000 --seed 1 --batch 2000 [--out results.md] [--keep DIR]
    python benchmarks/fuzz_ingest.py --atheris [--kind pdf] [-- -runs=100000 -max_total_time=3600]

Without --server a temporary Prefect server (SQLite) is started for the run. Case i of seed s is rebuilt
alone with `fuzzing.case_at(seed_corpus(), s, i)`; --keep saves every input that broke the property or was
caught by the isolation net. --atheris fuzzes `extract_file` in-process, coverage-guided (see --help).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_pipeline import server  # noqa: E402  (the benchmarks' one temporary-or-given server)

# Server services that only persist events or watch schedules: a long fuzz run's thousands of task runs
# would keep SQLite busy with writes nobody reads (the tests' session server turns off the same ones).
IDLE_SERVICES = ("EVENT_PERSISTER", "TRIGGERS", "SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS")


@dataclass
class Totals:
    """Everything counted over the batches so far."""

    cases: Counter[str] = field(default_factory=Counter)
    """Cases by the kind of their seed."""
    routed: Counter[str] = field(default_factory=Counter)
    """Cases by the kind their file name routes them to (mislabelled ones differ)."""
    documents: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    stage_failures: list[str] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)
    cap_breaches: list[str] = field(default_factory=list)
    net: Counter[str] = field(default_factory=Counter)
    """The isolation net's catches, by reason and first line of detail."""
    max_input_seconds: float = 0.0
    peak_worker_rss_mb: float = 0.0
    batches: int = 0


def cpu_seconds() -> float:
    """CPU time of this process and every process it started (the server, the forkserver and its workers)."""
    import psutil

    me = psutil.Process()
    total = sum(getattr(me.cpu_times(), f) for f in ("user", "system", "children_user", "children_system"))
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            # children_*: the workers a forkserver started and already reaped.
            total += times.user + times.system + times.children_user + times.children_system
    return total


def _keep(paths: list[Path], keep: Path | None, label: str) -> None:
    """Copy inputs worth a look into the keep folder (named by batch label)."""
    if keep is None:
        return
    keep.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copyfile(p, keep / f"{label}-{p.name}"[:250])


def bisect(files: list[Path], cfg: Any, workers: int) -> list[Path]:
    """The single files on which the ingest flow fails: each half of a failing set is run again, down to
    one file (a failure no single file reproduces, e.g. a flaky server, names none)."""
    from flows.ingest import run_ingest

    if len(files) <= 1:
        return files
    found = []
    for half in (files[: len(files) // 2], files[len(files) // 2 :]):
        with tempfile.TemporaryDirectory(prefix="crucible-bisect-") as run:
            try:
                run_ingest([str(f) for f in half], run, cfg, workers=workers)
            except Exception:  # this half holds a culprit
                found += bisect(half, cfg, workers)
    return found


def run_batch(args: argparse.Namespace, start: int, count: int, totals: Totals) -> None:
    """Fuzz cases [start, start+count): write them, ingest them, check the property, add to the totals."""
    from fuzzing import case_at, check_stage, seed_corpus, write_cases

    from flows.ingest import run_ingest
    from tasks.inputs import kind_of

    cfg = config(args)
    seeds = seed_corpus()
    end = start + count
    cases = [case_at(seeds, args.seed, i, args.weights, args.avoid_pending) for i in range(start, end)]
    with tempfile.TemporaryDirectory(prefix="crucible-fuzz-") as tmp:
        files = write_cases(cases, Path(tmp) / "in")
        totals.cases.update(c.kind for c in cases)
        totals.routed.update(kind_of(f) for f in files)
        label = f"b{start}"
        try:
            summary = run_ingest([str(Path(tmp) / "in")], str(Path(tmp) / "run"), cfg, workers=args.workers)
        except Exception as exc:  # the property: a stage never fails; record it, name the inputs, go on
            totals.stage_failures.append(f"cases {start}-{end - 1}: {type(exc).__name__}: {exc}"[:800])
            culprits = bisect(files, cfg, args.workers)
            totals.stage_failures += [f"  culprit: {f.name!r}" for f in culprits] or ["  no single culprit"]
            _keep(culprits, args.keep, label)
            return
        check = check_stage(summary["stage_dir"], files, cfg)
        totals.documents += check.documents
        totals.drops.update(check.drops)
        totals.unaccounted += check.unaccounted
        totals.cap_breaches += check.over_time + check.over_memory
        totals.max_input_seconds = max(totals.max_input_seconds, check.max_input_seconds)
        totals.peak_worker_rss_mb = max(totals.peak_worker_rss_mb, check.peak_worker_rss_mb)
        totals.net.update(f"{reason}: {detail.splitlines()[0][:120]}" for _, reason, detail in check.net)
        by_uri = {f.resolve().as_uri(): f for f in files}
        caught = [by_uri[uri] for uri, _, _ in check.net if uri in by_uri]
        _keep([Path(p) for p in check.unaccounted] + caught, args.keep, label)


def quiet_workers(path: str) -> None:
    """Start the extraction workers' forkserver with its stderr going to `path`: warcio prints a warning
    with the raw rest of every damaged record, megabytes over a long run; the records say it all anyway."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tasks.extract"])  # as tasks.isolate does: the server starts only once
    saved = os.dup(2)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        warm = ctx.Process(target=os.getpid)  # starts the server, which keeps the stderr it got
        warm.start()
        warm.join()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def config(args: argparse.Namespace) -> Any:
    """The ingest config of the run: default extraction, the caps and group size given."""
    from tasks.extract import IngestConfig

    return IngestConfig(
        file_timeout_s=args.timeout, worker_memory_mb=args.memory_mb, group_files=args.group_files
    )


def report(args: argparse.Namespace, totals: Totals, done: int, wall: float, cpu: float) -> str:
    """The markdown summary of the run so far."""
    failures = len([f for f in totals.stage_failures if not f.startswith("  ")])
    lines = [
        f"Command: `python benchmarks/fuzz_ingest.py --cases {args.cases} --seed {args.seed} "
        f"--batch {args.batch}{' --avoid-pending' if args.avoid_pending else ''}` "
        f"({time.strftime('%Y-%m-%d')}); caps: file_timeout_s={args.timeout}, "
        f"worker_memory_mb={args.memory_mb}; {done:,} cases in {totals.batches} batches.",
        "",
        "| cases by seed kind | " + " | ".join(f"{k}: {n:,}" for k, n in sorted(totals.cases.items())) + " |",
        "|---|" + "---|" * len(totals.cases),
        "| by name (mislabelled included) | "
        + " | ".join(f"{k}: {totals.routed.get(k, 0):,}" for k in sorted(totals.cases))
        + " |",
        "",
        f"- documents: **{totals.documents:,}**; drops: **{totals.drops.total():,}**",
        f"- stage failures: **{failures}**; unaccounted inputs: **{len(totals.unaccounted)}**; "
        f"cap breaches: **{len(totals.cap_breaches)}**",
        f"- max seconds for one file: {totals.max_input_seconds:.1f} (cap {args.timeout:g}); "
        f"max worker peak RSS: {totals.peak_worker_rss_mb:.0f} MB (cap {args.memory_mb})",
        f"- wall: {wall / 60:.1f} min ({done / max(wall, 1e-9):.1f} cases/s); CPU: {cpu / 60:.1f} min",
        "",
        "| drop reason | count |",
        "|---|---|",
        *(f"| {reason} | {n:,} |" for reason, n in totals.drops.most_common()),
    ]
    if totals.net:
        lines += ["", "Caught by the isolation net (reason: detail):", ""]
        lines += [f"- {n} × `{what}`" for what, n in totals.net.most_common(30)]
    for title, items in (
        ("Stage failures", totals.stage_failures),
        ("Unaccounted", totals.unaccounted),
        ("Cap breaches", totals.cap_breaches),
    ):
        if items:
            lines += ["", f"{title}:", "", *(f"- `{i}`" for i in items[:30])]
    return "\n".join(lines) + "\n"


def fuzz_flow(args: argparse.Namespace) -> Totals:
    """All batches through the ingest flow, with a progress line per batch and the summary kept current."""
    totals = Totals()
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    quiet_workers(args.worker_stderr)
    for service in IDLE_SERVICES:
        os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{service}_ENABLED", "false")
    with server(args.server):
        for start in range(0, args.cases, args.batch):
            count = min(args.batch, args.cases - start)
            run_batch(args, start, count, totals)
            totals.batches += 1
            wall, done = time.perf_counter() - start_wall, start + count
            cpu = cpu_seconds() - start_cpu
            eta = (args.cases - done) / (done / wall) / 60
            print(
                f"batch {totals.batches}: {done:,}/{args.cases:,} cases, {totals.documents:,} documents, "
                f"{totals.drops.total():,} drops, {len(totals.stage_failures)} stage failures, "
                f"{len(totals.unaccounted)} unaccounted, {len(totals.cap_breaches)} cap breaches, "
                f"net {totals.net.total()}, {wall:.0f} s ({done / wall:.1f} cases/s, ETA {eta:.0f} min)",
                flush=True,
            )
            if args.out:
                args.out.write_text(report(args, totals, done, wall, cpu), encoding="utf-8")
    print()
    print(report(args, totals, args.cases, time.perf_counter() - start_wall, cpu_seconds() - start_cpu))
    return totals


def fuzz_atheris(args: argparse.Namespace, libfuzzer_args: list[str]) -> None:
    """Coverage-guided fuzzing of extract_file in this process with atheris: each input's bytes choose a
    seed and mutations (or, with --kind, are the file itself); a violation of the property raises, and
    atheris saves the crashing input (crash-<sha1>) and stops."""
    import atheris
    from fuzzing import Extraction, apply_op, mutators_for, seed_corpus, violations

    with atheris.instrument_imports():
        from tasks.extract import extract_file
        from tasks.inputs import discover

    cfg = config(args)
    seeds = seed_corpus()
    tried: Counter[str] = Counter()
    folder = Path(tempfile.mkdtemp(prefix="crucible-atheris-"))

    def case(data: bytes) -> tuple[str, bytes]:
        """The file suffix and content an input stands for."""
        if args.kind:
            return {"pdf": ".pdf", "html": ".html", "warc": ".warc.gz", "text": ".jsonl"}[args.kind], data
        fdp = atheris.FuzzedDataProvider(data)
        seed = seeds[fdp.ConsumeIntInRange(0, len(seeds) - 1)]
        names = mutators_for(seed)
        content = seed.data
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            op = (names[fdp.ConsumeIntInRange(0, len(names) - 1)], fdp.ConsumeUInt(4))
            content = apply_op(content, seed.suffix.endswith(".gz"), op)
        return seed.suffix, content

    def test_one_input(data: bytes) -> None:
        """Extract one case in-process and raise on any violation of the property."""
        suffix, content = case(data)
        path = folder / f"case{suffix}"
        path.write_bytes(content)
        (item,), _ = discover([str(path)])
        records = list(extract_file((item, cfg)))
        tried.update(getattr(r, "reason", "document") for r in records)
        tried["inputs"] += 1
        if problems := violations(Extraction(records=records)):
            raise AssertionError("\n".join(problems))
        runs = tried["inputs"]
        if runs >= 64 and runs & (runs - 1) == 0:  # like libFuzzer's pulses (it exits without atexit)
            print(f"atheris: {runs} inputs, records by reason: {dict(tried.most_common())}", flush=True)

    corpus = []
    if args.kind:
        corpus_dir = folder / "corpus"
        corpus_dir.mkdir()
        for k, seed in enumerate(s for s in seeds if s.kind == args.kind):
            (corpus_dir / f"seed-{k}").write_bytes(seed.data)
        corpus = [str(corpus_dir)]
    atheris.Setup([sys.argv[0], *libfuzzer_args, *corpus], test_one_input)
    atheris.Fuzz()


def main() -> None:
    """Parse arguments and run the flow fuzzing (default) or atheris."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000, help="fuzz cases in all (default 5000)")
    parser.add_argument("--seed", type=int, default=1, help="run seed: the same seed makes the same cases")
    parser.add_argument("--batch", type=int, default=2000, help="cases per ingest flow run")
    parser.add_argument("--workers", type=int, default=2, help="ingest task threads")
    parser.add_argument("--timeout", type=float, default=30.0, help="file_timeout_s cap (seconds)")
    parser.add_argument("--memory-mb", type=int, default=2048, help="worker_memory_mb cap")
    parser.add_argument("--group-files", type=int, default=16, help="files per ingest group (shard)")
    parser.add_argument(
        "--weights",
        type=lambda s: {k: float(v) for k, v in (p.split("=") for p in s.split(","))},
        default=None,
        help="case share per kind, e.g. pdf=0.2,html=0.3,warc=0.15,text=0.35 (the default)",
    )
    parser.add_argument(
        "--avoid-pending",
        action="store_true",
        help="leave out the file-name pieces of pending findings (fuzzing.PENDING_NAME_PIECES)",
    )
    parser.add_argument("--worker-stderr", default=os.devnull, help="where extraction workers' stderr goes")
    parser.add_argument("--server", help="PREFECT_API_URL of a running server (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="also write the markdown summary here (kept current)")
    parser.add_argument("--keep", type=Path, help="copy inputs that broke the property or hit the net here")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided in-process fuzzing instead")
    parser.add_argument(
        "--kind", choices=("pdf", "html", "warc", "text"), help="atheris: raw bytes of a kind"
    )
    args, libfuzzer_args = parser.parse_known_args()
    # Prefect's per-task INFO lines would bury the progress lines of a long run.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if args.atheris:
        fuzz_atheris(args, [a for a in libfuzzer_args if a != "--"])
        return
    totals = fuzz_flow(args)
    if totals.stage_failures or totals.unaccounted or totals.cap_breaches:
        sys.exit(1)


if __name__ == "__main__":
    main()
