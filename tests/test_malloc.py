"""model.malloc: freed tensor memory stays mapped while training on CPU, and is handed back afterwards."""

from __future__ import annotations

import ctypes
import resource
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model import malloc
from model.config import GPTConfig
from model.optim import TrainConfig, make_optimizer
from model.transformer import Transformer

needs_glibc = pytest.mark.skipif(malloc.glibc() is None, reason="malloc tuning needs glibc (Linux)")


@pytest.fixture
def untouched_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No opt-out and no malloc settings of the user's in the environment."""
    for name in (*malloc.USER_SETTINGS, "CRUCIBLE_MALLOC_TUNING"):
        monkeypatch.delenv(name, raising=False)


def settled_rss_mb() -> float:
    """Resident memory after glibc hands back its free pages, so a new block has to be faulted in."""
    # In a test process that ran other tests the heap may hold a free, resident 128 MiB already; the
    # block below would reuse it and show no growth whether or not the tuning keeps freed memory.
    malloc.glibc().malloc_trim(ctypes.c_size_t(0))
    return rss_mb()


def rss_mb() -> float:
    """This process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (VmHWM)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def huge_pages_always() -> bool:
    """True when the kernel backs every large anonymous mapping with 2 MiB pages (few faults anyway)."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return thp.exists() and "[always]" in thp.read_text()


def trainer() -> Callable[[int], float]:
    """A function that runs n training steps of the `tiny` preset (32 MiB of logits a step) and returns
    the minor page faults per step."""
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", 8192)
    model = Transformer(cfg)
    opt = make_optimizer(model, TrainConfig())
    x = torch.randint(0, cfg.vocab_size, (8, cfg.block_size))

    def steps(n: int) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

    return steps


@needs_glibc
@pytest.mark.usefixtures("untouched_env")
def test_training_steps_reuse_memory_instead_of_page_faulting_it_in() -> None:
    """Untuned, each step faults in tens of thousands of pages; tuned, almost none once the heap has grown,
    and what the heap keeps stays bounded."""
    if huge_pages_always():
        pytest.skip("transparent huge pages are 'always' here: a fresh mapping costs few page faults")
    steps = trainer()
    steps(2)
    untuned = steps(3)
    untuned_peak = peak_rss_mb()
    with malloc.reuse_freed_memory() as tuned:
        assert tuned
        steps(40)  # the heap grows while glibc's per-thread cache fills (model/malloc.py)
        reused = steps(40)
        extra = rss_mb() - untuned_peak
    assert untuned > 10_000, untuned
    assert reused < untuned / 20, (reused, untuned)
    # What the heap keeps beyond the untuned peak: measured 115-175 MB (4-6 times one step's 32 MB of
    # logits), reached in 20-100 steps and then flat, or growing by a block now and then.
    assert extra < 300, extra


@needs_glibc
@pytest.mark.usefixtures("untouched_env")
def test_memory_is_handed_back_when_the_block_ends() -> None:
    """Inside, a freed 128 MiB stays resident for reuse; on the way out malloc_trim returns it."""
    with malloc.reuse_freed_memory():
        start = settled_rss_mb()
        big = torch.ones(128 << 18)  # 128 MiB, touched
        del big
        kept = rss_mb() - start
    released = rss_mb() - start
    assert kept > 100, kept
    assert released < 30, released


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


@needs_glibc
@pytest.mark.usefixtures("untouched_env")
def test_only_the_outermost_block_hands_memory_back() -> None:
    """A nested block (the benchmark around train(), say) leaves the outer one's tuning in place."""
    with malloc.reuse_freed_memory():
        with malloc.reuse_freed_memory() as inner:
            assert inner
        start = settled_rss_mb()
        big = torch.ones(128 << 18)  # 128 MiB, touched
        del big
        assert rss_mb() - start > 100  # still tuned after the inner block ended
