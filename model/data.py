"""The training data loader: fixed-length windows over memory-mapped token shards, resumable exactly.

Each epoch lays a grid of non-overlapping windows of `block_size + 1` tokens over every shard, shifted
by a seeded offset so epochs do not repeat the same boundaries, and visits them in a seeded
permutation. The loader's whole position is (epoch, index into the permutation): `state_dict()` saves
it and `load_state_dict()` restores it, so a resumed run gets exactly the next batch. Tokens stay in
the memory maps; a batch copies only its own windows, so memory does not grow with the batches served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from storage.tokens import TokenShard, open_token_shard


class TokenLoader:
    """Seeded, resumable (x, y) batches of `block_size` tokens from token shards."""

    def __init__(
        self,
        shards: list[Path],
        block_size: int,
        batch_size: int,
        seed: int = 0,
        tokenizer_hash: str | None = None,
    ) -> None:
        """Memory-map the shards (refusing another tokenizer's) and position at the first batch."""
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
        self.shards: list[TokenShard] = [open_token_shard(Path(p), tokenizer_hash) for p in sorted(shards)]
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.sizes = np.array([s.tokens.size for s in self.shards], dtype=np.int64)
        if self._grid(0)[1][-1] == 0:
            raise ValueError(
                f"no shard holds a window of {block_size + 1} tokens ({int(self.sizes.sum())} in all)"
            )
        self.epoch, self.index = 0, 0
        self._start_epoch()

    def _grid(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's window offset per shard and the cumulative window count over shards."""
        shift = int(np.random.default_rng([self.seed, epoch, 1]).integers(0, self.block_size))
        # A shard too short for the shifted grid keeps its unshifted windows.
        shifts = np.where(self.sizes - shift >= self.block_size + 1, shift, 0)
        counts = np.maximum(self.sizes - shifts - 1, 0) // self.block_size
        return shifts, np.concatenate(([0], np.cumsum(counts)))

    def _start_epoch(self) -> None:
        """Lay out this epoch's windows and their seeded order."""
        self._shifts, self._cum = self._grid(self.epoch)
        self._order = np.random.default_rng([self.seed, self.epoch]).permutation(int(self._cum[-1]))

    @property
    def windows_per_epoch(self) -> int:
        """Windows in the current epoch."""
        return int(self._cum[-1])

    def _window(self, w: int) -> np.ndarray:
        """Tokens of global window w (block_size + 1 of them)."""
        k = int(np.searchsorted(self._cum, w, side="right") - 1)
        start = int(self._shifts[k]) + (w - int(self._cum[k])) * self.block_size
        return self.shards[k].tokens[start : start + self.block_size + 1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) pair of int64 tensors, shape (batch_size, block_size)."""
        rows = np.empty((self.batch_size, self.block_size + 1), dtype=np.int64)
        for b in range(self.batch_size):
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._start_epoch()
            rows[b] = self._window(int(self._order[self.index]))
            self.index += 1
        batch = torch.from_numpy(rows)
        return batch[:, :-1], batch[:, 1:]

    def __iter__(self) -> TokenLoader:
        """Iterate batches forever (epochs roll over)."""
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch."""
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue at exactly the next batch, plus what it must match."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "shards": [[s.path.name, int(s.tokens.size)] for s in self.shards],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; refuse a state taken over other shards or settings."""
        mine = self.state_dict()
        theirs = {**state, "shards": [list(s) for s in state["shards"]]}  # tuples after a round trip
        for field in ("seed", "block_size", "batch_size", "shards"):
            if theirs[field] != mine[field]:
                raise ValueError(f"loader state has another {field}: {theirs[field]!r} != {mine[field]!r}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._start_epoch()
