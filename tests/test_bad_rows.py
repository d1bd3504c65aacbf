"""Unusable rows in stored shards (invalid UTF-8, nulls, oversized values): dropped with a reason, no crash.

A shard of good documents with bad rows mixed in goes through curate, dedup, tokenizer training,
tokenization and quality reading; the good documents must come out exactly as they do from the same shard
without the bad rows, and every bad row must be accounted for with its reason. Pure step functions only.
"""

from __future__ import annotations

import logging
import random
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_curate import SENTENCES

from storage.rows import INVALID_UTF8, NULL_FIELD, TOO_LARGE, check_batch, per_row, valid_batches
from storage.schemas import (
    DEDUP_SCHEMA,
    DOCUMENT_SCHEMA,
    DROP_SCHEMA,
    SCORES_SCHEMA,
    Document,
    documents_table,
    new_document,
)
from storage.shards import file_fingerprint, read_shard, write_shard
from storage.tokens import open_token_shard
from tasks.dedup_config import DedupConfig
from tasks.dedup_report import cluster_summary
from tasks.dedup_sigs import read_signatures, signature_shard
from tasks.dedup_stage import bucket_step, cluster_step, filter_shard, index_rows, sidecar_name
from tasks.heuristics import FilterConfig, decide, score_text
from tasks.langid import LangIdConfig, detect_languages
from tasks.minhash import MinHashConfig, band_keys, signatures
from tasks.quality import read_texts
from tasks.scoring import CurateConfig, score_shard, select_shard
from tasks.scoring import sidecar_name as scores_name
from tasks.tokenize_shards import TokenizeConfig, tokenize_shard, train_tokenizer
from tasks.tokenizer import TokenizerConfig, load

BROKEN = b"\xff\xfe"  # never valid UTF-8
BAD_COLUMNS = ("text", "id", "title", "meta_json")


def _good_docs() -> list[Document]:
    """English prose documents every curate filter keeps, one pair of exact duplicates among them."""
    rng = random.Random(7)
    texts = ["\n".join(rng.sample(SENTENCES, 9)) for _ in range(8)]
    docs = [
        new_document(t, source="text", uri=f"file:///in/{i}.txt", title=f"doc {i}")
        for i, t in enumerate(texts)
    ]
    return [*docs, new_document(texts[0], source="text", uri="file:///in/copy.txt")]


def _bad_docs(good: list[Document]) -> list[Document]:
    """One document per column to break; the title one is a longer exact copy of the first good document,
    so if it joined clusters it would win the keep rule and remove that document."""
    twin = "  " + good[0].text.upper() + "  "
    texts = {"title": twin, "text": SENTENCES[0] * 3, "id": SENTENCES[1] * 3, "meta_json": SENTENCES[2] * 3}
    return [
        new_document(texts[c], source="text", uri=f"file:///bad/{c}.txt", title="broken", meta={"c": c})
        for c in BAD_COLUMNS
    ]


def _break(table: pa.Table, row: int, column: str) -> pa.Table:
    """The table with invalid UTF-8 spliced into one value (Parquet stores it; only decoding fails)."""
    raw = [None if v is None else v.encode() for v in table.column(column).to_pylist()]
    raw[row] = raw[row][:3] + BROKEN + raw[row][3:]
    broken = pa.array(raw, pa.binary()).view(pa.string())
    return table.set_column(table.schema.get_field_index(column), DOCUMENT_SCHEMA.field(column), broken)


def _write(path: Path, table: pa.Table, version: int) -> Path:
    """Write a documents shard as schema version 2, or as version 1 (no input_uri column)."""
    if version == 2:
        write_shard(path, table, DOCUMENT_SCHEMA)
        return path
    old = table.drop_columns(["input_uri"])
    meta = {b"crucible.kind": b"documents", b"crucible.schema_version": b"1"}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(old.replace_schema_metadata(meta), path)
    return path


