"""Progress of a stage's mapped tasks: a Prefect progress artifact, and a bar on a terminal."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

# 1 forces the terminal bar (e.g. under a pager or in CI logs), 0 turns it off; default: on a terminal.
ENV = "CRUCIBLE_PROGRESS"


def _show_bar() -> bool:
    """Whether to draw the terminal bar."""
    setting = os.environ.get(ENV)
    return setting == "1" if setting in ("0", "1") else sys.stderr.isatty()


def _bar(label: str, done: int, total: int, started: float) -> str:
    """One line: label, a 30-character bar, count and elapsed seconds."""
    filled = round(30 * done / total) if total else 30
    return f"{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {time.monotonic() - started:.0f}s"


# Seconds between progress-artifact updates: each is a blocking API call, and a rerun's cache hits finish
# by the dozen in a second.
ARTIFACT_EVERY_S = 1.0


def gather(futures: list[PrefectFuture], key: str, label: str) -> list[Any]:
    """The futures' results in submission order, moving the progress artifact `key` as they finish."""
    total, started = len(futures), time.monotonic()
    artifact = create_progress_artifact(progress=0.0, key=key, description=label)
    bar = _show_bar()
    order = {id(f): i for i, f in enumerate(futures)}
    results: list[Any] = [None] * total
    updated = started
    for done, future in enumerate(as_completed(futures), start=1):
        # .result() raises the task's error here, so a failed shard fails the stage at once.
        results[order[id(future)]] = future.result()
        if done == total or time.monotonic() - updated >= ARTIFACT_EVERY_S:
            update_progress_artifact(artifact, progress=100.0 * done / total)
            updated = time.monotonic()
        if bar:
            # On a terminal the bar redraws in place; elsewhere (a forced bar in a log) one line an update.
            tty = sys.stderr.isatty()
            end = "\n" if done == total or not tty else ""
            print(
                f"{chr(13) if tty else ''}{_bar(label, done, total, started)}",
                end=end,
                file=sys.stderr,
                flush=True,
            )
    if total == 0:
        update_progress_artifact(artifact, progress=100.0)
    return results
