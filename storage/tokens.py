"""Token shards: uncompressed Arrow IPC files, memory-mapped zero-copy at training time.

One file holds one record batch with two columns: `id` (the document id) and `tokens`, a
`large_list<uint16>` (`uint32` when the vocabulary exceeds 65,536). The list's int64 offsets are the
document boundaries and its values buffer is every token of the shard, contiguous, so a reader gets a
flat numpy view of the whole shard without copying. Schema metadata records the tokenizer hash, the
end-of-text id, the vocabulary size, the split and the token count; a reader that expects another
tokenizer is refused. Files are written to a temp name and renamed (storage.shards.atomic_write).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from storage.schemas import SCHEMA_VERSION
from storage.shards import OLDEST_READABLE, SchemaError, ShardError, atomic_write

KIND = "tokens"
_META = b"crucible.tokens"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the bytes), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _schema(dtype: np.dtype, meta: dict[str, Any]) -> pa.Schema:
    """The token-shard schema with this file's metadata."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("tokens", pa.large_list(pa.from_numpy_dtype(dtype)), nullable=False),
        ],
        metadata={
            "crucible.kind": KIND,
            "crucible.schema_version": str(SCHEMA_VERSION),
            _META: json.dumps(meta, sort_keys=True),
        },
    )


def write_token_shard(
    path: Path,
    ids: list[str],
    tokens: np.ndarray,
    offsets: np.ndarray,
    *,
    tokenizer_hash: str,
    eos_id: int,
    vocab_size: int,
    split: str,
) -> dict[str, Any]:
    """Write one shard atomically: documents `ids`, flat `tokens`, `offsets` (len(ids)+1 boundaries)."""
    dtype = token_dtype(vocab_size)
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.size != len(ids) + 1 or offsets[0] != 0 or offsets[-1] != tokens.size:
        raise ValueError("offsets must run from 0 to len(tokens), one boundary per document plus one")
    meta = {
        "tokenizer_hash": tokenizer_hash,
        "eos_id": int(eos_id),
        "vocab_size": int(vocab_size),
        "split": split,
        "documents": len(ids),
        "tokens": int(tokens.size),
        "dtype": dtype.name,
    }
    values = pa.array(np.asarray(tokens, dtype=dtype))
    column = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    schema = _schema(dtype, meta)
    batch = pa.record_batch([pa.array(ids, pa.string()), column], schema=schema)

    def _write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_batch(batch)

    atomic_write(Path(path), _write)
    return meta


@dataclass(frozen=True)
class TokenShard:
    """A memory-mapped token shard: flat tokens, document boundaries, ids and metadata."""

    path: Path
    tokens: np.ndarray
    offsets: np.ndarray
    ids: pa.Array
    meta: dict[str, Any]


def open_token_shard(path: Path, tokenizer_hash: str | None = None) -> TokenShard:
    """Memory-map a token shard (zero-copy), refusing damaged files and other tokenizers."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        batch = reader.get_batch(0) if reader.num_record_batches == 1 else None
    except FileNotFoundError as exc:
        raise ShardError(f"{path} does not exist") from exc
    except (OSError, pa.ArrowException) as exc:
        raise ShardError(f"{path} is not a complete token shard: {exc}") from exc
    meta_raw = (reader.schema.metadata or {}).get(_META)
    if batch is None or meta_raw is None or (reader.schema.metadata or {}).get(b"crucible.kind") != b"tokens":
        raise SchemaError(f"{path} is not a token shard")
    version = (reader.schema.metadata or {}).get(b"crucible.schema_version", b"").decode(errors="replace")
    # The token shard layout is the same in every schema version so far.
    if version not in {str(v) for v in range(OLDEST_READABLE, SCHEMA_VERSION + 1)}:
        raise SchemaError(f"{path} was written with another schema version ({version or 'none'})")
    meta = json.loads(meta_raw)
    if tokenizer_hash is not None and meta["tokenizer_hash"] != tokenizer_hash:
        raise SchemaError(
            f"{path} was written with tokenizer {meta['tokenizer_hash']}, expected {tokenizer_hash}"
        )
    column = batch.column("tokens")
    tokens = column.values.to_numpy(zero_copy_only=True)
    offsets = column.offsets.to_numpy(zero_copy_only=True)
    if tokens.size != meta["tokens"]:
        raise ShardError(f"{path} holds {tokens.size} tokens, its metadata says {meta['tokens']}")
    return TokenShard(Path(path), tokens, offsets, batch.column("id"), meta)


def export_nanogpt(shards: list[Path], out: Path, tokenizer_hash: str) -> int:
    """Concatenate shards into nanoGPT's flat uint16 `.bin` (streamed, atomic); returns the token count."""
    total = 0

    def _write(tmp: Path) -> None:
        nonlocal total
        with open(tmp, "wb") as handle:
            for path in shards:
                shard = open_token_shard(path, tokenizer_hash)
                if shard.tokens.dtype != np.uint16:
                    raise ValueError(f"nanoGPT .bin files are uint16; {path} needs {shard.tokens.dtype}")
                handle.write(shard.tokens.tobytes())
                total += shard.tokens.size

    atomic_write(Path(out), _write)
    return total
