"""The training loop: plain PyTorch, resumable bit for bit on CPU, stopped by a loss guard.

`train` reads top to bottom: build the model, optimizer and loaders, resume from the newest complete
checkpoint if there is one, then per step set the learning rate, accumulate micro-batches, check the
loss, clip, update, and now and then log, evaluate and checkpoint. Everything else is a small helper.

A "step" is the number of optimizer updates applied to the weights a number describes: the training
loss logged at step s was measured on the weights after s updates, while validation losses and
checkpoints taken after update s carry step s + 1. Records go to `out_dir/metrics.jsonl` (after a
resume, steps past the checkpoint appear again; the later line wins) and to `on_log`.

Under torchrun every process calls `train` and they train one model data-parallel (model.distributed):
each rank reads its own slice of every global batch, DDP averages the gradients, losses are averaged
over ranks before they are logged or guarded (so every rank stops at the same step), and only rank 0
writes metrics and checkpoints. N ranks of micro-batch B train like one process of micro-batch N·B.
On CPU, glibc's malloc keeps freed tensor memory for the next step instead of unmapping it (model.malloc).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model import checkpoint, distributed
from model.config import GPTConfig, flops_per_token, param_count
from model.data import TokenLoader, TooFewTokens
from model.malloc import reuse_freed_memory
from model.metrics import METRICS, MetricsLog, Throughput
from model.optim import TrainConfig, lr_at, make_optimizer, set_lr
from model.transformer import Transformer

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peak FLOP/s per GPU, from the vendors' datasheets, matched as a whole word of the
# device name (so "L40S" is not an "L4" and "A10G" not an "A10"). MFU is reported against it even for
# float32 runs; set CRUCIBLE_PEAK_FLOPS (e.g. 312e12) for another GPU or precision. Unknown GPUs and CPUs
# report none.
PEAK_FLOPS: dict[str, float] = {
    "H100": 989e12,  # SXM; the PCIe card peaks at 756e12
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}
PEAK_FLOPS_ENV = "CRUCIBLE_PEAK_FLOPS"


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf or exploded at `step` (measured on the weights after `step`
    updates); those weights are never left as the newest checkpoint."""

    def __init__(self, step: int, reason: str) -> None:
        """Name the step in the message and keep it as `step`."""
        super().__init__(f"training diverged at step {step}: {reason}")
        self.step, self.reason = step, reason

    def __reduce__(self) -> tuple[type[TrainingDiverged], tuple[int, str]]:
        """Rebuild from (step, reason), so the error survives pickling (e.g. by an orchestrator)."""
        return type(self), (self.step, self.reason)


@dataclass
class RunState:
    """What the loop carries between steps and across a resume, besides model, optimizer and loader."""

    step: int = 0
    best_loss: float = math.inf
    train_losses: list[list[float]] = field(default_factory=list)
    val_losses: list[list[float]] = field(default_factory=list)


def resolve_device(device: str | None) -> torch.device:
    """The requested device, else CUDA when available, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def precision(device: torch.device, dtype: str) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA when asked for; float32 everywhere else."""
    if device.type == "cuda" and dtype == "bfloat16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_flops(device: torch.device) -> float | None:
    """The device's peak FLOP/s for MFU: $CRUCIBLE_PEAK_FLOPS, else the table; None on CPU or unknown."""
    if device.type != "cuda":
        return None
    if os.environ.get(PEAK_FLOPS_ENV):
        return float(os.environ[PEAK_FLOPS_ENV])
    return peak_flops_of(torch.cuda.get_device_name(device))


def peak_flops_of(name: str) -> float | None:
    """The table's peak FLOP/s for a CUDA device name, or None for a GPU it does not list."""
    return next((v for k, v in PEAK_FLOPS.items() if re.search(rf"\b{re.escape(k)}\b", name)), None)


def mfu(tokens_per_s: float, cfg: GPTConfig, peak: float | None, world_size: int = 1) -> float | None:
    """Model FLOPs utilization: training FLOP/s achieved over the peak of every device (None without one)."""
    return tokens_per_s * flops_per_token(cfg) / (peak * world_size) if peak else None


