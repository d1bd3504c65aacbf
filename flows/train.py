"""The train flow: token shards in, checkpoints, a loss curve and evaluation out (model.train underneath).

One process trains in the task itself; with nproc_per_node (or nnodes) above 1 the task runs torchrun as a
subprocess (model.launch), passes its output to the run logger and follows rank 0's metrics.jsonl for
the progress artifact. Either way a retry resumes from the newest complete checkpoint, and an unchanged
rerun is a cache hit as long as the final checkpoint is still on disk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.concurrency.sync import concurrency
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.progress import ARTIFACT_EVERY_S
from flows.stage_tags import untagged_tasks
from flows.train_report import publish, sample_task
from model import checkpoint
from model.config import PRESETS, GPTConfig
from model.launch import LaunchSpec, launch
from model.optim import TrainConfig
from model.train import TrainingDiverged, train
from storage.cache import SHARD_POLICY, cached_options
from storage.layout import (
    code_version,
    find_stage_dirs,
    read_manifest,
    short_hash,
    stage_dir,
    stage_key,
    write_manifest,
)
from storage.shards import file_fingerprint

STAGE = "train"
CODE_MODULES = (
    "model.config",
    "model.transformer",
    "model.data",
    "model.optim",
    "model.checkpoint",
    "model.distributed",
    "model.metrics",
    "model.malloc",
    "model.train",
    "model.launch",
    "storage.schemas",
    "storage.shards",
    "storage.tokens",
)


class TrainStage(BaseModel):
    """Which model to train on which tokens, how, and on what device."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    preset: str = "tiny"
    """Model preset: tiny (~1M), small (~10M), guide (~28M), base (~125M); see model/config.py."""
    model: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the preset's fields, e.g. {block_size: 256, n_layer: 4}."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimizer, schedule, batch, evaluation and checkpoint settings."""
    device: str | None = None
    """cuda, cpu or None (CUDA when present)."""
    gpu_slot: Literal["auto", "always", "never"] = "auto"
    """Hold nproc_per_node slots of the global concurrency limit `gpu_limit` while training: auto = on
    CUDA only."""
    gpu_limit: str = "gpu"
    """Name of the Prefect global concurrency limit, one slot per GPU of the machine (create it:
    `prefect gcl create gpu --limit 8`)."""
    nproc_per_node: int = Field(1, ge=1)
    """Training processes on this machine, one per GPU; above 1 the task runs them with torchrun (DDP).
    train.batch_size is per process, so the global batch is nproc_per_node · nnodes · batch_size."""
    nnodes: int = Field(1, ge=1)
    """Machines training together; every one runs this flow with the same config, its checkpoints and
    token shards on a filesystem they all share."""
    rdzv_endpoint: str | None = None
    """host:port where the nodes meet (torchrun's c10d rendezvous, hosted by the node at that address);
    required when nnodes > 1."""
    rdzv_id: str | None = None
    """Rendezvous id, the same on every node; None: the train stage's key."""
    samples: int = Field(2, ge=0)
    """Texts sampled from the final checkpoint for the run's summary (seeds 0, 1, ...); 0 skips sampling."""
    sample_prompt: str = ""
    """Prompt the samples continue; empty starts a new document."""
    sample_tokens: int = Field(64, gt=0)
    """New tokens per sample."""
    sample_temperature: float = Field(0.8, gt=0)
    """Sampling temperature (top-p 0.95)."""

    @model_validator(mode="after")
    def _check_nodes(self) -> TrainStage:
        """Several nodes cannot meet without an endpoint."""
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(f"nnodes={self.nnodes} needs rdzv_endpoint (host:port of one of the nodes)")
        return self

    @property
    def world_size(self) -> int:
        """Training processes over all nodes."""
        return self.nproc_per_node * self.nnodes

    def model_for(self, vocab_size: int) -> GPTConfig:
        """The model config for a tokenizer's vocabulary."""
        if self.preset not in PRESETS:
            raise ValueError(f"train.preset {self.preset!r} is not one of {sorted(PRESETS)}")
        return GPTConfig.preset(self.preset, vocab_size, **self.model)


def _tokens_stage(run_root: str, tokens_dir: str | None) -> Path:
    """The tokens stage to train on: the one given, or the newest under the run root."""
    if tokens_dir:
        return Path(tokens_dir)
    dirs = find_stage_dirs(run_root, "tokens")
    if not dirs:
        raise FileNotFoundError(f"no complete tokens stage under {run_root}: run `crucible tokenize` first")
    return dirs[0]


