"""The train flow on a real Prefect server: trains, caches an unchanged rerun, resumes after an
interruption or a deleted final checkpoint, runs torchrun for several processes, holds a strict GPU slot."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pytest
from conftest import task_runs, task_states
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
)

import flows.train
from flows.train import TrainStage, train_flow
from model import checkpoint
from model.optim import TrainConfig
from storage.layout import write_manifest
from storage.tokens import write_token_shard

VOCAB = 300


def _write_tokens_stage(run_root: Path) -> Path:
    """A run root with a tokens stage of random token shards and its manifest."""
    out = run_root / "tokens" / "t1"
    rng = np.random.default_rng(0)
    shards = []
    for k in range(2):
        files = {}
        for split, n in (("train", 6000), ("val", 1500)):
            name = f"shard-{k}.{split}.arrow"
            tokens = rng.integers(2, VOCAB, n).astype(np.uint16)
            write_token_shard(
                out / name,
                ["d"],
                tokens,
                [0, n],
                tokenizer_hash="h" * 32,
                eos_id=0,
                vocab_size=VOCAB,
                split=split,
            )
            files[split] = name
        shards.append({"source": f"s{k}", "files": files})
    tok = {"path": "tokenizer.json", "hash": "h" * 32, "vocab_size": VOCAB, "eos_id": 0, "pad_id": 1}
    write_manifest(out, {"stage": "tokens", "key": "t1", "tokenizer": tok, "shards": shards, "counts": {}})
    return run_root


@pytest.fixture()
def tokens_stage(tmp_path: Path) -> Path:
    """A run root with a tokens stage."""
    return _write_tokens_stage(tmp_path / "run")


def _stage(batch_size: int = 2, **extra: object) -> TrainStage:
    """A tiny model trained for six steps with evaluation and checkpoints every three."""
    tcfg = TrainConfig(
        max_steps=6,
        warmup_steps=2,
        batch_size=batch_size,
        eval_every=3,
        eval_batches=2,
        checkpoint_every=3,
        log_every=1,
    )
    return TrainStage(preset="tiny", model={"block_size": 32}, train=tcfg, device="cpu", **extra)


def _run(run_root: Path, stage: TrainStage) -> tuple[dict[str, Any], list[str], UUID]:
    """Run the train flow; its result, its task runs' final states and its flow run id."""
    state = train_flow(run_root=str(run_root), config=stage, return_state=True)
    run_id = state.state_details.flow_run_id
    return state.result(), task_states(run_id), run_id


def _progress(run_id: UUID) -> list[float]:
    """The final values of a flow run's progress artifacts."""
    with get_client(sync_client=True) as client:
        flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        return [a.data for a in client.read_artifacts(artifact_filter=flt) if a.type == "progress"]


def test_train_flow_caches_and_retrains_a_deleted_checkpoint(tokens_stage: Path, prefect_api: str) -> None:
    first, states, run_id = _run(tokens_stage, _stage())
    assert states == ["Completed"] and _progress(run_id) == [100.0]
    assert first["step"] == 6 and len(first["train_losses"]) == 6
    assert [s for s, _ in first["val_losses"]] == [3, 6] and first["resumed_from"] is None
    ckpts = Path(first["stage_dir"]) / "checkpoints"
    assert [c.name for c in sorted(ckpts.glob("step-*"))] == ["step-000003", "step-000006"]

    # Unchanged config, shards and code: the task is served from the cache, result and all.
    again, states, _ = _run(tokens_stage, _stage())
    assert states == ["Cached"] and again == first

    # Without its final checkpoint the cache record would point at nothing: train again, from step 3,
    # repeating the lost steps bit for bit (CPU).
    shutil.rmtree(ckpts / "step-000006")
    third, states, _ = _run(tokens_stage, _stage())
    assert states == ["Completed"] and third["resumed_from"].endswith("step-000003")
    assert third["train_losses"] == first["train_losses"] and third["val_losses"] == first["val_losses"]
    assert (ckpts / "step-000006" / "meta.json").is_file()


