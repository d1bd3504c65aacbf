"""Training checkpoints: one directory per step, written atomically, read back with weights_only=True.

A checkpoint is `step-000123/` (123 optimizer steps done, so training resumes at step 123) holding
`state.pt` and `meta.json`. It is built in a hidden temp directory beside its final name, each file
fsynced, `meta.json` written last, and the directory renamed into place; a directory without
`meta.json` is incomplete and `latest` ignores it. After a save only the newest `keep` survive.

`state.pt` holds only tensors and plain containers, strings and numbers (RNG states included), so
`torch.load(..., weights_only=True)` reads it without unpickling arbitrary objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from storage.shards import atomic_write

STATE, META = "state.pt", "meta.json"
_NAME = re.compile(r"step-(\d+)")
_TEMP_GLOB = ".step-*.tmp-*"
# torch.compile wraps a module in an OptimizedModule whose state-dict keys carry this prefix.
COMPILE_PREFIX = "_orig_mod."


def step_dir(ckpt_dir: Path, step: int) -> Path:
    """The directory of the checkpoint taken after `step` optimizer steps."""
    return Path(ckpt_dir) / f"step-{step:06d}"


def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict under its uncompiled names, loadable into a plain Transformer."""
    return {key.replace(COMPILE_PREFIX, ""): value for key, value in module.state_dict().items()}


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) generator states as plain lists, numbers and tensors."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by `rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(directory: Path) -> None:
    """Persist renames inside `directory` (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(ckpt_dir: Path, state: dict[str, Any], meta: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step-<state["step"]>` atomically, then delete all but the newest `keep`."""
    ckpt_dir = Path(ckpt_dir)
    step = int(state["step"])
    final = step_dir(ckpt_dir, step)
    tmp = ckpt_dir / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        atomic_write(tmp / STATE, lambda path: torch.save(state, path))
        files = {STATE: (tmp / STATE).stat().st_size}
        record = {**meta, "step": step, "time": time.time(), "files": files}
        # Written last: its presence is what marks the checkpoint complete.
        atomic_write(tmp / META, lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))
        if final.exists():  # an incomplete leftover of the same name; a rename cannot replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune(ckpt_dir, keep)
    return final


def complete(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and path.is_dir() and (path / META).is_file():
            found.append((int(match[1]), path))
    return sorted(found)


def latest(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None; temp and meta-less directories are ignored."""
    found = complete(ckpt_dir)
    return found[-1][1] if found else None


def prune(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints and any temp directories left by crashes."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    for _, path in complete(ckpt_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    # One trainer writes a checkpoint directory, so after its own save every temp directory is stale.
    for path in Path(ckpt_dir).glob(_TEMP_GLOB):
        shutil.rmtree(path, ignore_errors=True)


def quarantine(ckpt_dir: Path, from_step: int) -> list[Path]:
    """Rename every complete checkpoint at or after `from_step` to `diverged-step-N`, out of `latest`'s
    sight, and return the new paths.

    Used when training diverges at `from_step`: the weights saved after that many updates are the ones
    that gave the bad loss, so resuming from them would only diverge again. They are kept for inspection.
    """
    moved = []
    for step, path in complete(ckpt_dir):
        if step >= from_step:
            target = path.with_name(f"diverged-{path.name}")
            shutil.rmtree(target, ignore_errors=True)  # from an earlier divergence at the same step
            os.replace(path, target)
            moved.append(target)
    if moved:
        _fsync_dir(Path(ckpt_dir))
    return moved


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json."""
    return json.loads((Path(path) / META).read_text())


def load(path: Path) -> dict[str, Any]:
    """A complete checkpoint's state, on CPU, read with weights_only=True."""
    path = Path(path)
    if not (path / META).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {META})")
    return torch.load(path / STATE, map_location="cpu", weights_only=True)


def resolve(path: Path) -> Path:
    """A checkpoint directory from itself, a `checkpoints/` folder or a train stage (newest complete one)."""
    path = Path(path)
    if (path / META).is_file():
        return path
    for folder in (path, path / "checkpoints"):
        if folder.is_dir() and (found := latest(folder)) is not None:
            return found
    raise FileNotFoundError(f"no complete checkpoint at or under {path}")


def load_model(path: Path) -> tuple[Any, dict[str, Any]]:
    """The Transformer saved in a checkpoint (eval mode, CPU) and the checkpoint's state."""
    from model.config import GPTConfig
    from model.transformer import Transformer

    state = load(resolve(path))
    model = Transformer(GPTConfig.model_validate(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval(), state
