"""The isolated extraction worker: hangs, crashes, memory blow-ups and errors cost one item, not the run."""

from __future__ import annotations

import os
import time

from tasks.isolate import Failure, Finished, Lost, run_isolated


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


def unsendable_records(n: int) -> list[object]:
    """Records of which the second (a lambda) and the fourth (nested too deep) do not pickle."""
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    return [n, lambda: 0, n + 1, deep, n + 2]


def test_a_record_that_does_not_pickle_is_lost_alone() -> None:
    # Pickling fails before anything is written, so the batch is resent record by record.
    events = _collect(unsendable_records, [10], timeout_s=30)
    assert [e for e in events if isinstance(e, tuple)] == [(0, [10]), (0, [11]), (0, [12])]
    lost = [e for e in events if isinstance(e, Lost)]
    assert [e.index for e in lost] == [0, 0]
    assert "function could not be sent" in lost[0].detail and "RecursionError" in lost[1].detail


def allocated(n: int) -> list[int]:
    """Allocate and touch n bytes; one record: their count."""
    block = bytearray(n)
    return [len(block)]


def test_the_memory_cap_counts_from_the_workers_start() -> None:
    # A forkserver child can start with hundreds of MB mapped (thread stacks, malloc arenas) and that
    # grows over a long run; the cap is what it may add. Here 1 GB is mapped before the cap is set.
    import subprocess
    import sys

    code = (
        "import mmap; from tasks.isolate import _limit_memory\n"
        "held = mmap.mmap(-1, 1 << 30, prot=mmap.PROT_READ)\n"
        "_limit_memory(512)\n"
        "block = bytearray(400 << 20)\n"
        "try:\n    bytearray(200 << 20)\nexcept MemoryError:\n    print('capped')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "capped", done.stderr[-500:]
    events = _collect(allocated, [100 << 20, 8 << 30], timeout_s=30, memory_mb=512)
    assert events[0] == (0, [100 << 20])
    assert [e.reason for e in events[1:]] == ["extract_out_of_memory"]


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
