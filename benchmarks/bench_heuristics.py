"""Heuristic filters vs datatrove: keep/drop agreement per filter, throughput and memory, one run.

Documents are real: every HTML page under ../shared/data/html/ through our extractor (tasks.web), and
../shared/data/text/ through our text extractor (tasks.text): Gutenberg books, CCNet samples, Shakespeare,
the quality-negatives junk file, the word list as one document, and the fortune files split at `%` lines.

- Agreement: datatrove's GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter and
  FineWebQualityFilter (defaults) and our `score_text` + `decide` with only that filter on, on the same
  texts; plus the whole chain (ours: every filter but bad words; datatrove: the four in FineWeb's order).
- Speed: each side in a fresh process streams the corpus and runs its full chain (ours: `score_text` +
  `decide` with every filter, bad words included; datatrove: the four filters as a pipeline, each seeing
  the survivors of the one before, C4 rewriting the text). Documents per CPU-second and peak RSS.
- Memory: each side again on a tenth of the corpus, once and ten times over (10x the input, streamed).

    python benchmarks/bench_heuristics.py [--skip-agreement] [--skip-speed] [--refresh]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CORPUS = ROOT / "benchmarks" / "out" / "heuristics-corpus.jsonl"
FILTERS = ("gopher_repetition", "gopher_quality", "c4", "fineweb")
SIDES = ("crucible", "datatrove")


# --- The documents ----------------------------------------------------------------------------------


def split_fortunes(text: str) -> list[str]:
    """The quotes of a fortune file: blocks separated by lines holding only `%`."""
    quotes, current = [], []
    for line in text.split("\n"):
        if line.strip() == "%":
            quotes.append("\n".join(current))
            current = []
        else:
            current.append(line)
    quotes.append("\n".join(current))
    return [q for q in quotes if q.strip()]


def _text_documents(data: Path) -> Iterator[tuple[str, str]]:
    """(name, text) of every document under data/text."""
    from storage.schemas import Document
    from tasks.text import TextConfig, decode_text, extract_text_file

    for path in sorted(p for p in (data / "text").rglob("*") if p.is_file()):
        name = str(path.relative_to(data))
        if path.parent.name == "wordlists" or "fortunes" in path.parts:  # no extension: read them here
            text, _ = decode_text(path.read_bytes())
            parts = split_fortunes(text) if "fortunes" in path.parts else [text]
            yield from ((f"{name}#{i}", part) for i, part in enumerate(parts))
            continue
        for i, doc in enumerate(extract_text_file(path, TextConfig())):
            if isinstance(doc, Document):
                yield f"{name}#{i}", doc.text


def load_documents(data: Path = DATA, html: bool = True) -> list[tuple[str, str]]:
    """(name, text) of every real document: extracted HTML pages, then the text files."""
    sys.path.insert(0, str(ROOT))
    from storage.schemas import Document
    from tasks.web import HtmlConfig, extract_html_file

    docs: list[tuple[str, str]] = []
    if html:
        pages = sorted(p for p in (data / "html").rglob("*") if p.suffix in (".html", ".htm") and p.is_file())
        for page in pages:
            docs += [(str(page.relative_to(data)), d.text) for d in extract_html_file(page, HtmlConfig())
                     if isinstance(d, Document)]  # fmt: skip
    return docs + list(_text_documents(data))


def parity_sample(docs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The documents the slow parity test uses: one page in 4, one fortune in 20, one Gutenberg book."""
    # Keeps the test within CI's budget: datatrove's spaCy spends ~30 s on each whole book or word list.
    books = ("pg11-",)
    sample = []
    for i, (name, text) in enumerate(docs):
        if "fortunes" in name and i % 20:
            continue
        if name.startswith("html") and i % 4:  # the pages' 8.6 MB are most of datatrove's time
            continue
        if "gutenberg/pg" in name and not any(b in name for b in books):
            continue
        if "tinyshakespeare" in name or "wordlists" in name:
            continue
        sample.append((name, text))
    return sample


