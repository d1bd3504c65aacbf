"""The storage contract: schema checks, atomic writes, manifests and stage keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import unicodedata
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.cache import literal_run_name
from storage.layout import code_version, manifest_shards, read_manifest, short_hash, stage_key, write_manifest
from storage.schemas import (
    DOCUMENT_SCHEMA,
    DROP_SCHEMA,
    Document,
    Drop,
    clean_str,
    documents_table,
    new_document,
    normalize_for_hash,
    storable_documents,
    storable_drops,
)
from storage.shards import SchemaError, ShardError, ShardWriter, iter_batches, read_shard, write_shard

ROOT = Path(__file__).resolve().parents[1]


def _docs(n: int) -> list:
    """n small documents."""
    return [new_document(f"text number {i}", source="text", uri=f"file:///x/{i}.txt") for i in range(n)]


def test_roundtrip_and_ids(tmp_path: Path) -> None:
    docs = _docs(3)
    write_shard(tmp_path / "shard-a.parquet", documents_table(docs), DOCUMENT_SCHEMA)
    table = read_shard(tmp_path / "shard-a.parquet", DOCUMENT_SCHEMA)
    assert table.column("text").to_pylist() == ["text number 0", "text number 1", "text number 2"]
    assert table.column("id").to_pylist()[0] == docs[0].id
    # Same text up to case and spacing gives the same content hash; ids depend on uri + part only.
    a = new_document("Hello   World", source="html", uri="u")
    b = new_document("hello world", source="pdf", uri="v")
    assert a.content_hash == b.content_hash and a.id != b.id
    assert [p.name for p in tmp_path.iterdir()] == ["shard-a.parquet"]


def test_wrong_schema_is_refused_on_write(tmp_path: Path) -> None:
    table = documents_table(_docs(2)).drop_columns(["title"])
    with pytest.raises(SchemaError, match=r"missing fields \['title'\]"):
        write_shard(tmp_path / "bad.parquet", table, DOCUMENT_SCHEMA)
    wrong_type = documents_table(_docs(2)).set_column(
        1, pa.field("text", pa.large_string(), nullable=False), pa.array(["a", "b"], pa.large_string())
    )
    with pytest.raises(SchemaError, match="field 'text' is large_string, expected string"):
        write_shard(tmp_path / "bad.parquet", wrong_type, DOCUMENT_SCHEMA)
    assert not (tmp_path / "bad.parquet").exists()


def test_wrong_schema_is_refused_on_read(tmp_path: Path) -> None:
    # A drops sidecar read as documents, and a foreign Parquet file, are both refused by name.
    write_shard(
        tmp_path / "d.parquet",
        pa.Table.from_pylist([Drop("u", "pdf", "pdf_encrypted").row()], schema=DROP_SCHEMA),
        DROP_SCHEMA,
    )
    with pytest.raises(SchemaError, match="does not match the documents schema"):
        read_shard(tmp_path / "d.parquet", DOCUMENT_SCHEMA)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "foreign.parquet")
    with pytest.raises(SchemaError, match="missing fields"):
        read_shard(tmp_path / "foreign.parquet", DOCUMENT_SCHEMA)


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    table = documents_table(_docs(1))
    meta = {**DOCUMENT_SCHEMA.metadata, b"crucible.schema_version": b"999"}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "old.parquet")
    with pytest.raises(SchemaError, match="schema version 999"):
        read_shard(tmp_path / "old.parquet", DOCUMENT_SCHEMA)


def test_truncated_shard_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shard-t.parquet"
    write_shard(path, documents_table(_docs(2000)), DOCUMENT_SCHEMA)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="not a complete Parquet shard"):
        read_shard(path, DOCUMENT_SCHEMA)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shard-x.parquet"
    with pytest.raises(RuntimeError), ShardWriter(path, DOCUMENT_SCHEMA) as w:
        w.write(documents_table(_docs(10)))
        raise RuntimeError("extractor blew up")
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from storage.schemas import DOCUMENT_SCHEMA, documents_table, new_document
from storage.shards import ShardWriter
docs = [new_document("word " * 200 + str(i), source="text", uri=f"u{{i}}") for i in range(1000)]
with ShardWriter(Path({path!r}), DOCUMENT_SCHEMA) as w:
    for _ in range(100000):
        w.write(documents_table(docs))
        print("batch", flush=True)
"""


