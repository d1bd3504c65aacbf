"""Row validation: stream the rows of a shard a stage can use, and name every row it cannot, with a reason.

Parquet readers do not check string data, so a shard written by an older version or by another tool can hold
invalid UTF-8 that only fails when a value is turned into a Python str, which would kill the whole shard.
`valid_batches` checks each batch at once (Arrow's full validation, null counts, sizes) and only when a
batch fails goes row by row, so a clean shard costs one vectorized pass per string column.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.schemas import Drop
from storage.shards import ROW_GROUP_SIZE, iter_batches

NULL_FIELD = "doc_null_field"
INVALID_UTF8 = "doc_invalid_utf8"
TOO_LARGE = "doc_too_large"
REASONS = (NULL_FIELD, INVALID_UTF8, TOO_LARGE)
"""Why a row cannot be used; a row failing several checks gets the first in this order."""

MAX_VALUE_BYTES = 64 << 20
"""Default cap on one string value: ingest's own default document cap (tasks.text max_doc_bytes). Scoring a
document takes about 40 times its size in memory, so a far larger one would exhaust a worker and its shard."""

_FIELD_CHARS = 1000  # readable values of a bad row are cut here: they identify the row, nothing more
_ID = "id"

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used: where it is in the shard, a readable id, why, and its readable fields."""

    row: int
    """Position in the shard, from 0."""
    id: str
    """The row's id, decoded with replacement characters when it is itself invalid."""
    reason: str
    """One of REASONS."""
    detail: str
    """Which columns failed, and how."""
    fields: dict[str, str | None] = field(default_factory=dict)
    """Every other string column's value, decoded with replacement characters and cut to a short prefix."""


@dataclass(frozen=True)
class CheckedBatch:
    """One batch read from a shard: its usable rows (the asked columns only) and the rows split out."""

    start: int
    """Shard position of the batch's first row (usable or not)."""
    size: int
    """Rows read, usable and bad."""
    batch: pa.RecordBatch
    bad: tuple[BadRow, ...] = ()

    def rows(self) -> np.ndarray:
        """Shard positions of the rows in `batch`."""
        positions = np.arange(self.start, self.start + self.size, dtype=np.int64)
        if not self.bad:
            return positions
        return np.setdiff1d(positions, [b.row for b in self.bad], assume_unique=True)

    def dropped(self, ok: np.ndarray, reason: str) -> list[BadRow]:
        """The bad rows and the rows of `batch` a step failed for (`ok` False, given `reason`), in order."""
        positions, detail = self.rows(), "raised while being processed (the exception is in the log)"
        failed = [
            BadRow(
                int(positions[i]), reason=reason, detail=detail, **_named(self.batch, i, int(positions[i]))
            )
            for i in np.flatnonzero(~ok).tolist()
        ]
        return sorted([*self.bad, *failed], key=lambda b: b.row)

    def in_order(self, ok: np.ndarray, done: pa.Table, dropped: list[BadRow], rows: pa.Table) -> pa.Table:
        """`done` (one row per `ok` row of `batch`) and `rows` (one per `dropped`) merged in shard order."""
        if not dropped:
            return done
        at = np.concatenate([self.rows()[ok], np.array([b.row for b in dropped], dtype=np.int64)])
        return pa.concat_tables([done, rows]).take(pa.array(np.argsort(at, kind="stable")))


def _is_string(kind: pa.DataType) -> bool:
    """Whether values of this type must be valid UTF-8."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _column_ok(column: pa.Array, nullable: bool, max_bytes: int | None) -> bool:
    """The fast check: no null where none may be, valid UTF-8, no value over the cap."""
    if not nullable and column.null_count:
        return False
    if not _is_string(column.type):
        return True
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        return False
    # The whole column within the cap means every value is: lengths are only computed for big batches.
    return max_bytes is None or column.nbytes <= max_bytes or _too_large(column, max_bytes).sum() == 0


def _too_large(column: pa.Array, max_bytes: int) -> np.ndarray:
    """Mask of the values over `max_bytes` bytes."""
    lengths = pc.binary_length(column.view(_binary(column.type)))
    return pc.fill_null(pc.greater(lengths, max_bytes), False).to_numpy(zero_copy_only=False)


def _binary(kind: pa.DataType) -> pa.DataType:
    """The binary type with the same offsets as a string type."""
    return pa.large_binary() if pa.types.is_large_string(kind) else pa.binary()


def _raw(column: pa.Array) -> list[bytes | None]:
    """A string column's values as bytes, decodable or not."""
    return column.view(_binary(column.type)).to_pylist()


def _invalid_utf8(column: pa.Array) -> np.ndarray:
    """Mask of the values that are not valid UTF-8 (the slow path: only for a column that failed)."""
    bad = np.zeros(len(column), dtype=bool)
    for i, value in enumerate(_raw(column)):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
    return bad


