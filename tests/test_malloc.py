"""model.malloc: freed tensor memory stays mapped while training on CPU, and is handed back afterwards."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
import torch

from model import malloc

BLOCK = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): always mmap'd by default
needs_glibc = pytest.mark.skipif(malloc.glibc() is None, reason="malloc tuning needs glibc (Linux)")


def faults_per_round(rounds: int = 10) -> float:
    """Minor page faults per allocate-touch-free round of a BLOCK-byte tensor."""
    torch.empty(BLOCK // 4).fill_(1.0)  # the first round may map memory either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        torch.empty(BLOCK // 4).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


def rss_mb() -> float:
    """This process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def huge_pages_always() -> bool:
    """True when the kernel backs every large anonymous mapping with 2 MiB pages (few faults anyway)."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return thp.exists() and "[always]" in thp.read_text()


@needs_glibc
def test_freed_blocks_are_reused_without_page_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each round of a 64 MiB tensor page-faults all of it in again by default, and none of it tuned."""
    if huge_pages_always():
        pytest.skip("transparent huge pages are 'always' here: a fresh mapping costs few page faults")
    monkeypatch.delenv("CRUCIBLE_MALLOC_TUNING", raising=False)
    for name in malloc.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    untuned = faults_per_round()
    with malloc.reuse_freed_memory() as tuned:
        assert tuned
        reused = faults_per_round()
    after = faults_per_round()
    pages = BLOCK / resource.getpagesize()
    assert untuned > 0.5 * pages, untuned
    assert reused < 0.01 * pages, reused
    assert after > 0.5 * pages, after  # the fixed thresholds afterwards map a 64 MiB block again


@needs_glibc
def test_memory_is_handed_back_when_the_block_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside, a freed 256 MiB stays resident for reuse; on the way out malloc_trim returns it."""
    for name in (*malloc.USER_SETTINGS, "CRUCIBLE_MALLOC_TUNING"):
        monkeypatch.delenv(name, raising=False)
    with malloc.reuse_freed_memory():
        start = rss_mb()
        big = torch.ones(256 << 18)  # 256 MiB, touched
        del big
        kept = rss_mb() - start
    released = rss_mb() - start
    assert kept > 200, kept
    assert released < 50, released


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, True),
        ({"CRUCIBLE_MALLOC_TUNING": "1"}, True),
        ({"CRUCIBLE_MALLOC_TUNING": "0"}, False),
        ({"CRUCIBLE_MALLOC_TUNING": "off"}, False),
        ({"MALLOC_MMAP_THRESHOLD_": "131072"}, False),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, False),
    ],
)
def test_the_user_can_opt_out_or_tune_malloc_themselves(env: dict[str, str], wanted: bool) -> None:
    """CRUCIBLE_MALLOC_TUNING=0 or glibc's own settings leave malloc alone."""
    assert malloc.tuning_wanted(env) is wanted


def test_disabled_or_opted_out_tunes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The block still runs; it says malloc was left alone."""
    with malloc.reuse_freed_memory(enabled=False) as tuned:
        assert not tuned
    monkeypatch.setenv("CRUCIBLE_MALLOC_TUNING", "0")
    with malloc.reuse_freed_memory() as tuned:
        assert not tuned
