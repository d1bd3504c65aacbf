"""Dedup stage functions without Prefect: keep rule, determinism, validation, index, real-text accuracy."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import lxml.html
import numpy as np
import pytest
from conftest import write_doc_stage
from pydantic import ValidationError
from test_minhash import BOOKS, _book_paragraphs, _chunks, _variant

from flows.config import load_config
from storage.layout import read_manifest
from storage.schemas import DEDUP_SCHEMA, DOCUMENT_SCHEMA, Document, new_document
from storage.shards import file_fingerprint, read_shard
from tasks.dedup_config import DUP_EXACT, DUP_MINHASH, DedupConfig
from tasks.dedup_index import DedupIndexError, commit, snapshot
from tasks.dedup_sigs import SignatureError, SigRef, signature_shard, validate_signatures
from tasks.dedup_stage import bucket_step, cluster_step, filter_shard, index_rows, sidecar_name
from tasks.minhash import jaccard
from tasks.shingles import shingle_hashes
from tasks.web import HtmlConfig, extract_html_file

# Letters only: normalization maps every number to 0, so "w1" and "w2" would be the same word.
VOCAB = ["".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=7)) for i in range(3000)]


def _text(rng: random.Random, words: int = 200) -> str:
    """A synthetic document of random words in a few paragraphs."""
    body = [" ".join(rng.choices(VOCAB, k=words // 4)) for _ in range(4)]
    return "\n\n".join(body)


def _edit(text: str, rng: random.Random, share: float = 0.005) -> str:
    """The text with about `share` of its words replaced."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(share * len(words)))):
        words[i] = rng.choice(VOCAB).upper()
    return " ".join(words)


def _doc(text: str, name: str) -> Document:
    """A document whose id derives from a stable name."""
    return new_document(text, source="text", uri=f"mem://{name}")


def _dedup(
    stage: Path, work: Path, cfg: DedupConfig, index: Path | None = None, base: str = "run"
) -> tuple[list[SigRef], dict[str, dict[str, Any]], dict[str, Any]]:
    """Signatures, buckets and clustering over a stage; returns refs, sidecar rows by id and the summary.

    The work folder stands for the run root.
    """
    entries = read_manifest(stage)["shards"]
    refs = [
        signature_shard(str(stage / e["path"]), e["fingerprint"], str(work / "sigs"), cfg) for e in entries
    ]
    index = index or work / "index"
    parts = snapshot(index, cfg, exclude_base=base, run_root=str(work))
    pairs = str(work / "pairs.npy")
    bucket_step(refs, str(index), parts, pairs, cfg)
    summary = cluster_step(refs, str(index), parts, pairs, str(work / "out"), cfg)
    rows = {}
    for e in entries:
        for row in read_shard(work / "out" / sidecar_name(e["path"]), DEDUP_SCHEMA).to_pylist():
            rows[row["id"]] = row
    return refs, rows, summary


def _family(rng: random.Random, prefix: str = "") -> list[Document]:
    """Exact and near duplicates with known keepers, plus unique documents."""
    base_a, base_b = _text(rng), _text(rng)
    return [
        _doc(base_a, prefix + "a"),
        _doc("  " + base_a.upper() + "  ", prefix + "a-shouting"),  # same normalized text, longer: kept
        _doc(base_b, prefix + "b"),
        _doc(_edit(base_b, rng), prefix + "b-edited"),
        _doc(_edit(base_b, rng), prefix + "b-edited-2"),
        *[_doc(_text(rng), f"{prefix}unique-{i}") for i in range(6)],
    ]


def test_keep_rule_reasons_and_clusters(tmp_path: Path) -> None:
    docs = _family(random.Random(1))
    stage = write_doc_stage(tmp_path / "curate", [docs[:3], docs[3:7], docs[7:]])
    _, rows, summary = _dedup(stage, tmp_path / "w", DedupConfig())
    by_name = {d.uri.removeprefix("mem://"): rows[d.id] for d in docs}
    assert summary[DUP_EXACT] == 1 and summary[DUP_MINHASH] == 2 and summary["clusters"] == 2
    a, shout = by_name["a"], by_name["a-shouting"]
    assert a["drop_reason"] == DUP_EXACT and a["kept_id"] == shout["id"] and a["similarity"] == 1.0
    assert shout["drop_reason"] is None and shout["kept_id"] == shout["id"]
    assert a["cluster_id"] == shout["cluster_id"] == min(a["id"], shout["id"])
    b_family = [by_name[n] for n in ("b", "b-edited", "b-edited-2")]
    kept = [r for r in b_family if r["drop_reason"] is None]
    assert len(kept) == 1 and {r["kept_id"] for r in b_family} == {kept[0]["id"]}
    lengths = {d.id: len(d.text) for d in docs}
    longest = max(lengths[r["id"]] for r in b_family)
    ties = sorted(r["id"] for r in b_family if lengths[r["id"]] == longest)
    assert kept[0]["id"] == ties[0]  # the longest, then the lowest id
    for r in b_family:
        if r["drop_reason"]:
            assert r["drop_reason"] == DUP_MINHASH and 0.8 <= r["similarity"] < 1.0
    uniques = [by_name[f"unique-{i}"] for i in range(6)]
    assert all(r["drop_reason"] is None and r["cluster_id"] is None for r in uniques)


