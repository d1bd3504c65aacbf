"""Training: schedule, exact resume after SIGKILL, accumulation, checkpointing, divergence, checkpoints."""

from __future__ import annotations

import copy
import itertools
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import model.train as train_module
from model import checkpoint
from model.config import GPTConfig, flops_per_token
from model.optim import TrainConfig, lr_at, make_optimizer
from model.train import TrainingDiverged, accumulate, clip_grads, mfu, peak_flops, peak_flops_of, train
from model.transformer import Transformer
from storage.tokens import write_token_shard

ROOT = Path(__file__).resolve().parents[1]
HASH = "test-tokenizer"
VOCAB = 200  # padded to 256, so the padding rows are trained too
CPU = torch.device("cpu")
Shards = tuple[list[Path], list[Path]]  # train shards, validation shards


def tiny(**overrides: Any) -> GPTConfig:
    """A model that trains a step in milliseconds on a CPU."""
    fields = {"vocab_size": VOCAB, "block_size": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64}
    return GPTConfig(**{**fields, **overrides})


def quick(**overrides: Any) -> TrainConfig:
    """A short run: tiny batches, frequent logs, evals and checkpoints."""
    fields = {"max_steps": 6, "warmup_steps": 2, "batch_size": 4, "log_every": 1, "eval_every": 2}
    return TrainConfig(**{**fields, "eval_batches": 2, "checkpoint_every": 2, **overrides})


def _shard(path: Path, n_tokens: int, seed: int, split: str) -> Path:
    """A token shard of random ids in documents of 500 tokens."""
    tokens = np.random.default_rng(seed).integers(0, VOCAB, n_tokens).astype(np.uint16)
    offsets = np.arange(0, n_tokens + 1, 500)
    ids = [f"{split}-{i}" for i in range(len(offsets) - 1)]
    write_token_shard(
        path, ids, tokens, offsets, tokenizer_hash=HASH, eos_id=0, vocab_size=VOCAB, split=split
    )
    return path


@pytest.fixture
def shards(tmp_path: Path) -> Shards:
    """Two train shards and one validation shard of random tokens."""
    data = tmp_path / "data"
    train_shards = [_shard(data / f"s{k}.train.arrow", 10_000, k, "train") for k in range(2)]
    return train_shards, [_shard(data / "s0.val.arrow", 3_000, 9, "val")]


# --- learning-rate schedule and config ---------------------------------------------------------------


def test_lr_schedule_warms_up_then_decays_to_min_lr() -> None:
    tcfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=100)
    lrs = [lr_at(step, tcfg) for step in range(130)]
    assert tcfg.min_lr == pytest.approx(1e-4)
    assert lrs[0] == pytest.approx(1e-4) and lrs[0] > 0
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))  # linear warmup
    assert max(lrs) == lrs[9] == lrs[10] == tcfg.lr  # the peak at the end of warmup
    assert all(a > b for a, b in itertools.pairwise(lrs[10:101]))  # cosine decay
    assert lrs[55] == pytest.approx((tcfg.lr + tcfg.min_lr) / 2)  # halfway down at the midpoint
    assert all(lr == tcfg.min_lr for lr in lrs[100:])
    assert lr_at(0, TrainConfig(warmup_steps=0, max_steps=10)) == 3e-4


def test_train_config_validation() -> None:
    assert TrainConfig(lr=1e-2).min_lr == pytest.approx(1e-3)
    assert TrainConfig(batch_size=2, tokens_per_step=256).grad_accum_steps(32) == 4
    assert TrainConfig(batch_size=2).grad_accum_steps(32) == 1
    assert TrainConfig(batch_size=2, tokens_per_step=256).grad_accum_steps(32, world_size=2) == 2
    with pytest.raises(ValueError, match="2 · 32 · 3 = 192"):
        TrainConfig(batch_size=2, tokens_per_step=256).grad_accum_steps(32, world_size=3)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        TrainConfig(batch_size=2, tokens_per_step=100).grad_accum_steps(32)
    for bad in (
        {"lr": 1e-4, "min_lr": 1e-3},
        {"warmup_steps": 20, "max_steps": 10},
        {"keep_checkpoints": 1},
        {"betas": (0.9, 1.0)},
        {"max_loss_ratio": 0.5},
        {"dtype": "float16"},
        {"learning_rate": 1e-3},
    ):
        with pytest.raises(ValidationError):
            TrainConfig(**bad)


# --- exact resume after SIGKILL ----------------------------------------------------------------------

