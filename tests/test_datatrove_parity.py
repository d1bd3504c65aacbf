"""Parity with datatrove's Gopher, C4 and FineWeb filters on real documents (skips without datatrove)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from tasks.heur_lines import c4_clean
from tasks.heuristics import FilterConfig

# ImportError too: datatrove installed without spaCy or with a broken dependency cannot run either.
pytest.importorskip(
    "datatrove", reason="datatrove not importable: pip install datatrove==0.10.1 spacy", exc_type=ImportError
)
pytest.importorskip(
    "spacy",
    reason="spaCy (datatrove's word tokenizer) not importable: pip install spacy",
    exc_type=ImportError,
)


def _bench() -> types.ModuleType:
    """benchmarks/bench_heuristics.py, which holds the document loader and the comparison."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_heuristics.py"
    spec = importlib.util.spec_from_file_location("bench_heuristics", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_c4_cleaned_text_matches_datatrove(shared_data: Path) -> None:
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter

    bench = _bench()
    docs = [d for d in bench._text_documents(shared_data) if "ccnet" in d[0] or "gutenberg/pg11-" in d[0]]
    assert len(docs) == 21  # 20 CCNet documents and Alice in Wonderland
    theirs = C4QualityFilter(min_num_sentences=-1)
    cfg = FilterConfig().c4
    for name, text in docs:
        doc = Document(text=text, id=name)
        assert theirs.filter(doc) is True
        assert c4_clean(text, cfg)[0] == doc.text, name


@pytest.mark.slow
def test_keep_drop_agreement_with_datatrove(shared_data: Path) -> None:
    """Measured on this sample (1,985 docs): Gopher repetition 99.95%, the other filters 100%."""
    bench = _bench()
    docs = bench.parity_sample(bench.load_documents(shared_data))
    assert len(docs) == 1985
    report = bench.compare(docs)
    bench.print_agreement(report)  # shown with -s: the agreement table and disagreement classes
    for name in (*bench.FILTERS, "chain"):
        r = report[name]
        assert r["rate"] >= 0.98, (name, r["classes"].most_common(5))
        not_fortunes = [(a, n) for g, (a, n) in r["groups"].items() if "fortunes" not in g]
        assert sum(a for a, _ in not_fortunes) / sum(n for _, n in not_fortunes) >= 0.98, name
    # The junk file (an FTP listing published as a book) is dropped by both chains, for the same rule.
    (junk,) = [text for name, text in docs if "quality-negatives" in name]
    assert bench.our_chain(bench.our_configs()["chain"])(junk) == "gopher_top_4_gram"
    assert bench.datatrove_chain(bench.datatrove_filters())(junk) == "gopher_repetition:top_4_gram"
