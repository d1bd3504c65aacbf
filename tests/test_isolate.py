"""The isolated extraction worker: hangs, crashes, memory blow-ups and errors cost one item, not the run."""

from __future__ import annotations

import os
import time

from tasks.isolate import Failure, Finished, run_isolated


def _collect(fn: object, items: list, **kw: object) -> list:
    """All events of a run but the Finished ones, in order."""
    return [e for e in run_isolated(fn, items, **kw) if not isinstance(e, Finished)]  # type: ignore[arg-type]


def test_every_item_ends_with_its_time_and_the_workers_peak_memory() -> None:
    events = list(run_isolated(list, ["ab", ""], timeout_s=30))  # type: ignore[arg-type]
    ends = [e for e in events if isinstance(e, Finished)]
    assert [e.index for e in ends] == [0, 1]
    assert all(0 <= e.seconds < 30 and e.peak_rss_mb is not None and 5 < e.peak_rss_mb < 2000 for e in ends)
    killed = list(run_isolated(os._exit, [3], timeout_s=30))  # type: ignore[arg-type]
    assert isinstance(killed[-1], Finished) and killed[-1].peak_rss_mb is None


def test_records_stream_back_in_order() -> None:
    # `list` turns each string item into its characters: a stand-in extractor from the stdlib, so the
    # forkserver child can import it by name.
    events = _collect(list, ["ab", "", "cde"], timeout_s=30)
    assert events == [(0, ["a", "b"]), (2, ["c", "d", "e"])]


def test_a_hanging_item_is_killed_and_the_rest_continue() -> None:
    start = time.perf_counter()
    events = _collect(time.sleep, [30], timeout_s=1.5)
    assert len(events) == 1 and isinstance(events[0], Failure)
    assert events[0].reason == "extract_timeout" and "no progress for 1.5 s" in events[0].detail
    assert time.perf_counter() - start < 20
    events = _collect(list, ["x"], timeout_s=30)
    assert events == [(0, ["x"])]


def test_a_crashing_item_is_recorded_and_the_worker_replaced() -> None:
    events = _collect(os._exit, [3], timeout_s=30)
    assert events == [Failure(0, "extract_crashed", "worker exited with code 3 after 0 records")]


def test_memory_blowup_hits_the_cap_not_the_machine() -> None:
    events = _collect(bytearray, [8 << 30], timeout_s=30, memory_mb=1024)
    assert [e.reason for e in events] == ["extract_out_of_memory"]


def test_extractor_exception_costs_one_item() -> None:
    events = _collect(int, ["12", "not a number"], timeout_s=30)
    assert isinstance(events[0], Failure) and events[0].reason == "extract_error"
    assert "int" in events[0].detail or "iterable" in events[0].detail
    assert isinstance(events[1], Failure) and "ValueError" in events[1].detail


def test_a_main_from_stdin_is_refused_with_a_clear_error() -> None:
    # Workers re-import __main__; from stdin they would all crash, so the run stops with a reason instead.
    import subprocess
    import sys

    code = "from tasks.isolate import run_isolated; print(list(run_isolated(list, ['ab'], timeout_s=5)))"
    done = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True)
    assert done.returncode == 1 and "is not a file" in done.stderr