def cached_corpus(refresh: bool = False) -> Path:
    """The documents as JSONL under benchmarks/out (extracted once: HTML extraction takes ~15 s)."""
    if refresh or not CORPUS.exists():
        CORPUS.parent.mkdir(parents=True, exist_ok=True)
        tmp = CORPUS.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for name, text in load_documents():
                out.write(json.dumps({"name": name, "text": text}, ensure_ascii=False) + "\n")
        tmp.replace(CORPUS)
    return CORPUS


def stream(path: Path, every: int = 1, passes: int = 1) -> Iterator[str]:
    """Texts from the corpus file, one line at a time (every n-th document), `passes` times over."""
    for _ in range(passes):
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i % every == 0:
                    yield json.loads(line)["text"]


# --- Both sides' decisions --------------------------------------------------------------------------


def datatrove_filters() -> dict[str, Any]:
    """datatrove's four filters with their defaults, by our filter names."""
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }


def datatrove_decide(flt: Any, doc: Any) -> str | None:
    """datatrove's reason for dropping a document (None to keep); C4 may rewrite doc.text."""
    result = flt.filter(doc)
    return None if result is True else (result[1] if isinstance(result, tuple) else "dropped")


def datatrove_chain(filters: dict[str, Any]) -> Callable[[str], str | None]:
    """The four filters as a pipeline: the first drop wins, C4's cleaned text goes on to FineWeb."""
    from datatrove.data import Document

    def run(text: str) -> str | None:
        doc = Document(text=text, id="0")
        for name in FILTERS:
            if reason := datatrove_decide(filters[name], doc):
                return f"{name}:{reason}"
        return None

    return run


def our_configs() -> dict[str, Any]:
    """Our FilterConfig with only one filter on, per filter, plus the chain (every filter but bad words)."""
    from tasks.heuristics import FilterConfig

    off = {name: {"enabled": False} for name in (*FILTERS, "badwords")}
    # datatrove has no binary-junk rule: leave ours out of the comparison (empty text stays a drop).
    base = {**off, "sanity": {"max_control_frac": None}}
    configs = {name: FilterConfig.model_validate({**base, name: {}}) for name in FILTERS}
    configs["chain"] = FilterConfig.model_validate({"badwords": {"enabled": False}})
    return configs


def our_chain(cfg: Any) -> Callable[[str], str | None]:
    """score_text + decide with one config."""
    from tasks.heuristics import decide, score_text

    return lambda text: decide(score_text(text, cfg)[1], cfg)


def group(name: str) -> str:
    """The source group of a document name: its first two path parts ("html/python-3.11-docs")."""
    return "/".join(name.split("/")[:2])


def compare(docs: list[tuple[str, str]]) -> dict[str, Any]:
    """Keep/drop agreement per filter and for the chain, overall and per source group, with examples."""
    from datatrove.data import Document

    sys.path.insert(0, str(ROOT))
    filters, configs = datatrove_filters(), our_configs()
    ours = {name: our_chain(cfg) for name, cfg in configs.items()}
    theirs: dict[str, Callable[[str], str | None]] = {
        name: (lambda text, f=flt: datatrove_decide(f, Document(text=text, id="0")))
        for name, flt in filters.items()
    }
    theirs["chain"] = datatrove_chain(filters)
    report: dict[str, Any] = {}
    for name in (*FILTERS, "chain"):
        per_group: Counter[str] = Counter()
        agree: Counter[str] = Counter()
        examples: list[tuple[str, str | None, str | None]] = []
        for doc_name, text in docs:
            a, b = ours[name](text), theirs[name](text)
            per_group[group(doc_name)] += 1
            if (a is None) == (b is None):
                agree[group(doc_name)] += 1
            else:
                examples.append((doc_name, b, a))
        report[name] = {
            "docs": len(docs),
            "agree": sum(agree.values()),
            "rate": sum(agree.values()) / len(docs),
            "groups": {g: (agree[g], n) for g, n in sorted(per_group.items())},
            "classes": Counter(f"datatrove={b or 'keep'} ours={a or 'keep'}" for _, b, a in examples),
            "examples": examples,
        }
    return report