def accumulate(
    model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], accum: int, device: torch.device, dtype: str
) -> float:
    """Forward and backward `accum` micro-batches into the gradients; returns their mean loss."""
    total = torch.zeros((), device=device)
    for i in range(accum):
        x, y = next(batches)
        # Under DDP the gradients are all-reduced once, in the last micro-batch's backward pass.
        with distributed.no_sync(model, last=i == accum - 1):
            with precision(device, dtype):
                _, loss = model(x.to(device), y.to(device))
            # Scaling by 1/accum makes the summed gradients those of the mean loss over all micro-batches.
            (loss / accum).backward()
        total += loss.detach()
    return (total / accum).item()


def clip_grads(model: nn.Module, grad_clip: float) -> float:
    """Clip the global gradient norm to `grad_clip` (0: no clipping); returns the norm before clipping.

    Under DDP it runs after the all-reduce, on gradients identical on every rank, so all ranks agree.
    """
    max_norm = grad_clip if grad_clip > 0 else math.inf
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()


def check_loss(step: int, loss: float, best: float, tcfg: TrainConfig) -> None:
    """Raise TrainingDiverged on a NaN/inf loss, or on one above max_loss_ratio × the best so far."""
    if not math.isfinite(loss):
        raise TrainingDiverged(step, f"loss is {loss}")
    # Warmup included: a rising learning rate is where a loss explodes first, and every checkpoint
    # taken while the guard looked away would hold exploded weights.
    exploded = tcfg.max_loss_ratio and loss > tcfg.max_loss_ratio * best
    if exploded:
        raise TrainingDiverged(
            step, f"loss {loss:.4g} is above {tcfg.max_loss_ratio:g} × the lowest so far ({best:.4g})"
        )


def check_grad_norm(step: int, norm: float) -> None:
    """Raise TrainingDiverged before a NaN/inf gradient can reach the weights."""
    if not math.isfinite(norm):
        raise TrainingDiverged(step, f"gradient norm is {norm}")


@torch.no_grad()
def evaluate(model: nn.Module, loader: TokenLoader, batches: int, device: torch.device, dtype: str) -> float:
    """Mean loss over the next `batches` batches of `loader`, in eval mode (no dropout)."""
    model.eval()
    try:
        total = torch.zeros((), device=device)
        for _ in range(batches):
            x, y = loader.next_batch()
            with precision(device, dtype):
                total += model(x.to(device), y.to(device))[1]
        return (total / batches).item()
    finally:
        model.train()


def _due(done: int, every: int, max_steps: int) -> bool:
    """Whether an every-`every`-steps action falls after `done` steps (always after the last)."""
    return done == max_steps or (every > 0 and done % every == 0)