def _shards(tmp_path: Path, version: int) -> tuple[Path, Path, dict[str, str]]:
    """A clean shard of the good documents, the same with a bad row per column mixed in, and the bad
    rows' readable ids by broken column."""
    good = _good_docs()
    bad = _bad_docs(good)
    # Bad rows at the start, in the middle and at the end, so positions are exercised everywhere.
    order = [bad[0], *good[:4], bad[1], bad[2], *good[4:], bad[3]]
    table = documents_table(order)
    readable = {}
    for doc, column in zip(bad, BAD_COLUMNS, strict=True):
        table = _break(table, order.index(doc), column)
        readable[column] = doc.id[:3] + "\ufffd\ufffd" + doc.id[3:] if column == "id" else doc.id
    clean = _write(tmp_path / "clean" / "shard-00000.parquet", documents_table(good), 2)
    broken = _write(tmp_path / "bad" / "shard-00000.parquet", table, version)
    return clean, broken, readable


def _curate(src: Path, out: Path, cfg: CurateConfig) -> tuple[Any, Any, pa.Table, pa.Table]:
    """Score and select one shard: the two refs, the final sidecar and the kept documents."""
    scored = score_shard(str(src), file_fingerprint(src), str(out / "scores"), cfg)
    scored_path = out / "scores" / scored.path
    ref = select_shard(str(scored_path), file_fingerprint(scored_path), str(out / "final"), cfg, None)
    side = read_shard(out / "final" / scores_name(ref.path), SCORES_SCHEMA)
    return scored, ref, side, read_shard(out / "final" / ref.path, DOCUMENT_SCHEMA)


def _rows_by_id(table: pa.Table) -> dict[str, dict[str, Any]]:
    """Sidecar rows keyed by id."""
    return {r["id"]: r for r in table.to_pylist()}


@pytest.mark.parametrize("version", [2, 1])
def test_curate_drops_bad_rows_with_their_reason(tmp_path: Path, version: int) -> None:
    clean, broken, readable = _shards(tmp_path, version)
    cfg = CurateConfig()
    c_scored, c_ref, c_side, c_kept = _curate(clean, tmp_path / "c", cfg)
    b_scored, b_ref, b_side, b_kept = _curate(broken, tmp_path / "b", cfg)
    assert b_kept.to_pylist() == c_kept.to_pylist() and c_kept.num_rows == 9
    rows = _rows_by_id(b_side)
    assert b_side.num_rows == c_side.num_rows + 4  # every input row is in the sidecar
    assert {i: r for i, r in rows.items() if i not in readable.values()} == _rows_by_id(c_side)
    for bad_id in readable.values():
        assert rows[bad_id]["drop_reason"] == INVALID_UTF8
        assert rows[bad_id]["signals"] is None and rows[bad_id]["lang"] is None
    assert b_scored.rows == c_scored.rows and b_scored.drop_reasons == {INVALID_UTF8: 4}
    assert b_ref.drop_reasons == {**c_ref.drop_reasons, INVALID_UTF8: 4} and b_ref.rows == c_ref.rows
    # Re-thresholding reads stored signals only: the bad rows keep their reason under any thresholds.
    strict = CurateConfig.model_validate({"filters": {"gopher_quality": {"min_doc_words": 10_000}}})
    scored_path = tmp_path / "b" / "scores" / b_scored.path
    ref = select_shard(
        str(scored_path), file_fingerprint(scored_path), str(tmp_path / "strict"), strict, None
    )
    assert ref.rows == 0 and ref.drop_reasons == {"gopher_short_doc": 9, INVALID_UTF8: 4}


def _dedup(src: Path, work: Path, cfg: DedupConfig) -> tuple[Any, dict[str, Any], pa.Table, Any]:
    """Signatures, buckets, clustering and filtering of one shard: its ref, summary, sidecar, filter ref."""
    sig = signature_shard(str(src), file_fingerprint(src), str(work / "sigs"), cfg)
    pairs = str(work / "pairs.npy")
    bucket_step([sig], str(work / "index"), [], pairs, cfg)
    summary = cluster_step([sig], str(work / "index"), [], pairs, str(work / "out"), cfg)
    side = sidecar_name(src.name)
    ref = filter_shard(str(src), file_fingerprint(src), summary["sidecars"][side], str(work / "out"), 4)
    return sig, summary, read_shard(work / "out" / side, DEDUP_SCHEMA), ref


