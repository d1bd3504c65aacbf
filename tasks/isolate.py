"""Run extractors in a child process with a time limit and a memory cap.

One hostile file (a PDF that makes MuPDF spin, HTML that explodes lxml) must not hang or exhaust the worker
that runs a whole group of files. The parent sends one item at a time to a child process, receives records
in batches as the child produces them, and kills and replaces the child when it goes silent for longer than
the time limit or dies. Records received before the failure are kept.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

BATCH = 256
# The reason of an item (or, from an extractor that catches MemoryError itself, a record) over the cap.
OUT_OF_MEMORY = "extract_out_of_memory"


@dataclass(frozen=True)
class Failure:
    """An item whose extraction did not finish: why, and how far it got."""

    index: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Finished:
    """The last event of every item, done or failed: its wall time and the worker's peak memory so far."""

    index: int
    seconds: float
    peak_rss_mb: float | None
    """Peak resident memory of the worker process (None when it was killed or died)."""


def _peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True)
class Lost:
    """One record the worker produced but could not send (it does not pickle); the item goes on."""

    index: int
    detail: str


def _address_space() -> int:
    """This process's current virtual memory size in bytes (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _limit_memory(memory_mb: int | None) -> None:
    """Cap the child's address space so a runaway parse fails with MemoryError, not the OOM killer.

    The cap is what the child may add to the address space it starts with: a forkserver child inherits
    hundreds of MB of mappings (thread stacks, malloc arena reservations) that grow over a long run, so an
    absolute cap would leave less room for the file as the run goes on.
    """
    if memory_mb:
        limit = _address_space() + memory_mb * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


# What pickling a record can raise: a record too deep, an object that cannot be pickled.
_UNSENDABLE = (pickle.PicklingError, RecursionError, TypeError, AttributeError, ValueError)


def _send(conn: Connection, index: int, batch: list[Any]) -> None:
    """Send a batch of records; when it does not pickle, send them one by one and report the lost ones."""
    try:
        conn.send(("records", index, batch))
        return
    except _UNSENDABLE:  # pickled in full before anything is written, so the pipe is still clean
        pass
    for record in batch:
        try:
            conn.send(("records", index, [record]))
        except _UNSENDABLE as exc:
            conn.send(
                ("lost", index, f"{type(record).__name__} could not be sent: {type(exc).__name__}: {exc}")
            )


def _child(conn: Connection, fn: Callable[[Any], Iterable[Any]], memory_mb: int | None) -> None:
    """Child loop: extract each item received and stream its records back in batches."""
    _limit_memory(memory_mb)
    while (msg := conn.recv()) is not None:
        index, item = msg
        try:
            batch: list[Any] = []
            for record in fn(item):
                batch.append(record)
                if len(batch) >= BATCH:
                    _send(conn, index, batch)
                    batch = []
            _send(conn, index, batch)
            conn.send(("done", index, _peak_rss_mb()))
        except MemoryError:
            conn.send(("failed", index, (OUT_OF_MEMORY, f"over the {memory_mb} MB worker cap")))
        except Exception as exc:  # an extractor bug must cost one file, not the whole group
            tb = traceback.format_exc(limit=3)
            conn.send(("failed", index, ("extract_error", f"{type(exc).__name__}: {exc}\n{tb}")))


class _Worker:
    """One child process and the parent's end of its pipe."""

    def __init__(self, fn: Callable[[Any], Iterable[Any]], memory_mb: int | None) -> None:
        """Start the child through the forkserver, so it never inherits the parent's threads."""
        ctx = mp.get_context("forkserver")
        # The forkserver imports the extractor's module once; every later worker forks with it loaded.
        # (Only takes effect before the server's first start, so repeating it is harmless.)
        ctx.set_forkserver_preload([fn.__module__])
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(child_conn, fn, memory_mb), daemon=True)
        self.proc.start()
        child_conn.close()

    def kill(self) -> None:
        """Kill the child at once and reap it."""
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        """Ask the child to finish, then make sure it is gone."""
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


def _check_main() -> None:
    """Refuse a `__main__` that workers cannot re-import (stdin), which would crash every worker."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.exists(main_file):
        raise RuntimeError(
            f"isolated extraction starts workers that re-import __main__, but {main_file!r} is not a file: "
            "run Crucible from a script, `python -m`, the `crucible` command or a notebook, not stdin"
        )


def run_isolated(
    fn: Callable[[Any], Iterable[Any]],
    items: list[Any],
    *,
    timeout_s: float,
    memory_mb: int | None = None,
) -> Iterator[tuple[int, list[Any]] | Failure | Lost | Finished]:
    """Yield `(index, records)` batches per item, a Lost per record that could not be sent, a Failure
    when the item times out, crashes or raises, then its Finished."""
    _check_main()
    worker: _Worker | None = None
    try:
        for index, item in enumerate(items):
            worker = worker or _Worker(fn, memory_mb)
            start = time.monotonic()
            worker.conn.send((index, item))
            peak: float | None = None
            for event in _drain(worker, index, timeout_s):
                if isinstance(event, float):
                    peak = event
                    continue
                yield event
                if isinstance(event, Failure) and event.reason in ("extract_timeout", "extract_crashed"):
                    worker = None
            yield Finished(index, round(time.monotonic() - start, 3), peak)
    finally:
        if worker is not None:
            worker.stop()


def _drain(
    worker: _Worker, index: int, timeout_s: float
) -> Iterator[tuple[int, list[Any]] | Failure | Lost | float]:
    """Receive one item's records until it is done (then the worker's peak RSS), failed, silent for too
    long, or the child died."""
    received = 0
    while True:
        if not worker.conn.poll(timeout_s):
            worker.kill()
            detail = f"no progress for {timeout_s:g} s after {received} records; worker killed"
            yield Failure(index, "extract_timeout", detail)
            return
        try:
            kind, _, payload = worker.conn.recv()
        except (EOFError, OSError):
            worker.proc.join(5)
            code = worker.proc.exitcode
            worker.kill()
            yield Failure(
                index, "extract_crashed", f"worker exited with code {code} after {received} records"
            )
            return
        if kind == "records":
            received += len(payload)
            if payload:
                yield index, payload
        elif kind == "lost":
            yield Lost(index, payload)
        elif kind == "done":
            yield payload
            return
        else:
            yield Failure(index, *payload)
            return


def run_one_isolated(
    fn: Callable[[Any], Iterable[Any]], item: Any, what: str, *, timeout_s: float, memory_mb: int | None
) -> Any:
    """The first record `fn(item)` yields in a worker process; ChildProcessError when the worker fails.

    For a stage step that runs one shard per worker (CPU-parallel, and a crash costs one attempt).
    ChildProcessError is an OSError, so the task's retry treats a lost worker as the transient fault it
    usually is (the machine short of memory, a kill from outside).
    """
    for event in run_isolated(fn, [item], timeout_s=timeout_s, memory_mb=memory_mb):
        if isinstance(event, Failure):
            raise ChildProcessError(f"{what} failed: {event.reason}: {event.detail}")
        if isinstance(event, Lost):
            raise ChildProcessError(f"{what} failed: {event.detail}")
        if isinstance(event, tuple):
            return event[1][0]
    raise ChildProcessError(f"{what} returned nothing")
