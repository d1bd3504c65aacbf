"""Keep freed tensor memory in the process while training on CPU (glibc malloc only).

A training step allocates and frees the same large tensors every time (activations, gradients, the
logits). glibc serves any block above its mmap threshold (at most 32 MiB, however it adapts) with a fresh
`mmap` and returns it with `munmap` when the tensor is freed, so the next step page-faults the memory in
again and the kernel zeroes every page: on the `small` preset, 73,000 page faults and 0.15 CPU-seconds
of kernel time per step (benchmarks/RESULTS.md). Raising the mmap threshold and the trim threshold for the
run lets freed blocks go back on malloc's free lists, where the next step finds them already mapped.

The cost is memory. PyTorch allocates with posix_memalign, and glibc before 2.38 frees the few spare
bytes after each aligned block into its per-thread cache, where they keep the freed block from merging
with its neighbours; until that cache is full (7 entries per size) the same request is carved from fresh
heap. The heap grows for the first 20-100 steps, then stays flat or takes a block now and then: 1,416
against an untuned peak of 1,303 MB (+9%) on the `small` preset, 610-670 against 495 MB (+24%) on `tiny`
(benchmarks/RESULTS.md).

On the way out the thresholds go back to fixed values near glibc's own (mmap above 32 MiB, trim above
128 KiB) and `malloc_trim` hands the free memory back, so a process that goes on after training does not
keep its peak. Set CRUCIBLE_MALLOC_TUNING=0, or any of glibc's own MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES, to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# While training: serve blocks up to 256 MiB from the heap, and keep up to 2 GiB free at its top (mallopt
# takes a C int, so 2 GiB is as far as it goes). Larger blocks still get their own mapping: a step that
# allocates them computes for long enough that faulting them in is a small share of it, and it bounds
# what fragmentation can cost (below).
TRAIN_MMAP_THRESHOLD = 256 << 20
TRAIN_TRIM_THRESHOLD = 2**31 - 1
# Afterwards: glibc's dynamic ceiling for the mmap threshold, and its default trim threshold.
AFTER_MMAP_THRESHOLD = 32 << 20
AFTER_TRIM_THRESHOLD = 128 << 10
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def glibc() -> Any | None:
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other C libraries name theirs differently
        return None
    # gnu_get_libc_version exists in glibc alone; another malloc's mallopt may mean something else.
    needed = ("mallopt", "malloc_trim", "gnu_get_libc_version")
    return libc if all(hasattr(libc, name) for name in needed) else None


def tuning_wanted(env: Mapping[str, str]) -> bool:
    """False when the user opted out or tuned malloc themselves."""
    if env.get("CRUCIBLE_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return not any(name in env for name in USER_SETTINGS)


def _set(libc: Any, mmap_threshold: int, trim_threshold: int) -> bool:
    """Set both thresholds; True when glibc took both."""
    # Some glibc releases refuse an mmap threshold above 32 MiB; that limit still helps most blocks.
    took_mmap = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
    if not took_mmap:
        took_mmap = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(AFTER_MMAP_THRESHOLD))
    took_trim = libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold))
    return bool(took_mmap and took_trim)


# Open reuse_freed_memory blocks in this process: only the outermost sets and restores the thresholds.
_open_blocks = [0]


@contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed large blocks stay mapped for reuse; yields whether malloc was tuned."""
    libc = glibc() if enabled and tuning_wanted(os.environ) else None
    if libc is None:
        yield False
        return
    outermost = _open_blocks[0] == 0
    _open_blocks[0] += 1
    try:
        tuned = _set(libc, TRAIN_MMAP_THRESHOLD, TRAIN_TRIM_THRESHOLD) if outermost else True
        if tuned and outermost:
            log.info("malloc keeps freed memory for the next step (CRUCIBLE_MALLOC_TUNING=0 turns it off)")
        yield tuned
    finally:
        _open_blocks[0] -= 1
        if outermost:  # also when glibc took only one threshold
            _set(libc, AFTER_MMAP_THRESHOLD, AFTER_TRIM_THRESHOLD)
            libc.malloc_trim(ctypes.c_size_t(0))
