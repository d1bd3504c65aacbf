"""The training hyperparameters, the AdamW optimizer and the learning-rate schedule.

The schedule is nanoGPT's: a linear warmup to the peak rate, a cosine decay to `min_lr` at
`max_steps`, and `min_lr` after that. Steps count optimizer updates; with gradient accumulation one
step consumes `tokens_per_step` tokens in several micro-batches.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.transformer import Transformer


class TrainConfig(BaseModel):
    """How the transformer is trained: optimizer, schedule, batches, evaluation, checkpoints and guards."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    lr: float = Field(3e-4, gt=0)
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float | None = Field(None, ge=0)
    """Learning rate at the end of the cosine decay and after it; None picks lr / 10."""
    warmup_steps: int = Field(100, ge=0)
    """Steps of linear warmup from lr / warmup_steps to lr (0 starts at the peak)."""
    max_steps: int = Field(2000, gt=0)
    """Optimizer steps in the whole run; the cosine decay ends here."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW decoupled weight decay, applied to the 2-D matmul weights only."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's (beta1, beta2); 0.95 rather than 0.999 keeps the second moment responsive to spikes."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    batch_size: int = Field(8, gt=0)
    """Sequences per micro-batch (one forward and backward pass) of each process; data-parallel training
    on N processes makes the global micro-batch N · batch_size."""
    tokens_per_step: int | None = Field(None, gt=0)
    """Tokens per optimizer step over all processes; must be a multiple of batch_size · block_size ·
    processes, the extra micro-batches being accumulated. None takes one micro-batch per step."""
    eval_every: int = Field(250, ge=0)
    """Evaluate on the validation shards every this many steps (and at the end); 0 only at the end."""
    eval_batches: int = Field(20, gt=0)
    """Micro-batches averaged for one validation loss; always the same ones (a freshly seeded loader)."""
    checkpoint_every: int = Field(500, ge=0)
    """Save a checkpoint every this many steps (and at the end); 0 only at the end."""
    keep_checkpoints: int = Field(3, ge=2)
    """Checkpoints kept on disk, newest first; at least 2, since the newest may hold weights that only the
    next step reveals as diverged."""
    seed: int = 0
    """Seed for weights, dropout and the data order; with it a CPU run is reproducible bit for bit."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute precision: bfloat16 autocasts matmuls on CUDA only; on CPU training runs in float32."""
    compile: bool = False
    """Wrap the model in torch.compile (checkpoints still hold the uncompiled weights)."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass instead of storing its activations."""
    max_loss_ratio: float = Field(10.0, ge=0)
    """Stop when a step's loss exceeds this multiple of the lowest loss so far (warmup included); 0
    disables (a NaN or infinite loss always stops training)."""
    log_every: int = Field(10, gt=0)
    """Log the training loss, learning rate, gradient norm and throughput every this many steps."""

    @model_validator(mode="before")
    @classmethod
    def _default_min_lr(cls, data: Any) -> Any:
        """Fill in lr / 10 so dumps and checkpoints record the concrete floor."""
        if isinstance(data, dict) and data.get("min_lr") is None:
            lr = data.get("lr", 3e-4)
            if isinstance(lr, int | float) and not isinstance(lr, bool):
                return {**data, "min_lr": lr / 10}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        """Reject schedules and settings that cannot run as described."""
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps})"
            )
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if 0 < self.max_loss_ratio <= 1:
            raise ValueError(f"max_loss_ratio must be 0 (off) or above 1, got {self.max_loss_ratio}")
        return self

    def grad_accum_steps(self, block_size: int, world_size: int = 1) -> int:
        """Micro-batches per optimizer step and process (tokens_per_step / global micro-batch tokens)."""
        micro = world_size * self.batch_size * block_size
        if self.tokens_per_step is None:
            return 1
        # Rounding silently would change the effective batch, and with it the tuned learning rate.
        if self.tokens_per_step % micro:
            raise ValueError(
                f"tokens_per_step ({self.tokens_per_step}) must be a multiple of batch_size · block_size · "
                f"processes ({self.batch_size} · {block_size} · {world_size} = {micro})"
            )
        return self.tokens_per_step // micro


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the model's two parameter groups (decayed matmul weights, undecayed rest)."""
    groups = model.configure_optimizer_groups(cfg.weight_decay)
    on_cuda = next(model.parameters()).device.type == "cuda"
    # The fused kernel updates every parameter in one launch on CUDA; CPU keeps the default implementation.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True if on_cuda else None)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of 0-based `step`: linear warmup, cosine decay to min_lr at max_steps, then min_lr."""
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    if step < cfg.warmup_steps:
        # (step + 1) so the very first update already moves the weights.
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    # A weighted mean rather than min_lr + coeff·(lr - min_lr), so both ends are exactly lr and min_lr.
    return coeff * cfg.lr + (1.0 - coeff) * min_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every parameter group's learning rate; returns it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