def _state(
    raw: Transformer,
    optimizer: torch.optim.Optimizer,
    loader: TokenLoader,
    run: RunState,
    tcfg: TrainConfig,
    tokenizer_hash: str | None,
) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly, all weights_only-loadable."""
    return {
        "step": run.step,
        "model": checkpoint.model_state(raw),
        "optimizer": optimizer.state_dict(),
        "loader": loader.state_dict(),
        "rng": checkpoint.rng_state(),
        "model_config": raw.cfg.model_dump(),
        "train_config": tcfg.model_dump(mode="json"),
        "tokenizer_hash": tokenizer_hash,
        "best_loss": run.best_loss,
        "train_losses": run.train_losses,
        "val_losses": run.val_losses,
    }


def _save(
    ckpt_dir: Path,
    raw: Transformer,
    optimizer: torch.optim.Optimizer,
    loader: TokenLoader,
    run: RunState,
    tcfg: TrainConfig,
    tokenizer_hash: str | None,
    d: distributed.Dist,
) -> Path:
    """Checkpoint the current state from rank 0, refusing non-finite weights (a good one is never displaced).

    Every rank calls this: the finiteness check runs everywhere (the weights are the same on every rank,
    so all ranks stop together), and every rank's RNG state is gathered, since each has its own dropout.
    """
    if not all(torch.isfinite(p).all() for p in raw.parameters()):
        raise TrainingDiverged(run.step, "the weights after the last update are not finite")
    rngs = distributed.all_gather(checkpoint.rng_state(), d)
    if not d.is_main:
        return checkpoint.step_dir(ckpt_dir, run.step)
    meta = {
        "train_loss": run.train_losses[-1][1] if run.train_losses else None,
        "val_loss": run.val_losses[-1][1] if run.val_losses else None,
        "world_size": d.world_size,
    }
    state = _state(raw, optimizer, loader, run, tcfg, tokenizer_hash)
    if d.enabled:
        state["rng_ranks"] = rngs
    return checkpoint.save(ckpt_dir, state, meta, tcfg.keep_checkpoints)


def _resume(
    path: Path,
    raw: Transformer,
    optimizer: torch.optim.Optimizer,
    loader: TokenLoader,
    tokenizer_hash: str | None,
    d: distributed.Dist,
) -> RunState:
    """Load model, optimizer, loader and RNG states from a checkpoint; returns the loop's state."""
    state = checkpoint.load(path)
    if state["model_config"] != raw.cfg.model_dump():
        raise ValueError(f"{path} holds another model config: {state['model_config']}")
    if tokenizer_hash and state["tokenizer_hash"] and state["tokenizer_hash"] != tokenizer_hash:
        raise ValueError(f"{path} was trained with tokenizer {state['tokenizer_hash']}, not {tokenizer_hash}")
    raw.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    loader.load_state_dict(state["loader"])  # the same global position on every rank
    rngs = state.get("rng_ranks") or [state["rng"]]
    if len(rngs) != d.world_size and d.is_main:
        log.warning(
            "%s was saved by %d processes and is resumed by %d: the data order continues exactly; ranks "
            "without a saved RNG state keep fresh dropout streams",
            path,
            len(rngs),
            d.world_size,
        )
    # Last, so nothing done while rebuilding the run consumes the restored generators.
    if d.rank < len(rngs):
        checkpoint.set_rng_state(rngs[d.rank])
    log.info("resumed from %s at step %d", path, state["step"])
    return RunState(state["step"], state["best_loss"], state["train_losses"], state["val_losses"])


