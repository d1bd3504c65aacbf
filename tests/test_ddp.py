"""Data-parallel training: the loader's rank slices, and real `torchrun --nproc-per-node 2` runs on gloo.

Two processes of micro-batch B must train like one process of micro-batch 2B: the same windows, the same
averaged gradients. The losses agree to ~1e-7 relative, not bit for bit: one process reduces the loss
and the weight gradients over 2B rows in one pass, while DDP reduces over B rows per rank and then
averages the two ranks' gradients, and float additions in another order round differently. Resuming
the same 2-process run repeats it exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_train import HASH, _shard, quick, tiny

from flows.train import TrainStage
from model import checkpoint
from model.data import TokenLoader
from model.launch import LaunchSpec, launch, torchrun_command
from model.metrics import MetricsFollower
from model.train import TrainingDiverged, train

TIMEOUT_S = 180  # a hung collective fails the test instead of the whole suite
Shards = tuple[list[Path], list[Path]]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Shards:
    """Two train shards and one validation shard of random tokens."""
    data = tmp_path_factory.mktemp("data")
    train_shards = [_shard(data / f"s{k}.train.arrow", 10_000, k, "train") for k in range(2)]
    return train_shards, [_shard(data / "s0.val.arrow", 3_000, 9, "val")]


def _spec(out: Path, shards: Shards, batch_size: int, dropout: float = 0.0, **train: Any) -> LaunchSpec:
    """Eight steps of two accumulated micro-batches (global batch 4), evaluation and checkpoints every 4."""
    fields = {"max_steps": 8, "checkpoint_every": 4, "eval_every": 4, "tokens_per_step": 256, **train}
    return LaunchSpec(
        model=tiny(dropout=dropout),
        train=quick(batch_size=batch_size, **fields),
        train_shards=[str(p) for p in shards[0]],
        val_shards=[str(p) for p in shards[1]],
        out_dir=str(out),
        tokenizer_hash=HASH,
        device="cpu",
    )


def _torchrun(spec: LaunchSpec, records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train `spec` with torchrun on two processes; rank 0's summary."""
    sink = records.append if records is not None else lambda record: None
    return launch(spec, 2, on_line=lambda line: None, on_record=sink, timeout_s=TIMEOUT_S)


def _metrics(out: Path, kind: str = "train") -> list[dict[str, Any]]:
    """The records of one kind in a run's metrics.jsonl."""
    return [r for line in (out / "metrics.jsonl").open() if (r := json.loads(line))["kind"] == kind]


def _copy_without_final(src: Path, dst: Path, final: int = 8) -> Path:
    """A copy of a finished run directory as a run interrupted after its second-to-last checkpoint."""
    shutil.copytree(src, dst)
    shutil.rmtree(checkpoint.step_dir(dst / "checkpoints", final))
    return dst


