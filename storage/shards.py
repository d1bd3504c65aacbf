"""Atomic, schema-checked Parquet shard IO."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.schemas import SCHEMA_VERSION

ROW_GROUP_SIZE = 1000


class SchemaError(ValueError):
    """A table or shard does not match the schema it must have."""


class ShardError(OSError):
    """A shard file is missing, truncated or otherwise unreadable."""


def _describe_mismatch(got: pa.Schema, want: pa.Schema) -> str:
    """Name the fields that differ between two schemas."""
    got_f = {f.name: f for f in got}
    want_f = {f.name: f for f in want}
    parts = []
    if missing := [n for n in want_f if n not in got_f]:
        parts.append(f"missing fields {missing}")
    if extra := [n for n in got_f if n not in want_f]:
        parts.append(f"unexpected fields {extra}")
    for name in want_f.keys() & got_f.keys():
        if got_f[name].type != want_f[name].type:
            parts.append(f"field {name!r} is {got_f[name].type}, expected {want_f[name].type}")
        elif got_f[name].nullable and not want_f[name].nullable:
            parts.append(f"field {name!r} is nullable, expected non-nullable")
    if not parts and got.names != want.names:
        parts.append(f"field order {got.names}, expected {want.names}")
    return "; ".join(parts) or "schemas differ"


def check_schema(schema: pa.Schema, want: pa.Schema, what: str = "table") -> None:
    """Raise SchemaError unless `schema` has exactly the fields of `want`."""
    if not schema.remove_metadata().equals(want.remove_metadata()):
        raise SchemaError(
            f"{what} does not match the {_kind(want)} schema: {_describe_mismatch(schema, want)}"
        )


def _kind(schema: pa.Schema) -> str:
    """The `crucible.kind` metadata of a schema."""
    return (schema.metadata or {}).get(b"crucible.kind", b"?").decode()


def _check_version(schema: pa.Schema, path: Path) -> None:
    """Refuse shards written under another schema version."""
    meta = schema.metadata or {}
    version = meta.get(b"crucible.schema_version", b"").decode()
    if version != str(SCHEMA_VERSION):
        raise SchemaError(
            f"{path} was written with schema version {version or 'none'}, this code reads {SCHEMA_VERSION}"
        )


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a hidden temp file beside `path`, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A dot prefix and random suffix: readers' globs never match it and concurrent writers never collide.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename by syncing its directory (a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_shard(path: Path, table: pa.Table, schema: pa.Schema) -> None:
    """Validate `table` against `schema` and write it atomically as a zstd Parquet shard."""
    check_schema(table.schema, schema)
    table = table.replace_schema_metadata(schema.metadata)

    def _write(tmp: Path) -> None:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_SIZE)

    atomic_write(path, _write)


def read_shard(path: Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Read a shard, refusing truncated files and any schema but `schema`."""
    pf = _open(path)
    check_schema(pf.schema_arrow, schema, what=str(path))
    _check_version(pf.schema_arrow, path)
    try:
        return pf.read(columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{path} is unreadable: {exc}") from exc


def iter_batches(
    path: Path, schema: pa.Schema, batch_size: int = ROW_GROUP_SIZE, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream a validated shard in record batches, so memory stays flat for big shards."""
    pf = _open(path)
    check_schema(pf.schema_arrow, schema, what=str(path))
    _check_version(pf.schema_arrow, path)
    yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def _open(path: Path) -> pq.ParquetFile:
    """Open a Parquet file, turning a missing or truncated file into a ShardError."""
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError as exc:
        raise ShardError(f"{path} does not exist") from exc
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{path} is not a complete Parquet shard: {exc}") from exc


def file_fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """A content hash of a file, read in chunks so big files cost no memory."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Stream record batches into one Parquet shard that appears atomically on close."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        """Open a hidden temp file beside `path`; nothing is visible at `path` until `close()`."""
        self.path = Path(path)
        self.schema = schema
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        """Append a table that must have exactly the shard's schema."""
        check_schema(table.schema, self.schema)
        if table.num_rows:
            self._writer.write_table(table.replace_schema_metadata(self.schema.metadata), ROW_GROUP_SIZE)
            self.rows += table.num_rows

    def close(self) -> None:
        """Finish the file, fsync it and rename it into place."""
        self._writer.close()
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop the temp file; the final path is never touched."""
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> ShardWriter:
        """Use as a context manager: close on success, abort on error."""
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """Commit the shard only if the block finished without an exception."""
        if exc_type is None:
            self.close()
        else:
            self.abort()