@pytest.mark.parametrize("version", [2, 1])
def test_dedup_drops_bad_rows_outside_every_cluster(tmp_path: Path, version: int) -> None:
    clean, broken, readable = _shards(tmp_path, version)
    cfg = DedupConfig()
    c_sig, c_summary, c_side, c_ref = _dedup(clean, tmp_path / "c", cfg)
    b_sig, b_summary, b_side, b_ref = _dedup(broken, tmp_path / "b", cfg)
    assert b_sig.rows == c_sig.rows + 4  # one signature row per input row, as the flow checks
    rows = _rows_by_id(b_side)
    assert {i: r for i, r in rows.items() if i not in readable.values()} == _rows_by_id(c_side)
    for bad_id in readable.values():
        assert rows[bad_id] == {
            "id": bad_id,
            "drop_reason": INVALID_UTF8,
            "cluster_id": None,
            "kept_id": None,
            "similarity": None,
        }
    kept = read_shard(tmp_path / "b" / "out" / broken.name, DOCUMENT_SCHEMA)
    assert kept.to_pylist() == read_shard(tmp_path / "c" / "out" / clean.name, DOCUMENT_SCHEMA).to_pylist()
    assert c_summary["dup_exact"] == b_summary["dup_exact"] == 1 and b_summary["unusable"] == 4
    assert b_ref.drop_reasons == {**c_ref.drop_reasons, INVALID_UTF8: 4} and b_ref.rows == c_ref.rows == 8
    indexed = index_rows([b_sig], str(tmp_path / "b" / "out"), cfg)
    assert indexed.column("id").equals(index_rows([c_sig], str(tmp_path / "c" / "out"), cfg).column("id"))
    assert [r["removed"] for r in cluster_summary(str(tmp_path / "b" / "out"), [str(broken)])] == [1]
    # Deterministic: the same shard gives the same signature file and sidecar, byte for byte.
    again_sig, again, _, _ = _dedup(broken, tmp_path / "again", cfg)
    assert file_fingerprint(Path(again_sig.path)) == file_fingerprint(Path(b_sig.path))
    assert again["sidecars"] == b_summary["sidecars"]
    assert list(read_signatures(b_sig, cfg).dropped).count(INVALID_UTF8) == 4


@pytest.mark.parametrize("version", [2, 1])
def test_tokenizer_training_and_tokenizing_skip_bad_rows(tmp_path: Path, version: int) -> None:
    clean, broken, readable = _shards(tmp_path, version)
    tok_cfg = TokenizerConfig(vocab_size=400)
    trained = [
        train_tokenizer([str(s)], [], str(tmp_path / f"tok-{s.parent.name}"), tok_cfg)
        for s in (clean, broken)
    ]
    assert trained[0]["hash"] == trained[1]["hash"]  # the bad rows taught the tokenizer nothing
    cfg = TokenizeConfig(tokenizer=tok_cfg, val_fraction=0.3)
    refs = [
        tokenize_shard(
            str(s), "fp", trained[0]["path"], trained[0]["hash"], str(tmp_path / s.parent.name), cfg
        )
        for s in (clean, broken)
    ]
    assert refs[0].documents == refs[1].documents and refs[0].tokens == refs[1].tokens
    assert refs[0].dropped == {} and refs[0].drops_path is None
    assert refs[1].dropped == {INVALID_UTF8: 4} and refs[1].drops_path == "shard-00000.drops.parquet"
    for split, name in refs[0].files.items():
        a = open_token_shard(tmp_path / "clean" / name)
        b = open_token_shard(tmp_path / "bad" / refs[1].files[split])
        assert (
            a.ids.equals(b.ids)
            and np.array_equal(a.tokens, b.tokens)
            and np.array_equal(a.offsets, b.offsets)
        )
    drops = read_shard(tmp_path / "bad" / refs[1].drops_path, DROP_SCHEMA).to_pylist()
    assert sorted(d["id"] for d in drops) == sorted(readable.values())
    by_column = {d["detail"].rsplit(" ", 1)[-1]: d for d in drops}
    assert set(by_column) == set(BAD_COLUMNS) and all(d["drop_reason"] == INVALID_UTF8 for d in drops)
    assert by_column["title"]["uri"] == "file:///bad/title.txt" and by_column["title"]["source"] == "text"