def train(
    cfg: GPTConfig,
    tcfg: TrainConfig,
    train_shards: list[Path],
    val_shards: list[Path],
    out_dir: Path,
    tokenizer_hash: str | None = None,
    device: str | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume training of) a Transformer; returns the final step, loss histories and throughput.

    Checkpoints go to `out_dir/checkpoints`; the newest complete one there is resumed automatically.
    Without `val_shards` no validation loss is computed. Raises TrainingDiverged on a bad loss. Under
    torchrun every process calls this and they train data-parallel; `on_log` is called on rank 0 only,
    and every rank returns the same summary (out_dir must be on a filesystem all nodes share).
    """
    with distributed.session(resolve_device(device)) as d, reuse_freed_memory(d.device.type == "cpu"):
        return _train(cfg, tcfg, train_shards, val_shards, Path(out_dir), tokenizer_hash, on_log, d)


def _train(
    cfg: GPTConfig,
    tcfg: TrainConfig,
    train_shards: list[Path],
    val_shards: list[Path],
    out_dir: Path,
    tokenizer_hash: str | None,
    on_log: Callable[[dict[str, Any]], None] | None,
    d: distributed.Dist,
) -> dict[str, Any]:
    """The loop of `train`, on this rank's device in the process group `d` (a world of one alone)."""
    ckpt_dir, dev = out_dir / "checkpoints", d.device
    accum = tcfg.grad_accum_steps(cfg.block_size, d.world_size)
    seed_everything(tcfg.seed)  # the same on every rank, so every rank builds the same initial weights
    raw = Transformer(cfg, checkpointing=tcfg.activation_checkpointing).to(dev)
    distributed.seed_rank(tcfg.seed, d)
    optimizer = make_optimizer(raw, tcfg)
    settings = (cfg.block_size, tcfg.batch_size, tcfg.seed, tokenizer_hash)
    loader = TokenLoader(train_shards, *settings, rank=d.rank, world_size=d.world_size)
    # A fresh, identically seeded loader per evaluation, so every evaluation sees the same batches.
    val_loader = partial(TokenLoader, val_shards, *settings, rank=d.rank, world_size=d.world_size)
    no_eval = None
    if val_shards:
        try:
            val_loader()  # refuse bad validation shards now rather than at the first evaluation
        except TooFewTokens as exc:
            # A small corpus can leave a validation split shorter than one window: train, but say so.
            no_eval = f"the validation split is too small for one window: {exc}"
            log.warning("no evaluation: %s; raise tokenize.val_fraction", no_eval)
            val_shards = []
    # Rank 0 picks the checkpoint, so all ranks resume from the same one whatever each sees on disk.
    run, resumed_from = RunState(), distributed.broadcast(checkpoint.latest(ckpt_dir), d)
    if resumed_from is not None:
        run = _resume(resumed_from, raw, optimizer, loader, tokenizer_hash, d)
    # No rank starts before every rank has read the checkpoint: rank 0's next save may prune it.
    distributed.barrier(d)
    model = torch.compile(raw) if tcfg.compile else raw
    ddp_model = distributed.wrap(model, d)
    metrics, meter = MetricsLog(out_dir / METRICS, on_log, enabled=d.is_main), Throughput()
    tokens_per_step = accum * tcfg.batch_size * cfg.block_size * d.world_size
    peak = peak_flops(dev)
    last_ckpt = resumed_from

    try:
        for step in range(run.step, tcfg.max_steps):
            started = time.perf_counter()
            lr = set_lr(optimizer, lr_at(step, tcfg))
            # Averaged over ranks: the global batch's loss, the same everywhere, so every guard agrees.
            loss = distributed.mean(accumulate(ddp_model, loader, accum, dev, tcfg.dtype), d)
            check_loss(step, loss, run.best_loss, tcfg)
            grad_norm = clip_grads(raw, tcfg.grad_clip)
            check_grad_norm(step, grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            meter.add(tokens_per_step, time.perf_counter() - started)
            run.step, run.best_loss = step + 1, min(run.best_loss, loss)

            if step % tcfg.log_every == 0 or run.step == tcfg.max_steps:
                run.train_losses.append([step, loss])
                rate = meter.window()
                record = {"kind": "train", "step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm}
                metrics({**record, "tokens_per_s": rate, "mfu": mfu(rate, cfg, peak, d.world_size)})
            if val_shards and _due(run.step, tcfg.eval_every, tcfg.max_steps):
                val_loss = distributed.mean(
                    evaluate(model, val_loader(), tcfg.eval_batches, dev, tcfg.dtype), d
                )
                run.val_losses.append([run.step, val_loss])
                metrics({"kind": "eval", "step": run.step, "val_loss": val_loss})
            if _due(run.step, tcfg.checkpoint_every, tcfg.max_steps):
                last_ckpt = _save(ckpt_dir, raw, optimizer, loader, run, tcfg, tokenizer_hash, d)
                metrics({"kind": "checkpoint", "step": run.step, "path": str(last_ckpt)})
    except TrainingDiverged as err:
        if d.is_main:
            # The newest checkpoint may hold the very weights that gave the bad loss: set it aside, so
            # what `latest` finds (a retry's resume, `crucible generate`) is the last good one.
            for path in checkpoint.quarantine(ckpt_dir, err.step):
                log.warning("%s: its checkpoint was moved to %s", err, path)
        raise

    # Every rank returns only once rank 0's last checkpoint is on disk.
    distributed.barrier(d)
    return {
        "step": run.step,
        "train_losses": run.train_losses,
        "val_losses": run.val_losses,
        "tokens_per_s": meter.overall(),
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "params": param_count(cfg),
        "flops_per_token": flops_per_token(cfg),
        "grad_accum_steps": accum,
        "device": str(dev),
        "world_size": d.world_size,
        "no_eval": no_eval,
    }