def test_filter_writes_kept_documents(tmp_path: Path) -> None:
    docs = _family(random.Random(2))
    stage = write_doc_stage(tmp_path / "curate", [docs])
    _, rows, _ = _dedup(stage, tmp_path / "w", DedupConfig())
    entry = read_manifest(stage)["shards"][0]
    out = tmp_path / "w" / "out"
    sidecar = out / sidecar_name(entry["path"])
    ref = filter_shard(
        str(stage / entry["path"]), entry["fingerprint"], file_fingerprint(sidecar), str(out), 100
    )
    kept = read_shard(tmp_path / "w" / "out" / entry["path"], DOCUMENT_SCHEMA)
    assert set(kept.column("id").to_pylist()) == {i for i, r in rows.items() if r["drop_reason"] is None}
    assert ref.rows == len(docs) - 3 and ref.drop_reasons == {DUP_EXACT: 1, DUP_MINHASH: 2}
    # A sidecar that is not the one the caller decided on (rewritten meanwhile) is refused.
    with pytest.raises(ValueError, match="changed while this run was filtering"):
        filter_shard(str(stage / entry["path"]), entry["fingerprint"], "0" * 32, str(out), 100)


def test_same_decisions_whatever_the_sharding(tmp_path: Path) -> None:
    rng = random.Random(3)
    docs = [d for k in range(4) for d in _family(rng, f"{k}-")]
    outcomes = []
    for k, split in enumerate(([docs], [docs[:7], docs[7:20], docs[20:]], [docs[30:], docs[:30]])):
        stage = write_doc_stage(tmp_path / f"curate{k}", split)
        _, rows, _ = _dedup(stage, tmp_path / f"w{k}", DedupConfig())
        outcomes.append(rows)
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert len(outcomes[0]) == 44 and sum(r["drop_reason"] is not None for r in outcomes[0].values()) == 12