def test_a_shard_of_only_bad_rows_goes_through_every_stage(tmp_path: Path) -> None:
    docs = _bad_docs(_good_docs())
    table = documents_table(docs)
    for row, column in enumerate(BAD_COLUMNS):
        table = _break(table, row, column)
    src = _write(tmp_path / "in" / "shard-00000.parquet", table, 2)
    _, scored, side, kept = _curate(src, tmp_path / "curate", CurateConfig(batch_size=2))
    assert kept.num_rows == 0 and side.num_rows == 4 and scored.drop_reasons == {INVALID_UTF8: 4}
    _, summary, dedup_side, ref = _dedup(src, tmp_path / "dedup", DedupConfig(batch_size=2))
    assert ref.rows == 0 and summary["unusable"] == 4 and dedup_side.num_rows == 4
    good = _write(tmp_path / "good" / "shard-00000.parquet", documents_table(_good_docs()), 2)
    tok = train_tokenizer([str(src), str(good)], [], str(tmp_path / "tok"), TokenizerConfig(vocab_size=300))
    cfg = TokenizeConfig(tokenizer=TokenizerConfig(vocab_size=300), batch_size=2)
    refs = tokenize_shard(str(src), "fp", tok["path"], tok["hash"], str(tmp_path / "tokens"), cfg)
    assert refs.documents == {"train": 0, "val": 0} and refs.dropped == {INVALID_UTF8: 4}
    assert list(read_texts(src)) == []


def test_quality_training_reads_only_usable_texts(tmp_path: Path) -> None:
    clean, broken, _ = _shards(tmp_path, 2)
    assert list(read_texts(broken)) == list(read_texts(clean))


def test_valid_batches_names_each_bad_row_and_keeps_the_rest(tmp_path: Path) -> None:
    _, broken, readable = _shards(tmp_path, 2)
    checked = list(valid_batches(broken, DOCUMENT_SCHEMA, batch_size=5, columns=["id", "text"]))
    assert [c.start for c in checked] == [0, 5, 10] and sum(c.size for c in checked) == 13
    assert all(c.batch.schema.names == ["id", "text"] for c in checked)
    bad = [b for c in checked for b in c.bad]
    assert [b.row for b in bad] == [0, 5, 6, 12] and {b.id for b in bad} == set(readable.values())
    assert [b.detail for b in bad] == [f"invalid UTF-8 in {c}" for c in BAD_COLUMNS]
    positions = np.concatenate([c.rows() for c in checked])
    assert positions.tolist() == [r for r in range(13) if r not in (0, 5, 6, 12)]
    # A cap on value size drops the long rows as doc_too_large (the broken ones keep their first reason).
    capped = [b for c in valid_batches(broken, DOCUMENT_SCHEMA, max_bytes=700) for b in c.bad]
    assert {b.reason for b in capped} == {INVALID_UTF8, TOO_LARGE}
    assert next(b.detail for b in capped if b.reason == TOO_LARGE) == "text over 700 bytes"


def test_a_null_in_a_required_field_is_a_bad_row() -> None:
    schema = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("title", pa.string())])
    batch = pa.RecordBatch.from_arrays(
        [pa.array(["a", None, "c"]), pa.array([None, "t", None])], schema=schema
    )
    checked = check_batch(batch, schema, start=10)
    assert checked.batch.column("id").to_pylist() == ["a", "c"] and checked.rows().tolist() == [10, 12]
    (bad,) = checked.bad
    assert (bad.row, bad.id, bad.reason, bad.detail) == (
        11,
        "(no id: row 11)",
        NULL_FIELD,
        "null in required id",
    )
    assert bad.fields == {"title": "t"}


def test_a_step_that_raises_costs_only_its_document(caplog: pytest.LogCaptureFixture) -> None:
    items, ids = ["plain", "naïve", "ascii", "日本"], ["a", "b", "c", "d"]
    with caplog.at_level(logging.WARNING):
        out = per_row(
            lambda xs: [x.encode("ascii") for x in xs], items, ids, logging.getLogger("t"), "encoding"
        )
    assert out == [b"plain", None, b"ascii", None]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "encoding failed for document b",
        "encoding failed for document d",
    ]
    batch = pa.RecordBatch.from_pydict({"id": ids, "text": items})
    checked = check_batch(batch, pa.schema([pa.field("id", pa.string()), pa.field("text", pa.string())]), 3)
    dropped = checked.dropped(np.array([x is not None for x in out]), "step_error")
    assert [(d.row, d.id, d.reason) for d in dropped] == [(4, "b", "step_error"), (6, "d", "step_error")]
    done = pa.table({"v": ["plain", "ascii"]})
    merged = checked.in_order(
        np.array([x is not None for x in out]), done, dropped, pa.table({"v": ["B", "D"]})
    )
    assert merged.column("v").to_pylist() == ["plain", "B", "ascii", "D"]