def _failures(
    batch: pa.RecordBatch, schema: pa.Schema, max_bytes: int | None
) -> dict[int, list[tuple[str, str]]]:
    """Per failing row of a batch, every (reason, column) that fails; empty when the batch is clean."""
    found: dict[int, list[tuple[str, str]]] = {}
    for name in batch.schema.names:
        column, nullable = batch.column(name), schema.field(name).nullable
        if _column_ok(column, nullable, max_bytes):
            continue
        masks = [] if nullable else [(NULL_FIELD, pc.is_null(column).to_numpy(zero_copy_only=False))]
        if _is_string(column.type):
            masks.append((INVALID_UTF8, _invalid_utf8(column)))
            if max_bytes is not None:
                masks.append((TOO_LARGE, _too_large(column, max_bytes)))
        for reason, mask in masks:
            for i in np.flatnonzero(mask).tolist():
                found.setdefault(i, []).append((reason, name))
    return found


def _readable(value: bytes | None) -> str | None:
    """A short, always-valid prefix of a raw string value."""
    if value is None:
        return None
    return value[: 4 * _FIELD_CHARS].decode("utf-8", errors="replace")[:_FIELD_CHARS]


def _describe(hits: list[tuple[str, str]], max_bytes: int | None) -> str:
    """What failed in one row, e.g. `invalid UTF-8 in title, meta_json; text over 67108864 bytes`."""
    forms = {
        NULL_FIELD: "null in required {}",
        INVALID_UTF8: "invalid UTF-8 in {}",
        TOO_LARGE: f"{{}} over {max_bytes} bytes",
    }
    parts = []
    for reason in REASONS:
        if names := [name for r, name in hits if r == reason]:
            parts.append(forms[reason].format(", ".join(names)))
    return "; ".join(parts)


def _named(batch: pa.RecordBatch, i: int, row: int) -> dict[str, Any]:
    """The readable id and other string fields of row i of a batch, shard row `row` (for a BadRow)."""
    values = {
        name: _readable(_raw(batch.column(name).slice(i, 1))[0])
        for name in batch.schema.names
        if _is_string(batch.schema.field(name).type)
    }
    row_id = values.pop(_ID, None)
    return {"id": row_id if row_id is not None else f"(no id: row {row})", "fields": values}


def _bad_row(
    batch: pa.RecordBatch, i: int, start: int, hits: list[tuple[str, str]], max_bytes: int | None
) -> BadRow:
    """The BadRow for row i of a batch, every string value made readable."""
    return BadRow(
        row=start + i,
        reason=min((r for r, _ in hits), key=REASONS.index),
        detail=_describe(hits, max_bytes),
        **_named(batch, i, start + i),
    )


def check_batch(
    batch: pa.RecordBatch, schema: pa.Schema, start: int = 0, max_bytes: int | None = MAX_VALUE_BYTES
) -> CheckedBatch:
    """Split one batch (columns of `schema`) into its usable rows and its bad rows."""
    failures = _failures(batch, schema, max_bytes)
    if not failures:
        return CheckedBatch(start, batch.num_rows, batch)
    bad = tuple(_bad_row(batch, i, start, failures[i], max_bytes) for i in sorted(failures))
    keep = np.ones(batch.num_rows, dtype=bool)
    keep[sorted(failures)] = False
    return CheckedBatch(start, batch.num_rows, batch.filter(pa.array(keep)), bad)


def valid_batches(
    path: Path,
    schema: pa.Schema,
    batch_size: int = ROW_GROUP_SIZE,
    columns: list[str] | None = None,
    max_bytes: int | None = MAX_VALUE_BYTES,
) -> Iterator[CheckedBatch]:
    """Stream a shard (storage.shards.iter_batches) as checked batches holding the asked columns.

    Every string column is checked whatever `columns` asks for, so every stage agrees on which rows are
    bad: a row with a broken title is dropped by tokenization too, not only by the stages that read titles.
    """
    names = columns or schema.names
    read = names + [f.name for f in schema if _is_string(f.type) and f.name not in names]
    start = 0
    for batch in iter_batches(Path(path), schema, batch_size, read):
        checked = check_batch(batch, schema, start, max_bytes)
        usable = checked.batch.select(names) if read != names else checked.batch
        yield CheckedBatch(start, checked.size, usable, checked.bad)
        start += batch.num_rows


def per_row(
    fn: Callable[[Sequence[T]], Sequence[R]],
    items: Sequence[T],
    ids: Sequence[str],
    logger: logging.Logger,
    what: str,
) -> Sequence[R | None]:
    """`fn` over a whole batch (its result as is); if that raises, item by item, None where an item raises.

    A document that breaks a step costs that document, not its shard; each failure is logged.
    """
    try:
        return fn(items)
    except Exception:  # found item by item below
        pass
    results: list[R | None] = []
    for item, item_id in zip(items, ids, strict=True):
        try:
            results.append(fn([item])[0])
        except Exception as exc:  # this item's failure: it becomes a drop, the batch goes on
            logger.warning("%s failed for document %s: %s: %s", what, item_id, type(exc).__name__, exc)
            results.append(None)
    return results


def as_drop(bad: BadRow) -> Drop:
    """A bad document row as a drop record, named by its readable id, uri, source and input."""
    return Drop(
        uri=bad.fields.get("uri") or "",
        source=bad.fields.get("source") or "",
        reason=bad.reason,
        detail=f"row {bad.row}: {bad.detail}",
        input_uri=bad.fields.get("input_uri"),
        known_id=bad.id,
    )
