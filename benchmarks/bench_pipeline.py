"""End to end: the demo pipeline's first run, an unchanged rerun, and a rerun with 10% more input.

Runs `configs/demo.yaml` (the README's demo: ingest, curate, dedup, tokenize, train) three times in one
run root against one Prefect server: first from scratch; then unchanged (every task should be a cache hit);
then with a watched folder added to the inputs holding real documentation pages, about 10% of the demo's
documents (from ../shared/data/html/python-3.11-docs). Prints each run's wall time, each stage's wall time
and its task runs by state, and the share of data-stage tasks recomputed.

    python benchmarks/bench_pipeline.py [--extra 22] [--server http://127.0.0.1:4200/api]

Without --server a temporary Prefect server (SQLite) is started for the benchmark.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

DATA = ROOT.parent / "shared" / "data"
STAGES = ("ingest", "curate", "dedup", "tokenize", "train")


@contextlib.contextmanager
def server(url: str | None) -> Iterator[None]:
    """Use the server at `url`, or a temporary one for the duration."""
    if url:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}):
            yield
        return
    from prefect.testing.utilities import prefect_test_harness

    from flows.server import telemetry_off

    telemetry_off(os.environ)  # offline, the server's telemetry logs an ERROR at every start
    with prefect_test_harness(server_startup_timeout=120):
        yield


def stage_times(flow_run_id: Any) -> dict[str, float]:
    """Wall seconds of each subflow run of a pipeline run, by flow name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        return {client.read_flow(r.flow_id).name: r.total_run_time.total_seconds() for r in runs}


def run(config: Any) -> dict[str, Any]:
    """One pipeline run: wall time, per-stage times and task states."""
    from conftest import flow_tree_states

    from flows.pipeline import pipeline_flow

    start = time.perf_counter()
    state = pipeline_flow(config=config, return_state=True)
    wall = time.perf_counter() - start
    result = state.result()  # raises if the run failed
    flow_run = state.state_details.flow_run_id
    states = {name: Counter(s) for name, s in flow_tree_states(flow_run).items()}
    docs = {s: result[s]["documents"] for s in ("ingest", "curate", "dedup")}
    return {"wall": wall, "stages": stage_times(flow_run), "states": states, "documents": docs}


def print_run(label: str, report: dict[str, Any]) -> None:
    """One row per stage: seconds and task runs by state."""
    docs = ", ".join(f"{k} {v}" for k, v in report["documents"].items())
    print(f"\n{label}: {report['wall']:.1f} s wall (documents: {docs})")
    for stage in STAGES:
        states = report["states"].get(stage, Counter())
        done, cached = states.get("Completed", 0), states.get("Cached", 0)
        print(f"  {stage:<9}{report['stages'].get(stage, 0):>7.1f} s   {done:>4} computed {cached:>4} cached")
    data = [report["states"].get(s, Counter()) for s in STAGES[:-1]]
    done, total = sum(c.get("Completed", 0) for c in data), sum(sum(c.values()) for c in data)
    print(f"  data stages: {done} of {total} tasks computed ({done / max(1, total):.0%})")


def main() -> None:
    """Three runs of the demo config in one temporary run root."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=int, default=22, help="pages added for the third run (~10%% of 215)")
    parser.add_argument("--server", help="PREFECT_API_URL of a running server (default: a temporary one)")
    args = parser.parse_args()
    pages = sorted((DATA / "html" / "python-3.11-docs").rglob("*.html"))
    if not pages:
        print("skipped: ../shared/data not found")
        return
    from flows.config import load_config

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, server(args.server):
        watched = Path(tmp) / "watched"
        watched.mkdir()
        base = load_config(ROOT / "configs" / "demo.yaml", [f"run_root={tmp}/run"])
        cfg = base.model_copy(update={"inputs": [*base.inputs, str(watched)]})
        first = run(cfg)
        print_run("first run", first)
        print_run("unchanged rerun", run(cfg))
        for page in pages[: args.extra]:
            shutil.copy2(page, watched / f"{page.parent.name}-{page.name}")
        more = run(cfg)
        print_run(f"rerun with {args.extra} new pages", more)
        print(f"\nrerun with new input / first run: {more['wall'] / first['wall']:.0%} of the wall time")


if __name__ == "__main__":
    main()