# Property tests: the per-document functions never raise, whatever the text (no lone surrogates: Arrow
# strings are valid UTF-8, so no stored document can carry one).
_CHARS = st.characters(exclude_categories=["Cs"])
_CONTROLS = "\x00\x01\x07\x1b\x7f\x85\u0301\u0300\u200b\u200f\u202e\u2028\u2029\ufeff\ufffd\ufffe\uffff"
_SPECIAL = st.sampled_from(
    [
        *_CONTROLS,
        "\U0010ffff",
        "\r\n",
        "\n\n",
        "\t",
        " ",
        ".",
        "#",
        "…",
        "•",
        "{",
        "lorem ipsum",
        "עברית",
        "العربية",
    ]
)
TEXTS = st.one_of(
    st.text(_CHARS, max_size=300),
    st.lists(st.one_of(_SPECIAL, st.text(_CHARS, max_size=6)), max_size=150).map("".join),
    st.builds(
        lambda piece, n: piece * n,
        st.one_of(_SPECIAL, st.text(_CHARS, min_size=1, max_size=3)),
        st.integers(0, 3_000),
    ),
)
PROPERTY = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY
@given(TEXTS, st.sampled_from(["en", "de", "zh", "ar", "und", ""]))
def test_heuristics_never_raise(text: str, lang: str) -> None:
    cfg = FilterConfig()
    cleaned, signals = score_text(text, cfg, lang)
    assert isinstance(cleaned, str) and all(isinstance(v, float) for v in signals.values())
    decide(signals, cfg)


@PROPERTY
@given(st.lists(TEXTS, max_size=4))
def test_language_id_never_raises(texts: list[str]) -> None:
    got = detect_languages(texts, LangIdConfig())
    assert len(got) == len(texts) and all(0.0 <= score <= 1.0 for _, score in got)


@PROPERTY
@given(st.lists(TEXTS, max_size=4))
def test_minhash_never_raises(texts: list[str]) -> None:
    cfg = MinHashConfig()
    keys = band_keys(signatures(texts, cfg), cfg)
    assert keys.shape == (len(texts), cfg.bands)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small tokenizer trained on the good documents."""
    root = tmp_path_factory.mktemp("tok")
    shard = _write(root / "shard.parquet", documents_table(_good_docs()), 2)
    info = train_tokenizer([str(shard)], [], str(root), TokenizerConfig(vocab_size=300))
    return load(Path(info["path"]), info["hash"])


@PROPERTY
@given(texts=st.lists(TEXTS, max_size=4))
def test_tokenizer_encode_never_raises(tokenizer: Any, texts: list[str]) -> None:
    for text, enc in zip(texts, tokenizer.encode_batch_fast(texts), strict=True):
        assert tokenizer.decode(enc.ids) == unicodedata.normalize("NFC", text)


@PROPERTY
@given(
    st.lists(
        st.one_of(st.none(), st.binary(max_size=12), st.text(_CHARS, max_size=12).map(str.encode)),
        min_size=1,
        max_size=20,
    )
)
def test_check_batch_accounts_for_every_row(values: list[bytes | None]) -> None:
    schema = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string())])
    ids = pa.array([f"d{i}" for i in range(len(values))])
    batch = pa.RecordBatch.from_arrays([ids, pa.array(values, pa.binary()).view(pa.string())], schema=schema)
    checked = check_batch(batch, schema, max_bytes=8)
    checked.batch.validate(full=True)
    assert checked.batch.num_rows + len(checked.bad) == len(values)
    usable = dict(zip(checked.rows().tolist(), checked.batch.column("text").to_pylist(), strict=True))
    for row, value in enumerate(values):
        if row in usable:
            assert usable[row] == (None if value is None else value.decode()) and len(value or b"") <= 8
    for bad in checked.bad:
        value = values[bad.row]
        assert bad.id == f"d{bad.row}" and value is not None
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            assert bad.reason == INVALID_UTF8
        else:
            assert bad.reason == TOO_LARGE and len(value) > 8