# The test's subprocess: `delay_from` and `block_at` slow the run down through `on_log` only, so the
# kill lands after the middle checkpoint and before the end however loaded the machine is.
SCRIPT = """
import json, sys, time
from pathlib import Path
from model.config import GPTConfig, flops_per_token
from model.optim import TrainConfig
from model.train import train

args = json.loads(sys.argv[1])

def on_log(record: dict) -> None:
    if record["kind"] == "train" and record["step"] >= args["delay_from"]:
        time.sleep(600 if record["step"] >= args["block_at"] else 0.05)

summary = train(
    GPTConfig(**args["cfg"]), TrainConfig(**args["tcfg"]), [Path(p) for p in args["train"]],
    [Path(p) for p in args["val"]], Path(args["out"]), tokenizer_hash=args["hash"], device="cpu",
    on_log=on_log,
)
Path(args["out"], "summary.json").write_text(json.dumps(summary))
"""


def _start(out: Path, shards: Shards, delay_from: int, block_at: int) -> subprocess.Popen:
    """Launch a training subprocess writing to `out` (the same settings every time)."""
    n = 4
    tcfg = quick(max_steps=2 * n, checkpoint_every=n, eval_every=n, tokens_per_step=2 * 4 * 32)
    args = {
        "cfg": tiny(dropout=0.1).model_dump(),  # dropout, so the torch RNG state must be restored too
        "tcfg": tcfg.model_dump(mode="json"),
        "train": [str(p) for p in shards[0]],
        "val": [str(p) for p in shards[1]],
        "out": str(out),
        "hash": HASH,
        "delay_from": delay_from,
        "block_at": block_at,
    }
    cmd = [sys.executable, "-c", SCRIPT, json.dumps(args)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, out: Path) -> dict[str, Any]:
    """Wait for a subprocess to succeed and return its summary."""
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    return json.loads((out / "summary.json").read_text())


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll until `path` exists, failing early if the process dies."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def test_resume_after_sigkill_is_bit_exact(tmp_path: Path, shards: Shards) -> None:
    n = 4
    never = 10**9
    uninterrupted = _start(tmp_path / "a", shards, never, never)  # runs alongside the one to be killed
    killed_dir = tmp_path / "b"
    proc = _start(killed_dir, shards, n, 2 * n - 2)
    try:
        _wait_for(checkpoint.step_dir(killed_dir / "checkpoints", n) / checkpoint.META, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # also when the wait failed, so no blocked run outlives the test
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    baseline = _finish(uninterrupted, tmp_path / "a")
    assert checkpoint.latest(killed_dir / "checkpoints") == checkpoint.step_dir(killed_dir / "checkpoints", n)

    resumed = _finish(_start(killed_dir, shards, never, never), killed_dir)
    assert resumed["resumed_from"].endswith(f"step-{n:06d}") and baseline["resumed_from"] is None
    assert resumed["step"] == baseline["step"] == 2 * n
    # Losses compared as floats, exactly: the resumed steps n..2n-1 repeat the uninterrupted run bit for bit.
    assert [s for s, _ in resumed["train_losses"]] == list(range(2 * n))
    assert resumed["train_losses"] == baseline["train_losses"]
    assert resumed["val_losses"] == baseline["val_losses"] and len(baseline["val_losses"]) == 2
    final_a, final_b = (checkpoint.load(Path(s["checkpoint"])) for s in (baseline, resumed))
    assert all(torch.equal(final_a["model"][k], final_b["model"][k]) for k in final_a["model"])
    # The log holds the killed run's steps, then the resumed run's from the checkpoint on.
    logged = [json.loads(line) for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logged if r["kind"] == "train"]
    assert steps[:n] == list(range(n)) and steps[-n:] == list(range(n, 2 * n))


# --- gradient accumulation and activation checkpointing ----------------------------------------------


def _batch(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (x, y) batch of random ids."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (rows, 33), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]


def test_gradient_accumulation_matches_one_big_batch() -> None:
    torch.manual_seed(0)
    one = Transformer(tiny())
    many = copy.deepcopy(one)
    tcfg = TrainConfig(batch_size=2, tokens_per_step=8 * 32)
    k = tcfg.grad_accum_steps(32)
    x, y = _batch(8)
    micro = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)]
    loss_many = accumulate(many, iter(micro), k, CPU, "float32")
    loss_one = accumulate(one, iter([(x, y)]), 1, CPU, "float32")
    assert k == 4 and loss_many == pytest.approx(loss_one, abs=1e-6)
    for (name, a), b in zip(one.named_parameters(), many.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=0, msg=name)
    assert clip_grads(many, 1.0) == pytest.approx(clip_grads(one, 1.0), abs=1e-6)
    opt_one, opt_many = make_optimizer(one, tcfg), make_optimizer(many, tcfg)
    opt_one.step()
    opt_many.step()
    for a, b in zip(one.parameters(), many.parameters(), strict=True):
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_many.state[b][moment], opt_one.state[a][moment], atol=1e-7, rtol=0)
        # Adam's first update is lr·g/(|g| + eps): for gradients near eps a 1e-9 difference moves it by
        # a few percent of lr, so the weights are compared at that scale.
        torch.testing.assert_close(b, a, atol=0.05 * tcfg.lr, rtol=0)


