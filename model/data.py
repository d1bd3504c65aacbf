"""The training data loader: fixed-length windows over memory-mapped token shards, resumable exactly.

Each epoch lays a grid of non-overlapping windows of `block_size + 1` tokens over every shard, shifted
by a seeded offset so epochs do not repeat the same boundaries, and visits them in a seeded
permutation. The loader's whole position is (epoch, index into the permutation): `state_dict()` saves
it and `load_state_dict()` restores it, so a resumed run gets exactly the next batch. Tokens stay in
the memory maps; a batch copies only its own windows, so memory does not grow with the batches served.

Data-parallel training splits one *global* batch of `world_size · batch_size` windows: rank r takes
rows r·batch_size to (r+1)·batch_size of it and skips the others' rows. Every rank therefore walks the
same permutation and holds the same (epoch, index) after every batch, so one state resumes every rank,
and N ranks of batch B read exactly the windows one process of batch N·B reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from storage.tokens import TokenShard, open_token_shard


class TooFewTokens(ValueError):
    """No shard holds even one window of block_size + 1 tokens."""


class TokenLoader:
    """Seeded, resumable (x, y) batches of `block_size` tokens from token shards."""

    def __init__(
        self,
        shards: list[Path],
        block_size: int,
        batch_size: int,
        seed: int = 0,
        tokenizer_hash: str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Memory-map the shards (refusing another tokenizer's) and position at the first batch.

        `batch_size` is this rank's share; the global batch is `world_size · batch_size`.
        """
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank {rank} of {world_size}")
        self.shards: list[TokenShard] = [open_token_shard(Path(p), tokenizer_hash) for p in sorted(shards)]
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.sizes = np.array([s.tokens.size for s in self.shards], dtype=np.int64)
        if self._grid(0)[1][-1] == 0:
            raise TooFewTokens(
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

    def _roll_over(self) -> None:
        """Start the next epoch once this one's windows are used up (lazily, just before the next take)."""
        if self.index == len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._start_epoch()

    def _skip(self, n: int) -> None:
        """Pass over the next `n` windows of the global order (other ranks' rows) without reading them."""
        while n:
            self._roll_over()
            step = min(n, len(self._order) - self.index)
            self.index, n = self.index + step, n - step

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next (x, y) pair of int64 tensors, shape (batch_size, block_size)."""
        rows = np.empty((self.batch_size, self.block_size + 1), dtype=np.int64)
        self._skip(self.rank * self.batch_size)
        for b in range(self.batch_size):
            self._roll_over()
            rows[b] = self._window(int(self._order[self.index]))
            self.index += 1
        self._skip((self.world_size - self.rank - 1) * self.batch_size)
        batch = torch.from_numpy(rows)
        return batch[:, :-1], batch[:, 1:]

    def __iter__(self) -> TokenLoader:
        """Iterate batches forever (epochs roll over)."""
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch."""
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue at exactly the next batch, plus what it must match.

        The same on every rank: the position is in the global order, which all ranks walk together.
        """
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "global_batch_size": self.batch_size * self.world_size,
            "shards": [[s.path.name, int(s.tokens.size)] for s in self.shards],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; refuse a state taken over other shards or settings.

        Any split of the same global batch resumes exactly (2 ranks of 4 or 1 of 8 read the same
        windows), so the global batch is checked, not the per-rank one.
        """
        mine = self.state_dict()
        theirs = {**state, "shards": [list(s) for s in state["shards"]]}  # tuples after a round trip
        # States written before data parallelism hold no world size: they come from one process.
        theirs.setdefault("global_batch_size", theirs["batch_size"] * theirs.get("world_size", 1))
        for field in ("seed", "block_size", "global_batch_size", "shards"):
            if theirs[field] != mine[field]:
                raise ValueError(f"loader state has another {field}: {theirs[field]!r} != {mine[field]!r}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._start_epoch()