def test_signature_files_are_validated(tmp_path: Path) -> None:
    stage = write_doc_stage(tmp_path / "curate", [_family(random.Random(4))])
    entry = read_manifest(stage)["shards"][0]
    cfg = DedupConfig()
    ref = signature_shard(str(stage / entry["path"]), entry["fingerprint"], str(tmp_path / "sigs"), cfg)
    validate_signatures(ref, cfg, rows=entry["rows"])
    with pytest.raises(SignatureError, match="other MinHash settings"):
        validate_signatures(ref, DedupConfig(minhash="aggressive"))
    with pytest.raises(SignatureError, match="rows"):
        validate_signatures(ref, cfg, rows=entry["rows"] + 1)
    with pytest.raises(SignatureError, match="another version"):
        validate_signatures(ref.model_copy(update={"source_fingerprint": "0" * 32}), cfg)
    data = Path(ref.path).read_bytes()
    Path(ref.path).write_bytes(data[: len(data) // 2])
    with pytest.raises(SignatureError, match="not a complete signature file"):
        validate_signatures(ref, cfg)


def test_index_dedups_later_runs_against_earlier_ones(tmp_path: Path) -> None:
    rng = random.Random(5)
    first = [_doc(_text(rng), f"old-{i}") for i in range(8)]
    cfg = DedupConfig()
    index = tmp_path / "index"
    stage1 = write_doc_stage(tmp_path / "curate1", [first])
    refs, rows, _ = _dedup(stage1, tmp_path / "w1", cfg, index, base="run1")
    assert all(r["drop_reason"] is None for r in rows.values())
    entry = read_manifest(stage1)["shards"][0]
    out1 = tmp_path / "w1" / "out"
    sidecar = file_fingerprint(out1 / sidecar_name(entry["path"]))
    filter_shard(str(stage1 / entry["path"]), entry["fingerprint"], sidecar, str(out1), 100)
    commit(index, cfg, "run1", index_rows(refs, str(out1), cfg), stage=str(out1), run_root=str(out1.parent))

    second = [_doc(_edit(first[0].text, rng), "new-near"), _doc(first[1].text, "new-exact")]
    second += [_doc(_text(rng), f"new-{i}") for i in range(3)]
    stage2 = write_doc_stage(tmp_path / "curate2", [second])
    _, rows, summary = _dedup(stage2, tmp_path / "w2", cfg, index, base="run2")
    assert summary["indexed_documents"] == 8 and summary["documents"] == 5
    assert rows[second[0].id]["drop_reason"] == DUP_MINHASH and rows[second[0].id]["kept_id"] == first[0].id
    assert rows[second[1].id]["drop_reason"] == DUP_EXACT and rows[second[1].id]["kept_id"] == first[1].id
    assert rows[second[0].id]["similarity"] >= 0.8  # verified against the earlier run's stored text
    assert all(rows[d.id]["drop_reason"] is None for d in second[2:])
    # When the earlier run's text is gone or unreadable, the LSH verdict stands, marked by an unknown
    # similarity.
    data = (out1 / entry["path"]).read_bytes()
    for k, damaged in enumerate((b"", data[: len(data) // 2])):
        (out1 / entry["path"]).unlink(missing_ok=True)
        if damaged:
            (out1 / entry["path"]).write_bytes(damaged)
        _, rows, _ = _dedup(stage2, tmp_path / f"w2b-{k}", cfg, index, base="run2")
        assert rows[second[0].id]["drop_reason"] == DUP_MINHASH and rows[second[0].id]["similarity"] is None

    # A run never dedups against its own earlier commit, so re-running it gives the same answer.
    _, again, _ = _dedup(stage1, tmp_path / "w1b", cfg, index, base="run1")
    assert all(r["drop_reason"] is None for r in again.values())
    with pytest.raises(DedupIndexError, match="minhash settings"):
        snapshot(index, DedupConfig(minhash="conservative"), exclude_base="x", run_root=str(tmp_path))


def test_a_run_root_never_dedups_against_its_own_earlier_parts(tmp_path: Path) -> None:
    """Re-running a run root's dedup with other settings (or after a code change) keeps its documents.

    Its earlier output is superseded, not history: deduping against it removed every document again.
    """
    rng = random.Random(6)
    docs = [_doc(_text(rng), f"doc-{i}") for i in range(6)]
    docs.append(_doc(_edit(docs[0].text, rng), "doc-0-edited"))
    stage = write_doc_stage(tmp_path / "curate", [docs])
    index, root = tmp_path / "index", tmp_path / "root"
    cfg, other = DedupConfig(), DedupConfig(verify_threshold=0.85)
    refs, first, _ = _dedup(stage, root, cfg, index, base="run1")
    commit(
        index,
        cfg,
        "run1",
        index_rows(refs, str(root / "out"), cfg),
        stage=str(root / "out"),
        run_root=str(root),
    )
    _, again, summary = _dedup(stage, root, other, index, base="run1-other-settings")
    assert summary["indexed_documents"] == 0
    assert {i: r["drop_reason"] for i, r in again.items()} == {i: r["drop_reason"] for i, r in first.items()}
    assert sum(r["drop_reason"] is None for r in again.values()) == 6
    # Another run root sees the first one's kept documents, and a re-ingested copy of one of them goes.
    _, elsewhere, summary = _dedup(stage, tmp_path / "root2", other, index, base="run2")
    assert summary["indexed_documents"] == 6 and all(r["drop_reason"] for r in elsewhere.values())


def test_config_presets_and_validation() -> None:
    assert DedupConfig().minhash.permutations == 112
    assert (
        DedupConfig(minhash="aggressive").minhash.bands,
        DedupConfig(minhash="aggressive").minhash.rows,
    ) == (
        20,
        5,
    )
    assert DedupConfig(minhash={"bands": 10, "rows": 10}).minhash.permutations == 100
    with pytest.raises(ValidationError, match="preset"):
        DedupConfig(minhash="nope")
    with pytest.raises(ValidationError, match="verify_threshold"):
        DedupConfig(verify_threshold=1.5)
    cfg = load_config(None, ["dedup.minhash=conservative", "dedup.verify=false"])
    assert cfg.dedup.minhash.rows == 13 and cfg.dedup.verify is False
    assert 0.90 < DedupConfig().detection_at(0.8) < 0.94


def _labeled_corpus(shared: Path) -> tuple[list[Document], np.ndarray]:
    """Gutenberg chunks, one realistic variant of each and a few exact copies; family = original index."""
    rng = random.Random(42)
    texts: list[str] = []
    for name in BOOKS:
        chunks = _chunks(_book_paragraphs(shared / "text" / "gutenberg" / name))
        texts += [chunks[i] for i in sorted(rng.sample(range(len(chunks)), 70))]
    n = len(texts)
    family = list(range(n)) + list(range(n))
    texts += [_variant(t, rng) for t in texts[:n]]
    for i in rng.sample(range(n), 10):
        texts.append(texts[i].replace("\n", "\n\n"))
        family.append(i)
    # Hard negatives: the same opening with a different ending (Jaccard ~0.6-0.8), each its own family.
    for k, i in enumerate(rng.sample(range(n), 60)):
        words, other = texts[i].split(" "), texts[(i + 1) % n].split(" ")
        cut = int(len(words) * rng.uniform(0.8, 0.9))
        texts.append(" ".join(words[:cut] + other[-(len(words) - cut) :]))
        family.append(10_000 + k)
    return [_doc(t, f"doc-{k}") for k, t in enumerate(texts)], np.array(family)


def test_recall_and_precision_against_exact_jaccard(shared_data: Path, tmp_path: Path) -> None:
    docs, family = _labeled_corpus(shared_data)
    stage = write_doc_stage(tmp_path / "curate", [docs[i : i + 150] for i in range(0, len(docs), 150)])
    shingles = [np.unique(shingle_hashes(d.text, 5)) for d in docs]
    # The truth is exact Jaccard over every pair of documents (120k pairs), whatever was planted.
    truth = [
        (i, j)
        for i, j in itertools.combinations(range(len(docs)), 2)
        if jaccard(shingles[i], shingles[j]) >= 0.8
    ]
    assert len(truth) >= 140 and any(family[i] != family[j] for i, j in truth)
    index = {d.id: k for k, d in enumerate(docs)}
    results = {}
    for verify, resolution in ((True, "star"), (True, "component"), (False, "star")):
        cfg = DedupConfig(verify=verify, resolution=resolution)
        _, rows, _ = _dedup(stage, tmp_path / f"w{verify}{resolution}", cfg)
        kept_ids = {i for i, r in rows.items() if r["drop_reason"] is None}
        # Recall: a duplicate pair is handled when the output no longer holds both of its documents.
        recall = np.mean([not {docs[i].id, docs[j].id} <= kept_ids for i, j in truth])
        removed = [index[i] for i, r in rows.items() if r["drop_reason"]]
        kept = [index[rows[docs[k].id]["kept_id"]] for k in removed]
        # A removal is right when the removed document is at least 0.8 similar to the one kept for it.
        correct = [jaccard(shingles[k], shingles[m]) >= 0.8 for k, m in zip(removed, kept, strict=True)]
        results[verify, resolution] = (recall, float(np.mean(correct)))
        print(f"verify={verify} {resolution}: recall {recall:.3f}, precision {np.mean(correct):.3f}")
        assert recall >= 0.95, recall
    assert results[True, "star"][1] >= 0.99
    # Verification and the star rule are what keep precision up on the hard negatives.
    assert results[True, "component"][1] < results[True, "star"][1]
    assert results[False, "star"][1] < 0.99


def _page_texts(shared: Path) -> list[str]:
    """Full visible text of every PostgreSQL and Python docs page, navigation included."""
    texts = []
    for folder in ("postgresql-15-docs", "python-3.11-docs"):
        for path in sorted((shared / "html" / folder).rglob("*.html")):
            page = lxml.html.fromstring(path.read_bytes())
            for node in page.xpath("//script|//style"):
                node.drop_tree()
            texts.append(page.text_content())
    return texts


def test_documentation_pages_sharing_navigation_survive(shared_data: Path, tmp_path: Path) -> None:
    pages = sorted((shared_data / "html").glob("*-docs/**/*.html"))
    extracted = [d for p in pages for d in extract_html_file(p, HtmlConfig()) if isinstance(d, Document)]
    full = [_doc(t, f"page-{k}") for k, t in enumerate(_page_texts(shared_data))]
    assert len(full) == 370 and len(extracted) > 300
    for k, (docs, preset) in enumerate(((extracted, "fineweb"), (full, "fineweb"), (full, "aggressive"))):
        stage = write_doc_stage(tmp_path / f"c{k}", [docs])
        _, rows, summary = _dedup(stage, tmp_path / f"w{k}", DedupConfig(minhash=preset))
        removed = [r for r in rows.values() if r["drop_reason"]]
        assert removed == [], (preset, removed[:3], summary)
    # The aggressive preset does propose shared-navigation pairs; verification is what rejects them.
    assert summary["links_rejected"] > 0