def test_killed_write_leaves_no_shard_a_reader_accepts(tmp_path: Path) -> None:
    path = tmp_path / "shard-k.parquet"
    code = KILLED_WRITER.format(root=str(ROOT), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(3):  # let it write a few batches, then SIGKILL mid-write
        assert proc.stdout.readline().startswith("batch")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".shard-k.parquet.tmp-") for p in leftovers)
    assert list(tmp_path.glob("shard-*.parquet")) == []
    with pytest.raises(ShardError, match="does not exist"):
        read_shard(path, DOCUMENT_SCHEMA)


def test_manifest_written_last_and_checked(tmp_path: Path) -> None:
    write_shard(tmp_path / "shard-1.parquet", documents_table(_docs(3)), DOCUMENT_SCHEMA)
    with pytest.raises(ShardError, match="did not complete"):
        manifest_shards(tmp_path)
    size = (tmp_path / "shard-1.parquet").stat().st_size
    write_manifest(tmp_path, {"shards": [{"path": "shard-1.parquet", "bytes": size}]})
    assert read_manifest(tmp_path)["shards"][0]["path"] == "shard-1.parquet"
    assert manifest_shards(tmp_path) == [tmp_path / "shard-1.parquet"]
    (tmp_path / "shard-1.parquet").write_bytes(b"PAR1")
    with pytest.raises(ShardError, match="the manifest says"):
        manifest_shards(tmp_path)


def test_stage_key_depends_on_config_upstream_and_code() -> None:
    base = stage_key("ingest", {"a": 1}, None, "c1")
    assert base == stage_key("ingest", {"a": 1}, None, "c1")
    assert (
        len(
            {
                base,
                stage_key("ingest", {"a": 2}, None, "c1"),
                stage_key("ingest", {"a": 1}, "up", "c1"),
                stage_key("ingest", {"a": 1}, None, "c2"),
            }
        )
        == 4
    )
    assert code_version("storage.schemas") != code_version("storage.shards")


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    st.text(st.sampled_from(" \t\n\u00a0\u2000\u3000\u0085aBßﬁ\u0301e\u0308Σς\u0130\u200b①\ufb01x")),
    st.integers(1, 8),
)
def test_long_texts_normalize_piece_by_piece_exactly_as_whole(text: str, piece: int) -> None:
    # Hashing a 64 MB document in one go held ~14x its size in word objects; pieces cut before a
    # whitespace character must give byte-identical normalized text (so identical content hashes).
    assert normalize_for_hash(text, piece) == normalize_for_hash(text, len(text) + 1)


def test_content_hash_of_a_long_text_is_the_hash_of_its_whole_normalization() -> None:
    text = "Ein Wort, ein ANDERES\u00a0Wort ﬁnal. " * 200_000
    assert len(text) > 2 * (1 << 20)
    assert normalize_for_hash(text) == " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def test_rows_with_lone_surrogates_are_stored_with_replacement_characters(tmp_path: Path) -> None:
    # MuPDF warnings and file names carry undecodable bytes as lone surrogates, which UTF-8 cannot hold.
    doc = new_document(
        "body \udcff text", source="pdf", uri="file:///x/a\udcfe.pdf", title="T\ud800",
        meta={"mupdf_warnings": ["bad name 'Im\udce9'"]},
    )  # fmt: skip
    drop = Drop("file:///x/b\udcff.pdf", "pdf", "pdf_unreadable", "MuPDF: \udc80", input_uri="file:///\udcff")
    table, unwritable = storable_documents([doc])
    assert unwritable == [] and table["text"][0].as_py() == "body \ufffd text"
    assert "\ufffd" in table["meta_json"][0].as_py() and table["title"][0].as_py() == "T\ufffd"
    assert storable_drops([drop])["detail"][0].as_py() == "MuPDF: \ufffd"
    # Distinct undecodable names keep distinct ids.
    assert doc.id != new_document("x", source="pdf", uri="file:///x/a\udcfd.pdf").id