@pytest.fixture(scope="module")
def two_procs(shards: Shards, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    """One torchrun run on two processes of micro-batch 2: its directory, summary and followed records."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    records: list[dict[str, Any]] = []
    return out, _torchrun(_spec(out, shards, batch_size=2), records), records


# --- the loader's slices of the global batch (fast) ---------------------------------------------------


def test_ranks_read_disjoint_slices_of_the_single_process_batches(shards: Shards) -> None:
    one = TokenLoader(shards[0], 32, 6, seed=1)
    ranks = [TokenLoader(shards[0], 32, 2, seed=1, rank=r, world_size=3) for r in range(3)]
    batches = one.windows_per_epoch // 6 + 3  # into the second epoch
    assert one.windows_per_epoch % 6  # so one batch straddles the epoch boundary
    for _ in range(batches):
        x, y = one.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)

    # Every rank holds the single process's position: one state resumes them all.
    def position(loader: TokenLoader) -> dict[str, Any]:
        return {k: v for k, v in loader.state_dict().items() if k not in ("batch_size", "world_size")}

    assert one.epoch == 1 and all(position(loader) == position(one) for loader in ranks)

    # A state resumes any split of the same global batch, and no other.
    state, expected = ranks[1].state_dict(), one.next_batch()
    halves = [TokenLoader(shards[0], 32, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    for loader in halves:
        loader.load_state_dict(state)
    assert torch.equal(torch.cat([loader.next_batch()[0] for loader in halves]), expected[0])
    with pytest.raises(ValueError, match="global_batch_size"):
        TokenLoader(shards[0], 32, 2, seed=1, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="rank"):
        TokenLoader(shards[0], 32, 2, rank=2, world_size=2)


def test_launch_commands_and_node_settings(tmp_path: Path) -> None:
    one_node = torchrun_command(tmp_path / "spec.json", 4)
    assert one_node[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=4",
        "--standalone",
        "-m",
        "model.launch",
        str(tmp_path / "spec.json"),
    ]
    nodes = torchrun_command(tmp_path / "spec.json", 8, nnodes=2, rdzv_endpoint="node0:29400", rdzv_id="k")
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=k"} <= set(nodes)
    assert "--standalone" not in nodes
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command(tmp_path / "spec.json", 8, nnodes=2)
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        TrainStage(nnodes=2)
    assert TrainStage(nproc_per_node=4, nnodes=2, rdzv_endpoint="node0:29400").world_size == 8


def test_metrics_follower_returns_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 0}\n')
    follower = MetricsFollower(path)  # starts at the end: an earlier run's records are not this run's
    assert follower.read() == []
    with open(path, "a") as f:
        f.write('{"kind": "train", "step": 1}\n{"kind": "ev')
    assert follower.read() == [{"kind": "train", "step": 1}]
    with open(path, "a") as f:
        f.write('al", "step": 2}\n')
    assert follower.read() == [{"kind": "eval", "step": 2}] and follower.read() == []
    assert MetricsFollower(tmp_path / "later.jsonl").read() == []


# --- torchrun on two processes (slow) -----------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(
    two_procs: tuple[Path, dict, list[dict]], shards: Shards, tmp_path: Path
) -> None:
    out, two, followed = two_procs
    one = train(tiny(), _spec(tmp_path, shards, batch_size=4).train, *shards, tmp_path, HASH, "cpu")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["grad_accum_steps"] == one["grad_accum_steps"] == 2  # accumulation under DDP too
    for (s2, a), (s1, b) in zip(two["train_losses"], one["train_losses"], strict=True):
        assert s2 == s1 and a == pytest.approx(b, rel=1e-5, abs=0)
    for (s2, a), (s1, b) in zip(two["val_losses"], one["val_losses"], strict=True):
        assert s2 == s1 and a == pytest.approx(b, rel=1e-5, abs=0)
    # Clipping sees the DDP-averaged gradients: the same norm as the single process's.
    norms = [[r["grad_norm"] for r in _metrics(d)] for d in (out, tmp_path)]
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)
    final_two, final_one = (checkpoint.load(Path(s["checkpoint"]))["model"] for s in (two, one))
    for key, value in final_one.items():
        torch.testing.assert_close(final_two[key], value, rtol=0, atol=1e-5, msg=key)

    # Only rank 0 wrote: one record per step in metrics.jsonl, one checkpoint per save, and the launcher
    # followed those records as they were written.
    assert [r["step"] for r in _metrics(out)] == list(range(8)) and followed == [
        json.loads(line) for line in (out / "metrics.jsonl").open()
    ]
    assert [s for s, _ in checkpoint.complete(out / "checkpoints")] == [4, 8]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000008"]


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(
    two_procs: tuple[Path, dict, list[dict]], shards: Shards, tmp_path: Path
) -> None:
    out, two, _ = two_procs
    copy = _copy_without_final(out, tmp_path / "run")
    one = train(tiny(), _spec(copy, shards, batch_size=4).train, *shards, copy, HASH, "cpu")
    assert one["resumed_from"].endswith("step-000004") and one["train_losses"][:4] == two["train_losses"][:4]
    for (s1, a), (s2, b) in zip(one["train_losses"], two["train_losses"], strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-5, abs=0)


@pytest.mark.slow
def test_resumed_two_process_run_repeats_the_uninterrupted_one_exactly(
    shards: Shards, tmp_path: Path
) -> None:
    # With dropout, so each rank's own RNG stream must be saved and restored as well.
    full = _torchrun(_spec(tmp_path / "full", shards, batch_size=2, dropout=0.1))
    state = checkpoint.load(Path(full["checkpoint"]))
    ranks = state["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # distinct dropout
    assert state["loader"]["world_size"] == 2 and state["loader"]["global_batch_size"] == 4

    copy = _copy_without_final(tmp_path / "full", tmp_path / "resumed")
    resumed = _torchrun(_spec(copy, shards, batch_size=2, dropout=0.1))
    assert resumed["resumed_from"].endswith("step-000004") and full["resumed_from"] is None
    assert resumed["train_losses"] == full["train_losses"] and resumed["val_losses"] == full["val_losses"]
    final_full, final_resumed = (checkpoint.load(Path(s["checkpoint"]))["model"] for s in (full, resumed))
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
    steps = [r["step"] for r in _metrics(copy)]
    assert steps == [*range(8), *range(4, 8)]  # the copied log, then the resumed steps (rank 0 only)


@pytest.mark.slow
def test_divergence_stops_every_rank_and_keeps_good_checkpoints(shards: Shards, tmp_path: Path) -> None:
    spec = _spec(tmp_path, shards, batch_size=2, lr=3.0, warmup_steps=10, max_steps=30, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="diverged at step") as err:
        _torchrun(spec)
    assert json.loads((tmp_path / "summary.json").read_text())["diverged"]["step"] == err.value.step
    steps = [step for step, _ in checkpoint.complete(tmp_path / "checkpoints")]
    assert steps and max(steps) < err.value.step  # the bad step's weights were set aside by rank 0
    weights = checkpoint.load(checkpoint.latest(tmp_path / "checkpoints"))["model"].values()
    assert all(bool(np.isfinite(t.numpy()).all()) for t in weights)