def test_activation_checkpointing_gives_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    plain = Transformer(tiny(dropout=0.1))
    ckpt = copy.deepcopy(plain)
    ckpt.checkpointing = True
    batch = _batch(4)
    losses = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same dropout masks; recomputation replays them from the saved RNG state
        losses.append(accumulate(model, iter([batch]), 1, CPU, "float32"))
    assert losses[0] == losses[1]
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=0, msg=name)


def test_activation_checkpointing_trains_identically(tmp_path: Path, shards: Shards) -> None:
    runs = [
        train(tiny(), quick(max_steps=3, activation_checkpointing=on), *shards, tmp_path / str(on), HASH)
        for on in (False, True)
    ]
    for (s0, a), (s1, b) in zip(runs[0]["train_losses"], runs[1]["train_losses"], strict=True):
        assert s0 == s1 and a == pytest.approx(b, abs=1e-6)


# --- divergence --------------------------------------------------------------------------------------

# A warmup towards an absurd learning rate: a few good steps, then the loss explodes (at step 6 here).
DIVERGING_LR, DIVERGING_WARMUP = 3.0, 10


def test_huge_lr_stops_with_training_diverged(tmp_path: Path, shards: Shards) -> None:
    """The checkpoint holding the weights that gave the bad loss is set aside; the newest left is good."""
    ckpts = tmp_path / "checkpoints"
    tcfg = quick(lr=DIVERGING_LR, warmup_steps=DIVERGING_WARMUP, max_steps=30, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="diverged at step") as err:
        train(tiny(), tcfg, *shards, tmp_path, HASH)
    bad = err.value.step
    assert bad > 2 and "above 10 × the lowest" in str(err.value)
    # Saving the bad step's checkpoint pruned all but the newest keep_checkpoints (3); it was moved aside.
    assert [step for step, _ in checkpoint.complete(ckpts)] == [bad - 2, bad - 1]
    assert (ckpts / f"diverged-step-{bad:06d}" / checkpoint.META).is_file()
    state = checkpoint.load(checkpoint.latest(ckpts))
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert state["best_loss"] < 10 and pickle.loads(pickle.dumps(err.value)).step == bad
    # Resuming replays the same batches from the good checkpoint and stops at the same step.
    with pytest.raises(TrainingDiverged) as again:
        train(tiny(), tcfg, *shards, tmp_path, HASH)
    assert again.value.step == bad and [s for s, _ in checkpoint.complete(ckpts)] == [bad - 2, bad - 1]


def test_injected_nan_keeps_the_last_good_checkpoint(
    tmp_path: Path, shards: Shards, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward, calls = Transformer.forward, []

    def poisoned(self: Transformer, idx: torch.Tensor, targets: torch.Tensor | None = None) -> Any:
        logits, loss = forward(self, idx, targets)
        if self.training:
            calls.append(1)
            if len(calls) == 6:  # the sixth training forward is step 5
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(Transformer, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="step 5: loss is nan"):
        train(tiny(), quick(max_steps=10, keep_checkpoints=5), *shards, tmp_path, HASH)
    assert [s for s, _ in checkpoint.complete(tmp_path / "checkpoints")] == [2, 4]
    logged = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(line)["step"] for line in logged) == 4


# --- throughput --------------------------------------------------------------------------------------


