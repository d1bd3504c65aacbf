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


# The oldest schema version this code still reads. Later versions only ever add nullable fields, so an
# older shard reads with those fields filled with nulls: no migration step, no rewrite of stored data.
OLDEST_READABLE = 1


def _version(schema: pa.Schema) -> int | None:
    """The `crucible.schema_version` of a file's schema, or None when absent or not a number."""
    raw = (schema.metadata or {}).get(b"crucible.schema_version", b"").decode(errors="replace")
    return int(raw) if raw.isdigit() else None


def _missing_fields(schema: pa.Schema, want: pa.Schema, path: Path) -> list[str]:
    """Check a file's schema against `want`; the (nullable) fields an older version's file lacks."""
    version = _version(schema)
    if version is None or not OLDEST_READABLE <= version <= SCHEMA_VERSION:
        check_schema(schema, want, what=str(path))  # a foreign file is named by its fields first
        raise SchemaError(
            f"{path} was written with schema version {version or 'none'}, "
            f"this code reads versions {OLDEST_READABLE} to {SCHEMA_VERSION}"
        )
    missing = [] if version == SCHEMA_VERSION else [f.name for f in want if f.name not in schema.names]
    if any(not want.field(name).nullable for name in missing):
        check_schema(schema, want, what=str(path))  # raises, naming the missing required fields
    present = pa.schema([f for f in want if f.name not in missing], metadata=want.metadata)
    check_schema(schema, present, what=str(path))
    return missing


def _with_nulls(
    data: pa.Table | pa.RecordBatch, want: pa.Schema, names: list[str]
) -> pa.Table | pa.RecordBatch:
    """`data` with null columns for the fields an older shard lacks, columns in the order of `names`."""
    columns = [
        data.column(n) if n in data.schema.names else pa.nulls(data.num_rows, want.field(n).type)
        for n in names
    ]
    fields = [want.field(n) for n in names]
    if isinstance(data, pa.RecordBatch):
        return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


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
    missing = _missing_fields(pf.schema_arrow, schema, path)
    names = columns or schema.names
    try:
        table = pf.read(columns=[n for n in names if n not in missing])
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{path} is unreadable: {exc}") from exc
    return _with_nulls(table, schema, names) if missing else table


def iter_batches(
    path: Path, schema: pa.Schema, batch_size: int = ROW_GROUP_SIZE, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream a validated shard in record batches, so memory stays flat for big shards."""
    pf = _open(path)
    missing = _missing_fields(pf.schema_arrow, schema, path)
    names = columns or schema.names
    for batch in pf.iter_batches(batch_size=batch_size, columns=[n for n in names if n not in missing]):
        yield _with_nulls(batch, schema, names) if missing else batch


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
