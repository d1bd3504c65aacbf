"""The train flow on a real Prefect server: trains, resumes on rerun, holds a strict GPU slot when asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.train import TrainStage, train_flow
from model.optim import TrainConfig
from storage.layout import write_manifest
from storage.tokens import write_token_shard

VOCAB = 300


@pytest.fixture()
def tokens_stage(tmp_path: Path) -> Path:
    """A run root with a tokens stage of random token shards and its manifest."""
    out = tmp_path / "run" / "tokens" / "t1"
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
    return tmp_path / "run"


def _stage(**extra: object) -> TrainStage:
    """A tiny model trained for six steps with evaluation and checkpoints every three."""
    tcfg = TrainConfig(
        max_steps=6,
        warmup_steps=2,
        batch_size=2,
        eval_every=3,
        eval_batches=2,
        checkpoint_every=3,
        log_every=1,
    )
    return TrainStage(preset="tiny", model={"block_size": 32}, train=tcfg, device="cpu", **extra)


def test_train_flow_trains_and_resumes(tokens_stage: Path, prefect_api: str) -> None:
    first = train_flow(run_root=str(tokens_stage), config=_stage())
    assert (
        first["step"] == 6
        and len(first["train_losses"]) == 6
        and [s for s, _ in first["val_losses"]] == [3, 6]
    )
    ckpts = sorted((Path(first["stage_dir"]) / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-000003", "step-000006"]
    # A second run finds the finished checkpoint and resumes there: no step is trained again.
    again = train_flow(run_root=str(tokens_stage), config=_stage())
    assert again["resumed_from"].endswith("step-000006") and again["step"] == 6
    assert again["train_losses"] == first["train_losses"]  # the history comes back from the checkpoint


def test_gpu_slot_is_strict(tokens_stage: Path, prefect_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    stage = _stage(gpu_slot="always", gpu_limit="test-gpu")
    with pytest.raises(Exception, match="test-gpu"):
        train_flow(run_root=str(tokens_stage), config=stage)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="test-gpu", limit=1))
    assert train_flow(run_root=str(tokens_stage), config=stage)["step"] == 6
