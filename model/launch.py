"""Run training from a JSON spec, alone or as torchrun's workers: `python -m model.launch SPEC.json`.

    torchrun --standalone --nproc-per-node 8 -m model.launch spec.json

The spec (`LaunchSpec`) names the model and train configs, the token shards, the output directory, the
tokenizer hash and the device. Every process trains (model.train); rank 0 writes the summary JSON
atomically to `summary_path`, and on divergence a `{"diverged": {"step", "reason"}}` record there
instead. `launch` is the other side: it starts torchrun as a subprocess, passes on its output and rank
0's metrics records as they appear, and returns the summary. No Prefect here; flows/train.py wraps it.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from model import distributed
from model.config import GPTConfig
from model.metrics import METRICS, MetricsFollower
from model.optim import TrainConfig
from model.train import TrainingDiverged, resolve_device, train
from storage.shards import atomic_write

EXIT_DIVERGED = 3
# The folder holding the `model` package, put on the workers' PYTHONPATH so they import this code.
ROOT = Path(__file__).resolve().parents[1]


class LaunchSpec(BaseModel):
    """Everything one training run needs, as JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model: GPTConfig
    """The transformer's config."""
    train: TrainConfig
    """Optimizer, schedule, batch (per process), evaluation and checkpoint settings."""
    train_shards: list[str]
    """Training token shards (paths every node can read)."""
    val_shards: list[str] = Field(default_factory=list)
    """Validation token shards; none: no validation loss."""
    out_dir: str
    """Checkpoints and metrics.jsonl go here; on a filesystem every node shares."""
    tokenizer_hash: str | None = None
    """Refuse token shards (and checkpoints) of another tokenizer."""
    device: str | None = None
    """cuda, cpu or None (CUDA when present); under torchrun `cuda` means this rank's GPU."""
    summary_path: str | None = None
    """Where rank 0 writes the summary JSON; None: out_dir/summary.json."""

    def summary_file(self) -> Path:
        """The summary's path."""
        return Path(self.summary_path or Path(self.out_dir) / "summary.json")


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Write `record` atomically (a reader never sees half a summary)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def run(spec: LaunchSpec) -> dict[str, Any]:
    """Train as this process's rank; rank 0 writes the summary (or the divergence) before anyone exits."""
    with distributed.session(resolve_device(spec.device)) as d:
        shards = [Path(p) for p in spec.train_shards], [Path(p) for p in spec.val_shards]
        out_dir = Path(spec.out_dir)
        try:
            summary = train(spec.model, spec.train, *shards, out_dir, spec.tokenizer_hash, spec.device)
        except TrainingDiverged as err:
            # Every rank diverges at the same step (the guards see all-reduced values): rank 0 records
            # it, and the barrier keeps torchrun from killing rank 0 when another rank exits first.
            if d.is_main:
                _write_json(spec.summary_file(), {"diverged": {"step": err.step, "reason": err.reason}})
            distributed.barrier(d)
            raise
        if d.is_main:
            _write_json(spec.summary_file(), summary)
        # On several nodes, no node's torchrun may report success before the summary exists.
        distributed.barrier(d)
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m model.launch SPEC.json`: 0 when trained, EXIT_DIVERGED when the loss guard stopped it."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m model.launch SPEC.json", file=sys.stderr)
        return 2
    rank = distributed.env_ranks()[0]
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(asctime)s %(name)s: %(message)s")
    spec = LaunchSpec.model_validate_json(Path(args[0]).read_text())
    try:
        run(spec)
    except TrainingDiverged as err:
        logging.getLogger(__name__).error("%s", err)
        return EXIT_DIVERGED
    return 0


def torchrun_command(
    spec_path: Path, nproc_per_node: int, nnodes: int = 1, rdzv_endpoint: str | None = None, rdzv_id: str = ""
) -> list[str]:
    """The torchrun command line that runs this module on `spec_path` (c10d rendezvous on several nodes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1:
        cmd.append("--standalone")  # a local rendezvous on a free port
    else:
        if not rdzv_endpoint:
            raise ValueError(f"training on {nnodes} nodes needs rdzv_endpoint (host:port on one of them)")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
        cmd.append(f"--rdzv-id={rdzv_id or 'crucible'}")
    return [*cmd, "-m", "model.launch", str(spec_path)]


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Move a subprocess's output lines into a queue; None marks the end."""
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def run_subprocess(
    cmd: list[str],
    metrics_path: Path,
    on_line: Callable[[str], None],
    on_record: Callable[[dict[str, Any]], None],
    timeout_s: float | None = None,
    poll_s: float = 0.5,
) -> tuple[int, list[str]]:
    """Run `cmd`, calling back on each output line and each new metrics record; (exit code, last lines).

    The callbacks run on the calling thread (a reader thread only queues the lines), so they may use
    thread-bound things such as an orchestrator's run context. Past `timeout_s` the run is stopped
    and TimeoutError raised.
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    follower, tail = MetricsFollower(metrics_path), collections.deque(maxlen=40)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s if timeout_s else math.inf
    try:
        while True:
            if time.monotonic() > deadline:
                last = "\n".join(tail)
                raise TimeoutError(f"training still running after {timeout_s} s; its last lines:\n{last}")
            try:
                line = lines.get(timeout=poll_s)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                tail.append(line)
                on_line(line)
            for record in follower.read():
                on_record(record)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (e.g. the task was cancelled): torchrun stops its workers
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    for record in follower.read():
        on_record(record)
    return code, list(tail)


def launch(
    spec: LaunchSpec,
    nproc_per_node: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "",
    on_line: Callable[[str], None] = print,
    on_record: Callable[[dict[str, Any]], None] = lambda record: None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Train under torchrun in a subprocess; rank 0's summary, or TrainingDiverged, or RuntimeError."""
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path, summary_path = out / "launch.json", spec.summary_file()
    _write_json(spec_path, spec.model_dump(mode="json"))
    summary_path.unlink(missing_ok=True)  # a summary left by an earlier run must not pass for this one's
    cmd = torchrun_command(spec_path, nproc_per_node, nnodes, rdzv_endpoint, rdzv_id)
    code, tail = run_subprocess(cmd, out / METRICS, on_line, on_record, timeout_s)
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary is not None and "diverged" in summary:
        raise TrainingDiverged(summary["diverged"]["step"], summary["diverged"]["reason"])
    if code != 0 or summary is None:
        raise RuntimeError(f"torchrun exited with {code} and no summary; its last lines:\n" + "\n".join(tail))
    return summary


if __name__ == "__main__":
    sys.exit(main())
