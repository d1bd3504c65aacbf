"""Fuzzing ingest with mutated real files: no input, however malformed, fails a task or goes unaccounted.

A short, seeded budget (CI): a hypothesis property test of the extractors in their isolated worker, one
real ingest flow over a few hundred fuzzed files of every kind, and one test per minimized input the fuzzer
found (tests/data/fuzz). The long run is benchmarks/fuzz_ingest.py; the mutators are in tests/fuzzing.py.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from fuzzing import (
    MUTATORS,
    Seed,
    apply_ops,
    case_at,
    check_stage,
    extract_isolated,
    minimize,
    mutators_for,
    seed_corpus,
    violations,
    write_cases,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.extract import IngestConfig

REGRESSIONS = Path(__file__).parent / "data" / "fuzz"
# Findings whose fix is pending: file name -> the finding in /work/notes/fuzz_findings.md. The fix removes
# the entry (the xfail is strict, so a fixed input that is still listed fails the suite).
PENDING: dict[str, str] = {}
# Inputs named `<kind>-slow-<name>` are performance findings: the caps contain them (a timeout keeps the
# property), so their test also wants the extraction done within this budget (the fixed code takes < 0.1 s).
SLOW_BUDGET_S = 5.0

CFG = IngestConfig(file_timeout_s=20, worker_memory_mb=2048)
CI_SEED = 15
STAGE_CASES = 400
# WARCs weigh less in CI: each is an ingest group of its own (a task and a worker process each).
CI_WEIGHTS = {"pdf": 0.2, "html": 0.3, "warc": 0.1, "text": 0.4}


def _kept_failure(name: str, data: bytes) -> Path:
    """Save a failing input where a developer can pick it up (hypothesis replays the minimal one last)."""
    folder = Path(tempfile.gettempdir()) / "crucible-fuzz-failures"
    folder.mkdir(exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:12]}-{name}"
    path.write_bytes(data)
    return path


def _assert_property(path: Path, what: str, budget_s: float | None = None) -> None:
    """Extract one file in the isolated worker and fail with every violation of the property (and when it
    takes longer than budget_s, if given)."""
    result = extract_isolated(path, CFG, timeout_s=CFG.file_timeout_s)
    problems = violations(result)
    if budget_s is not None and (result.failures or result.seconds > budget_s):
        problems.append(f"took {result.seconds:.1f} s, over the {budget_s:g} s budget")
    if problems:
        kept = _kept_failure(path.name, path.read_bytes())
        pytest.fail(f"{what} (input saved as {kept}):\n" + "\n".join(problems))


def test_mutators_are_deterministic_and_change_their_input(shared_data: Path) -> None:
    seeds = seed_corpus(shared_data)
    for name in MUTATORS:
        pool = [s for s in seeds if name in mutators_for(s)]
        changed = 0
        for k in range(6):
            seed = pool[k * len(pool) // 6]
            out = apply_ops(seed, [(name, k)])
            assert out == apply_ops(seed, [(name, k)]), f"{name} is not deterministic"
            changed += out != seed.data
        assert changed, f"{name} left every input unchanged"


def test_minimize_keeps_the_failure() -> None:
    data = b"<html>" + b"x" * 500 + b"\xed\xa0\x80" + b"y" * 300 + b"</html>"
    assert minimize(data, lambda d: b"\xed\xa0\x80" in d, rounds=500) == b"\xed\xa0\x80"


def test_cases_are_reproducible_and_cover_every_kind(shared_data: Path) -> None:
    seeds = seed_corpus(shared_data)
    cases = [case_at(seeds, CI_SEED, i) for i in range(300)]
    assert cases[7] == case_at(seeds, CI_SEED, 7)
    assert {c.kind for c in cases} == {"pdf", "html", "warc", "text"}
    assert len({c.name for c in cases}) == len(cases)
    assert not any(c.name.startswith(".") for c in cases)  # hidden files are not inputs


def _draw_case(data: st.DataObject, seeds: tuple[Seed, ...]) -> tuple[Seed, list[tuple[str, int]]]:
    """A seed and a list of operations, drawn so that hypothesis can shrink both."""
    seed = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]
    op = st.tuples(st.sampled_from(mutators_for(seed)), st.integers(0, 2**32 - 1))
    return seed, data.draw(st.lists(op, max_size=4), label="ops")


@pytest.mark.slow
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_extractors_keep_the_property_on_mutated_inputs(shared_data: Path, data: st.DataObject) -> None:
    seed, ops = _draw_case(data, seed_corpus(shared_data))
    # Its own suffix first, so a failure shrinks toward the file named as what it is.
    suffixes = [seed.suffix, ".html", ".pdf", ".warc", ".jsonl", ".txt", ""]
    suffix = data.draw(st.sampled_from(suffixes), label="suffix")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"case{suffix}"
        path.write_bytes(apply_ops(seed, ops))
        _assert_property(path, f"seed {seed.origin}, ops {ops}, named {path.name}")


@pytest.mark.slow
def test_ingest_stage_accounts_for_every_fuzzed_file(
    prefect_api: str, shared_data: Path, tmp_path: Path
) -> None:
    from flows.ingest import run_ingest

    seeds = seed_corpus(shared_data)
    cases = [case_at(seeds, CI_SEED, i, CI_WEIGHTS, avoid_pending=True) for i in range(STAGE_CASES)]
    files = write_cases(cases, tmp_path / "in")
    summary = run_ingest([str(tmp_path / "in")], str(tmp_path / "run"), CFG, workers=2)
    check = check_stage(summary["stage_dir"], files, CFG)
    assert check.files == STAGE_CASES
    assert not check.unaccounted, f"inputs with neither documents nor drops: {check.unaccounted}"
    assert not check.over_time and not check.over_memory, (check.over_time, check.over_memory)
    assert check.documents == summary["documents"] and check.drops.total() == summary["drops"]
    assert check.documents > 0 and len(check.drops) > 5  # the cases reach extractors and many drop reasons


def _regressions() -> list[object]:
    """One test parameter per committed regression input, xfail while its finding is pending."""
    paths = sorted(p for p in REGRESSIONS.glob("*") if p.is_file()) if REGRESSIONS.is_dir() else []
    return [
        pytest.param(
            p,
            id=p.name,
            marks=[pytest.mark.xfail(strict=True, reason=f"{PENDING[p.name]}, fix pending")]
            if p.name in PENDING
            else [],
        )
        for p in paths
    ]


@pytest.mark.parametrize("path", _regressions())
def test_fuzz_regression_input(path: Path) -> None:
    budget = SLOW_BUDGET_S if "-slow-" in path.name else None
    _assert_property(path, f"regression input {path.name}", budget)


PAGE = (
    b"<html><head><title>Flood</title></head><body><article><h1>The flood</h1>"
    b"<p>The river rose slowly through the night, and by morning the lower fields were under water.</p>"
    b"<p>Farmers moved their animals to the hills while the town council met to discuss the old levee.</p>"
    b"</article></body></html>"
)


def _ingest_named(names: list[bytes], tmp_path: Path) -> None:
    """Ingest one small page under each (byte) file name: the stage completes, each is a document."""
    from flows.ingest import run_ingest

    inputs = tmp_path / "in"
    inputs.mkdir()
    # Linux names are bytes; Python carries the undecodable ones as lone surrogates (os.fsdecode).
    files = [inputs / os.fsdecode(n) for n in names]
    for f in files:
        f.write_bytes(PAGE)
    summary = run_ingest([str(inputs)], str(tmp_path / "run"), CFG, workers=2)
    check = check_stage(summary["stage_dir"], files, CFG)
    assert check.ok and check.documents == len(names), check


@pytest.mark.slow
def test_file_names_that_are_not_utf8(prefect_api: str, tmp_path: Path) -> None:
    _ingest_named([b"caf\xe9.txt", b"\xff\xfe.html", b"\xed\xa0\x80.md", b"ok.txt"], tmp_path)


@pytest.mark.slow
def test_file_names_with_braces(prefect_api: str, tmp_path: Path) -> None:
    _ingest_named([b"x{a,b}.txt", b"{0}.html", b"{cfg}.md", b"}{.txt", b"ok.txt"], tmp_path)