def test_mfu_against_the_devices_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peaks are found by whole words of the CUDA device name; MFU is FLOP/s achieved over all peaks."""
    names = {
        "NVIDIA H100 80GB HBM3": 989e12,
        "NVIDIA A100-SXM4-80GB": 312e12,
        "NVIDIA L40S": 362e12,
        "NVIDIA L40": 181e12,
        "NVIDIA L4": 121e12,
        "NVIDIA A10G": None,  # not an A10
        "NVIDIA GeForce RTX 4090": 165e12,
        "Tesla T4": None,
    }
    assert {name: peak_flops_of(name) for name in names} == names
    assert peak_flops(CPU) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L4")
    assert peak_flops(torch.device("cuda")) == 121e12
    monkeypatch.setenv("CRUCIBLE_PEAK_FLOPS", "2.5e14")
    assert peak_flops(torch.device("cuda")) == 2.5e14
    cfg = tiny()
    assert mfu(1000.0, cfg, 1e12, world_size=2) == pytest.approx(1000.0 * flops_per_token(cfg) / 2e12)
    assert mfu(1000.0, cfg, None) is None


# --- checkpoints -------------------------------------------------------------------------------------


def test_keep_checkpoints_incomplete_dirs_and_resume(tmp_path: Path, shards: Shards) -> None:
    ckpts, every_step = tmp_path / "checkpoints", {"checkpoint_every": 1, "keep_checkpoints": 2}
    first = train(tiny(), quick(max_steps=5, **every_step), *shards, tmp_path, HASH)
    assert [s for s, _ in checkpoint.complete(ckpts)] == [4, 5] and first["checkpoint"].endswith("000005")
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000004", "step-000005"]  # no temp dirs left
    assert checkpoint.read_meta(ckpts / "step-000005")["files"]["state.pt"] > 0

    # Leftovers of crashed saves: a meta-less directory (newest by name), one at the next step, a temp dir.
    for name in ("step-000099", "step-000006", ".step-000007.tmp-1-abcd"):
        (ckpts / name).mkdir()
        (ckpts / name / "state.pt").write_bytes(b"truncated")
    (ckpts / ".step-000007.tmp-1-abcd" / "meta.json").write_text("{}")
    assert checkpoint.latest(ckpts) == ckpts / "step-000005"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.load(ckpts / "step-000099")

    second = train(tiny(), quick(max_steps=7, **every_step), *shards, tmp_path, HASH)
    assert second["resumed_from"].endswith("step-000005")
    assert [s for s, _ in second["train_losses"]] == list(range(7))
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000006", "step-000007", "step-000099"]


def test_load_uses_weights_only(tmp_path: Path, shards: Shards, monkeypatch: pytest.MonkeyPatch) -> None:
    train(tiny(), quick(max_steps=2), *shards, tmp_path, HASH)
    path = checkpoint.latest(tmp_path / "checkpoints")
    real_load, seen = torch.load, []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state = checkpoint.load(path)
    assert seen == [True]
    assert state["step"] == 2 and state["tokenizer_hash"] == HASH
    assert state["model_config"] == tiny().model_dump() and state["train_config"]["max_steps"] == 2
    assert set(state["rng"]) >= {"python", "numpy", "torch"} and state["loader"]["seed"] == 0
    with pytest.raises(ValueError, match="another model config"):
        train(tiny(d_model=128), quick(max_steps=3), *shards, tmp_path, HASH)


def test_rng_state_round_trips_through_weights_only(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


# Importing torch.compile's machinery trips a deprecation warning inside torch itself.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_model_state_strips_compile_prefix() -> None:
    model = Transformer(tiny())
    compiled = torch.compile(model)  # lazy: nothing is compiled until the first call
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert checkpoint.model_state(compiled).keys() == model.state_dict().keys()


def test_a_validation_split_shorter_than_a_window_skips_evaluation(tmp_path: Path, shards: Shards) -> None:
    path, tokens = tmp_path / "short.val.arrow", np.arange(1, 21, dtype=np.uint16)  # < one window of 33
    write_token_shard(
        path, ["v"], tokens, [0, 20], tokenizer_hash=HASH, eos_id=0, vocab_size=VOCAB, split="val"
    )
    short = [path]
    summary = train(tiny(), quick(), shards[0], short, tmp_path / "out", tokenizer_hash=HASH, device="cpu")
    assert summary["step"] == 6 and summary["val_losses"] == []
    assert "too small for one window" in summary["no_eval"] and "33 tokens (20 in all)" in summary["no_eval"]
    # Training shards that short are still an error: there is nothing to train on.
    with pytest.raises(ValueError, match="no shard holds a window of 33 tokens"):
        train(tiny(), quick(), short, [], tmp_path / "out2", tokenizer_hash=HASH, device="cpu")


def test_training_on_cpu_runs_under_the_malloc_tuning(
    shards: Shards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train() enters model.malloc.reuse_freed_memory on CPU (tests/test_malloc.py tests what that does)."""
    entered: list[bool] = []
    real = train_module.reuse_freed_memory

    def spy(enabled: bool = True) -> Any:
        entered.append(enabled)
        return real(enabled)

    monkeypatch.setattr(train_module, "reuse_freed_memory", spy)
    train(tiny(), quick(max_steps=2), *shards, tmp_path / "run", HASH, device="cpu")
    assert entered == [True]