def print_agreement(report: dict[str, Any]) -> None:
    """The agreement table and the commonest disagreement classes."""
    groups = sorted({g for r in report.values() for g in r["groups"]})
    print(
        f"{'filter':18s} {'docs':>6s} {'agree':>8s}  "
        + "  ".join(f"{g.split('/')[1][:14]:>14s}" for g in groups)
    )
    for name, r in report.items():
        cells = "  ".join(f"{r['groups'][g][0] / r['groups'][g][1]:14.2%}" for g in groups)
        print(f"{name:18s} {r['docs']:6d} {r['rate']:8.2%}  {cells}")
    for name, r in report.items():
        print(f"\n{name}: {r['docs'] - r['agree']} disagreements")
        for cls, n in r["classes"].most_common(8):
            print(f"  {n:5d}  {cls}")


# --- Speed and memory -------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM)."""
    # Not ru_maxrss: after fork+exec it still counts the parent's pages (the corpus the agreement loaded).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: Linux reports KiB


def worker(side: str, path: Path, every: int, passes: int) -> dict[str, float]:
    """Run one side's full chain over the streamed corpus in this process and measure it."""
    sys.path.insert(0, str(ROOT))
    if side == "crucible":
        from tasks.heuristics import FilterConfig

        run = our_chain(FilterConfig())
    else:
        run = datatrove_chain(datatrove_filters())
    run("A warm-up sentence loads lazy imports and caches. " * 10)
    docs = kept = chars = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for text in stream(path, every, passes):
        docs += 1
        chars += len(text)
        kept += run(text) is None
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = peak_rss_mb()
    return {
        "docs": docs,
        "kept": kept,
        "cpu_s": cpu,
        "wall_s": wall,
        "docs_per_cpu_s": docs / cpu,
        "mchars_per_cpu_s": chars / cpu / 1e6,
        "peak_rss_mb": peak,
    }


def run_side(side: str, path: Path, every: int = 1, passes: int = 1) -> dict[str, float]:
    """One side in a fresh interpreter pinned to one core; its JSON report."""
    cmd = ["taskset", "-c", "0", sys.executable, __file__, "--worker", side, "--every", str(every)]
    out = subprocess.run([*cmd, "--passes", str(passes)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def speed(path: Path) -> None:
    """Throughput on the whole corpus, then peak RSS on a tenth of it, once and ten times over."""
    runs = {side: run_side(side, path) for side in SIDES}
    head = ("side", "docs", "kept", "CPU s", "docs/CPU-s", "Mchar/CPU-s", "peak RSS MB")
    print("\n{:10s} {:>7s} {:>6s} {:>8s} {:>11s} {:>12s} {:>12s}".format(*head))
    for side, r in runs.items():
        cells = (
            side,
            r["docs"],
            r["kept"],
            r["cpu_s"],
            r["docs_per_cpu_s"],
            r["mchars_per_cpu_s"],
            r["peak_rss_mb"],
        )
        print("{:10s} {:7d} {:6d} {:8.1f} {:11.1f} {:12.2f} {:12.1f}".format(*cells))
    ratio = runs["crucible"]["docs_per_cpu_s"] / runs["datatrove"]["docs_per_cpu_s"]
    print(f"crucible / datatrove documents per CPU-second: {ratio:.2f}x")
    print(f"\n{'side':10s} {'input':>10s} {'docs':>7s} {'peak RSS MB':>12s}")
    for side in SIDES:
        for passes in (1, 10):
            r = run_side(side, path, every=10, passes=passes)
            print(f"{side:10s} {f'{passes}x':>10s} {r['docs']:7d} {r['peak_rss_mb']:12.1f}")


def main() -> None:
    """Parse arguments; either be a worker or run the comparison and the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-agreement", action="store_true", help="do not compare decisions")
    ap.add_argument("--skip-speed", action="store_true", help="do not measure speed and memory")
    ap.add_argument("--refresh", action="store_true", help="re-extract the documents into the JSONL cache")
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--every", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--passes", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, CORPUS, args.every, args.passes)))
        return
    path = cached_corpus(args.refresh)
    if not args.skip_agreement:
        docs = [(json.loads(line)["name"], json.loads(line)["text"]) for line in path.open(encoding="utf-8")]
        print(f"{len(docs)} documents from {DATA}\n")
        print_agreement(compare(docs))
    if not args.skip_speed:
        speed(path)


if __name__ == "__main__":
    main()