@contextlib.contextmanager
def _gpu_slot(stage: TrainStage) -> Iterator[None]:
    """Hold a GPU slot per local process when configured; strict, so a missing limit is an error."""
    on_cuda = (stage.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if stage.gpu_slot == "always" or (stage.gpu_slot == "auto" and on_cuda):
        with concurrency(stage.gpu_limit, occupy=stage.nproc_per_node, strict=True):
            yield
    else:
        yield


def _progress(max_steps: int, log_records: bool = True) -> Any:
    """An on_log callback that moves a progress artifact and logs losses (unless the output already has)."""
    artifact = create_progress_artifact(progress=0.0, key="train-progress", description="Training progress")
    logger = get_run_logger()
    updated = [time.monotonic()]

    def on_log(record: dict[str, Any]) -> None:
        last = record["kind"] == "train" and record["step"] + 1 == max_steps
        # A blocking API call: at most one a second (and the last), never one per logged step.
        if record["kind"] == "train" and (last or time.monotonic() - updated[0] >= ARTIFACT_EVERY_S):
            update_progress_artifact(artifact, progress=100.0 * (record["step"] + 1) / max_steps)
            updated[0] = time.monotonic()
        if not log_records:
            return
        if record["kind"] == "train":
            logger.info("step %d loss %.4f lr %.2e", record["step"], record["loss"], record["lr"])
        elif record["kind"] == "eval":
            logger.info("step %d val loss %.4f", record["step"], record["val_loss"])

    return on_log


def _torchrun(
    cfg: GPTConfig, stage: TrainStage, train_shards: list[str], val_shards: list[str], out_dir: str, tok: str
) -> dict[str, Any]:
    """Train under torchrun in a subprocess, its output into the run log, rank 0's records into progress."""
    spec = LaunchSpec(
        model=cfg,
        train=stage.train,
        train_shards=train_shards,
        val_shards=val_shards,
        out_dir=out_dir,
        tokenizer_hash=tok,
        device=stage.device,
    )
    logger = get_run_logger()
    return launch(
        spec,
        stage.nproc_per_node,
        stage.nnodes,
        stage.rdzv_endpoint,
        stage.rdzv_id or Path(out_dir).name,
        on_line=logger.info,  # rank 0's output already holds every record
        on_record=_progress(stage.train.max_steps, log_records=False),
    )


def _retry_unless_diverged(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a crash or an interruption (it resumes), never a divergence (it would only diverge again)."""
    return not isinstance(state.data, TrainingDiverged)


@task(
    name="train-model",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_unless_diverged,
    cache_policy=SHARD_POLICY,
    persist_result=True,
    task_run_name="train {out_dir}",
)
def train_task(
    cfg: GPTConfig, stage: TrainStage, train_shards: list[str], val_shards: list[str], out_dir: str, tok: str
) -> dict[str, Any]:
    """Train; a retry trains again, which resumes from the newest complete checkpoint."""
    with _gpu_slot(stage):
        if stage.world_size > 1:
            return _torchrun(cfg, stage, train_shards, val_shards, out_dir, tok)
        return train(
            cfg,
            stage.train,
            [Path(p) for p in train_shards],
            [Path(p) for p in val_shards],
            Path(out_dir),
            tokenizer_hash=tok,
            device=stage.device,
            on_log=_progress(stage.train.max_steps),
        )


@flow(name="train", flow_run_name="train {run_root}")
@untagged_tasks
def train_flow(
    run_root: str, config: TrainStage | None = None, tokens_dir: str | None = None
) -> dict[str, Any]:
    """Train the configured model on the newest token shards; checkpoints under train/<key>/checkpoints."""
    stage = config or TrainStage()
    tokens = _tokens_stage(run_root, tokens_dir)
    manifest = read_manifest(tokens) or {}
    tok = manifest["tokenizer"]
    cfg = stage.model_for(tok["vocab_size"])
    shards = {s: [str(tokens / e["files"][s]) for e in manifest["shards"]] for s in ("train", "val")}
    # Keyed by the global batch, not by its split: 2 processes of batch B read the same windows as 1 of
    # batch 2B (and train alike up to rounding), so each resumes the other's checkpoints.
    view = {
        "model": cfg.model_dump(mode="json"),
        "train": stage.train.model_dump(mode="json", exclude={"batch_size"}),
        "global_batch_size": stage.train.batch_size * stage.world_size,
    }
    # Keyed by the token shards' content too: an incremental run adds shards to the same tokens stage, and
    # the model trained on the larger corpus is a new one, not the old run's final checkpoint.
    data = [[e.get("source_fingerprint"), e["files"], e.get("tokens")] for e in manifest["shards"]]
    upstream = f"{tokens.name}-{short_hash(data)}"
    out = stage_dir(run_root, STAGE, stage_key(STAGE, view, upstream, code_version(*CODE_MODULES)))
    # The inputs carry the stage directory (config, tokens stage and code version) and the shard paths;
    # a cache hit without the final checkpoint on disk would claim a model that is gone, so it retrains.
    final = checkpoint.step_dir(Path("checkpoints"), stage.train.max_steps) / checkpoint.META
    task_obj = cached_options(train_task, f"train {out}", run_root, out, str(final))
    summary = task_obj(cfg, stage, shards["train"], shards["val"], str(out), tok["hash"])
    samples = _samples(stage, summary, tokens / "tokenizer.json", run_root, out)
    publish(summary, stage.preset, out, samples)
    manifest = {
        "stage": STAGE,
        "tokens": str(tokens),
        "tokenizer": tok,
        "model": cfg.model_dump(mode="json"),
        "train": stage.train.model_dump(mode="json"),
        **{
            k: summary[k]
            for k in ("step", "checkpoint", "params", "flops_per_token", "tokens_per_s", "val_losses")
        },
        "samples": samples,
    }
    write_manifest(out, manifest)
    return {"stage_dir": str(out), "tokenizer": tok["hash"], **summary, "samples": samples}


def _samples(
    stage: TrainStage, summary: dict[str, Any], tokenizer: Path, run_root: str, out: Path
) -> list[str]:
    """Samples from the final checkpoint (cached on its content), none when sampling is off."""
    if not stage.samples or not summary["checkpoint"] or not tokenizer.is_file():
        return []
    ckpt = Path(summary["checkpoint"])
    runner = cached_options(sample_task, "sample", run_root, out)
    return runner(
        str(ckpt),
        file_fingerprint(ckpt / checkpoint.META),
        str(tokenizer),
        stage.sample_prompt,
        stage.samples,
        stage.sample_tokens,
        stage.sample_temperature,
    )


def tokenizer_of(train_stage: Path) -> Path:
    """The tokenizer.json a train stage was trained with (kept in its tokens stage)."""
    manifest = read_manifest(train_stage) or {}
    return Path(manifest["tokens"]) / "tokenizer.json"
