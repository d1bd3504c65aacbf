"""The storage contract: schema checks, atomic writes, manifests and stage keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.layout import code_version, manifest_shards, read_manifest, stage_key, write_manifest
from storage.schemas import DOCUMENT_SCHEMA, DROP_SCHEMA, Drop, documents_table, new_document
from storage.shards import SchemaError, ShardError, ShardWriter, read_shard, write_shard

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