def test_a_record_arrow_refuses_becomes_a_drop_and_the_rest_are_stored() -> None:
    good = new_document("fine", source="text", uri="file:///x/good.txt")
    # A value out of the column's range: the batch conversion fails, then only this record is dropped.
    bad = new_document("also fine", source="text", uri="file:///x/bad.txt", fetched_at=None)
    bad = Document(**{**bad.__dict__, "lang_score": "not a number", "input_uri": "file:///x/bad.txt"})
    table, unwritable = storable_documents([good, bad, good])
    assert table["id"].to_pylist() == [good.id, good.id]
    (drop,) = unwritable
    assert drop.reason == "record_unwritable" and drop.id == bad.id and drop.input_uri == "file:///x/bad.txt"
    assert "could not be stored" in drop.detail
    odd = Drop("file:///x/c.txt", "text", "text_empty", "x", offset=1 << 70)  # beyond int64
    (row,) = storable_drops([odd, Drop("file:///x/d.txt", "text", "text_empty")]).to_pylist()[:1]
    assert row["drop_reason"] == "record_unwritable" and "text_empty" in row["detail"]


def test_a_version_1_shard_still_reads_with_the_new_columns_null(tmp_path: Path) -> None:
    old_fields = [f for f in DROP_SCHEMA if f.name not in ("input_uri", "offset", "record_index", "page")]
    meta = {**DROP_SCHEMA.metadata, b"crucible.schema_version": b"1"}
    v1 = pa.schema(old_fields, metadata=meta)
    rows = [{"id": "a", "uri": "file:///x", "source": "pdf", "drop_reason": "pdf_encrypted", "detail": ""}]
    pq.write_table(pa.Table.from_pylist(rows, schema=v1), tmp_path / "old.drops.parquet")
    table = read_shard(tmp_path / "old.drops.parquet", DROP_SCHEMA)
    assert table.schema.names == DROP_SCHEMA.names and table["input_uri"].to_pylist() == [None]
    assert read_shard(tmp_path / "old.drops.parquet", DROP_SCHEMA, columns=["page", "id"]).to_pylist() == [
        {"page": None, "id": "a"}
    ]
    (batch,) = iter_batches(tmp_path / "old.drops.parquet", DROP_SCHEMA)
    assert batch.schema.names == DROP_SCHEMA.names and batch.num_rows == 1
    # A field a version-1 shard lacks that is required now is refused, naming it.
    pq.write_table(pa.table({"id": ["a"]}).replace_schema_metadata(meta), tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="missing fields"):
        read_shard(tmp_path / "bad.parquet", DROP_SCHEMA)


# Any text a file name, a parser message or broken UTF-16 can hand us: lone surrogates and braces included.
_ANY_TEXT = st.text(st.characters(categories=["Cs", "Ll", "Lu", "Nd", "Zs", "Cc", "Ps", "Pe", "So"]))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(_ANY_TEXT, _ANY_TEXT, _ANY_TEXT, _ANY_TEXT)
def test_any_strings_make_storable_records(text: str, uri: str, title: str, note: str) -> None:
    # The class behind the issue's first failure (a MuPDF warning with undecodable bytes failed a whole
    # group): whatever strings a record holds, it is stored, its id and hashes are computed, nothing raises.
    doc = new_document(text or "x", source="pdf", uri=uri, title=title, meta={"warnings": [note]})
    table, unwritable = storable_documents([replace(doc, input_uri=uri)])
    assert unwritable == [] and table.num_rows == 1
    assert table["meta_json"][0].as_py().encode("utf-8")  # strict UTF-8, as every writer needs
    drops = storable_drops([Drop(uri, "pdf", "pdf_unreadable", note, part=title, input_uri=uri)])
    assert drops["drop_reason"].to_pylist() == ["pdf_unreadable"] and short_hash([uri, note])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(_ANY_TEXT, st.dictionaries(st.sampled_from(["a", "cfg", "0", "group"]), st.integers()))
def test_any_name_is_a_literal_prefect_run_name(name: str, parameters: dict[str, int]) -> None:
    # Prefect formats a task run name with the task's parameters and sends it in JSON events: a file
    # named `x{a,b}.txt` failed the ingest stage, one with undecodable bytes lost every state event.
    shown = literal_run_name(name).format(**parameters)
    assert shown == clean_str(name)
    shown.encode("utf-8")  # raises on a lone surrogate, as a JSON event would
