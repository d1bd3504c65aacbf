"""SIGKILL the pipeline's process in the middle of each stage; the rerun finishes with the same outputs.

One run root is run without interruption; a second is killed (the whole process group, worker processes
included) once a stage has written some but not all of its files, then rerun, stage after stage. Every
shard, sidecar and token file must then equal the uninterrupted run's byte for byte, and the final
checkpoint's weights must be identical (training resumed from its checkpoint instead of starting over).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import docs_pipeline

from model.checkpoint import load
from storage.layout import find_stage_dirs, read_manifest

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def _config(run_root: Path, inputs: list[str]) -> dict:
    """A small pipeline: real documentation pages, a tiny tokenizer and 40 training steps."""
    train = {
        "max_steps": 40,
        "warmup_steps": 4,
        "batch_size": 4,
        "eval_every": 20,
        "eval_batches": 2,
        "checkpoint_every": 10,
        "log_every": 10,
    }
    return docs_pipeline(run_root, inputs, 8, train)


def _start(config: Path, api: str, log: Path) -> subprocess.Popen:
    """`crucible run CONFIG` in its own process group against the session's server, stderr to `log`."""
    env = {**os.environ, "PREFECT_API_URL": api}
    with log.open("ab") as err:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )


def _incomplete(run_root: Path, stage: str, pattern: str) -> Callable[[], bool]:
    """True once some stage directory holds a file matching `pattern` but no manifest yet."""

    def check() -> bool:
        for d in (run_root / stage).glob("*"):
            if not (d / "_manifest.json").exists() and any(d.glob(pattern)):
                return True
        return False

    return check


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 240) -> None:
    """SIGKILL the process group as soon as `ready()` holds; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill point: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("the kill point was never reached")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _outputs(run_root: Path) -> dict[str, str]:
    """Digest of every file the newest complete stage directories' manifests list (they also hold paths)."""
    out = {}
    for stage in ("ingest", "curate", "dedup", "tokens"):
        newest = find_stage_dirs(run_root, stage)[0]
        for entry in read_manifest(newest)["shards"]:
            names = entry["files"].values() if stage == "tokens" else (entry["path"], entry["drops_path"])
            for name in names:
                out[f"{stage}/{name}"] = hashlib.sha256((newest / name).read_bytes()).hexdigest()
        if stage == "tokens":  # the tokenizer the shards were encoded with, trained in the killed run too
            tokenizer = (newest / "tokenizer.json").read_bytes()
            out["tokens/tokenizer.json"] = hashlib.sha256(tokenizer).hexdigest()
    return out


def _final_state(run_root: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The final checkpoint's model weights and the train stage's metric records."""
    train = find_stage_dirs(run_root, "train")[0]
    state = load(Path(read_manifest(train)["checkpoint"]))
    records = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    return state["model"], records


def test_killed_stages_resume_to_identical_outputs(
    shared_data: Path, tmp_path: Path, prefect_api: str
) -> None:
    # 40 real pages: enough shards that every stage can be caught half done, few enough for CI.
    pages = tmp_path / "pages"
    for page in sorted((shared_data / "html" / "python-3.11-docs").rglob("*.html"))[:40]:
        (pages / page.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(page, pages / page.parent.name / page.name)
    inputs = [str(pages)]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for root in (reference, killed):
        root.mkdir()
        (root / "config.yaml").write_text(yaml.safe_dump(_config(root, inputs)))

    log = tmp_path / "reference.log"
    done = _start(reference / "config.yaml", prefect_api, log)
    assert done.wait(timeout=600) == 0, log.read_text()[-3000:]
    # What `crucible run` tells people at the end: where each stage wrote, the checkpoint, samples.
    report = log.read_text()
    assert "\ncheckpoint: " + str(reference / "train") in report and "\nsample 1:\n" in report

    kill_points = [
        ("ingest", _incomplete(killed, "ingest", "shard-*.parquet")),
        ("curate", _incomplete(killed, "curate-scores", "*.scores.parquet")),
        ("dedup", _incomplete(killed, "dedup", "*.dedup.parquet")),
        ("tokenize", _incomplete(killed, "tokens", "*.arrow")),
        ("train", lambda: any((killed / "train").glob("*/checkpoints/step-000020/meta.json"))),
    ]
    for stage, ready in kill_points:
        log = tmp_path / f"killed-{stage}.log"
        _kill_when(_start(killed / "config.yaml", prefect_api, log), ready, log)
        assert not find_stage_dirs(killed, {"tokenize": "tokens"}.get(stage, stage)), f"{stage} completed"
    log = tmp_path / "rerun.log"
    rerun = _start(killed / "config.yaml", prefect_api, log)
    assert rerun.wait(timeout=600) == 0, log.read_text()[-3000:]

    assert _outputs(killed) == _outputs(reference)
    (ours, log), (theirs, _) = _final_state(killed), _final_state(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # Training resumed from its step-20 checkpoint: step 0 was trained once, steps after 20 twice at most.
    steps = [r["step"] for r in log if r["kind"] == "train"]
    assert steps.count(0) == 1 and steps[-1] == 39
    # No document lost or duplicated: the counts per source and per reason equal the reference's.
    for stage in ("ingest", "curate", "dedup"):
        a, b = (read_manifest(find_stage_dirs(r, stage)[0])["counts"] for r in (killed, reference))
        assert a == b