def test_retry_after_an_interruption_resumes_from_the_checkpoint(
    tokens_stage: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress, seen = flows.train._progress, []

    def interrupted_once(max_steps: int) -> Callable[[dict[str, Any]], None]:
        """The flow's progress callback, which crashes the first attempt at step 4 (after checkpoint 3)."""
        on_log = progress(max_steps)

        def crash(record: dict[str, Any]) -> None:
            on_log(record)
            if record["kind"] == "train" and record["step"] == 4 and not seen:
                seen.append(record)
                raise RuntimeError("interrupted")

        return crash

    monkeypatch.setattr(flows.train, "_progress", interrupted_once)
    monkeypatch.setattr(flows.train.train_task, "retry_delay_seconds", 0)
    summary, states, _ = _run(tokens_stage, _stage())
    assert seen and states == ["Completed"]  # the retry, not a fresh start, completed the task run
    assert summary["resumed_from"].endswith("step-000003") and summary["step"] == 6
    logged = [json.loads(line) for line in (Path(summary["stage_dir"]) / "metrics.jsonl").open()]
    steps = [r["step"] for r in logged if r["kind"] == "train"]
    assert steps == [0, 1, 2, 3, 4, 3, 4, 5]
    # The retried step 4 repeats the interrupted attempt's step 4 exactly.
    assert [r["loss"] for r in logged if r["kind"] == "train" and r["step"] == 4] == [seen[0]["loss"]] * 2
    assert [s for s, _ in summary["train_losses"]] == list(range(6))


def test_a_diverged_run_fails_at_once_and_keeps_good_checkpoints(
    tokens_stage: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retrying a divergence would replay the same batches into the same divergence: it is not retried."""
    monkeypatch.setattr(flows.train.train_task, "retry_delay_seconds", 0)  # a wrong retry costs no time
    tcfg = TrainConfig(max_steps=30, warmup_steps=10, lr=3.0, batch_size=2, checkpoint_every=1, log_every=1)
    stage = TrainStage(preset="tiny", model={"block_size": 32}, train=tcfg, device="cpu")
    state = train_flow(run_root=str(tokens_stage), config=stage, return_state=True)
    assert state.is_failed() and "diverged at step" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert [(r.state.name, r.run_count) for r in runs] == [("Failed", 1)]
    ckpts = next((tokens_stage / "train").glob("*/checkpoints"))
    assert list(ckpts.glob("diverged-step-*")) and checkpoint.latest(ckpts) is not None


@pytest.mark.slow
def test_train_flow_with_two_processes(tmp_path: Path, prefect_api: str) -> None:
    two, states, run_id = _run(_write_tokens_stage(tmp_path / "two"), _stage(nproc_per_node=2))
    assert states == ["Completed"] and _progress(run_id) == [100.0]  # followed rank 0's metrics.jsonl
    assert two["world_size"] == 2 and two["step"] == 6 and [s for s, _ in two["val_losses"]] == [3, 6]
    assert Path(two["checkpoint"]).name == "step-000006"
    assert (Path(two["stage_dir"]) / "_manifest.json").is_file()
    again, states, _ = _run(tmp_path / "two", _stage(nproc_per_node=2))
    assert states == ["Cached"] and again == two
    # One process with the same global batch trains the same model, up to rounding.
    one, _, _ = _run(_write_tokens_stage(tmp_path / "one"), _stage(batch_size=4))
    assert Path(one["stage_dir"]).name == Path(two["stage_dir"]).name  # the same stage key
    for (s1, a), (s2, b) in zip(one["train_losses"], two["train_losses"], strict=True):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-5)


def test_gpu_slot_is_strict(tokens_stage: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    monkeypatch.setattr(flows.train.train_task, "retry_delay_seconds", 0)  # the missing limit fails each try
    stage = _stage(gpu_slot="always", gpu_limit="test-gpu")
    with pytest.raises(Exception, match="test-gpu"):
        train_flow(run_root=str(tokens_stage), config=stage)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="test-gpu", limit=1))
    assert train_flow(run_root=str(tokens_stage), config=stage)["step"] == 6
