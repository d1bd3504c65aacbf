"""metrics.jsonl: the training loop's records (rank 0 writes them), the throughput meter, and a follower.

One JSON object per line: `{"kind": "train" | "eval" | "checkpoint", "step": ..., ...}`. A process that
launched training elsewhere (torchrun) follows the file to see progress as it is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
METRICS = "metrics.jsonl"


class MetricsLog:
    """Append records to metrics.jsonl, pass them to `on_log`, and log a line (rank 0 only)."""

    def __init__(
        self, path: Path, on_log: Callable[[dict[str, Any]], None] | None, enabled: bool = True
    ) -> None:
        """Records go to `path` (created with its directory) and to `on_log`; a disabled log drops them."""
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.on_log, self.enabled = path, on_log, enabled

    def __call__(self, record: dict[str, Any]) -> None:
        """Write one record."""
        if not self.enabled:  # another rank than 0: the records are the same, rank 0 writes them
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if self.on_log is not None:
            self.on_log(record)


class Throughput:
    """Tokens per second over the current logging window and over the whole run."""

    def __init__(self) -> None:
        """Start with empty windows."""
        self.tokens = self.seconds = 0.0
        self.total_tokens = self.total_seconds = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        """Count one step."""
        self.tokens += tokens
        self.seconds += seconds
        self.total_tokens += tokens
        self.total_seconds += seconds

    def window(self) -> float:
        """Tokens/s since the last call, then start a new window."""
        rate = self.tokens / self.seconds if self.seconds else 0.0
        self.tokens = self.seconds = 0.0
        return rate

    def overall(self) -> float:
        """Tokens/s over every step this process ran."""
        return self.total_tokens / self.total_seconds if self.total_seconds else 0.0


class MetricsFollower:
    """The records appended to a metrics.jsonl since the follower was made, complete lines only."""

    def __init__(self, path: Path) -> None:
        """Start at the current end of `path` (or its start, when it does not exist yet)."""
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self) -> list[dict[str, Any]]:
        """New complete records; a line still being written waits for the next call."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]
