"""Tokenize document shards into token shards: one train and one validation file per input shard.

Documents are encoded in batches with the library's parallel `encode_batch_fast` (Rust threads, no
offsets), each followed by the end-of-text id. The split is decided per document by a hash of its id, so
a document stays on its side when filters upstream change. Rows that are not usable documents (invalid
UTF-8, a null required field, a value over the size cap, or encoding that raised) are skipped, counted in
the ref and listed with their reasons in `<shard>.drops.parquet` beside the token shards.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tokenizers import Tokenizer

from storage.cache import stage_task
from storage.layout import sidecar_name
from storage.rows import BadRow, CheckedBatch, as_drop, per_row, valid_batches
from storage.schemas import DOCUMENT_SCHEMA, DROP_SCHEMA, storable_drops
from storage.shards import write_shard
from storage.tokens import token_dtype, write_token_shard
from tasks.tokenizer import TokenizerConfig, load, special_ids, train

SPLITS = ("train", "val")
TOKENIZE_ERROR = "tokenize_error"
"""A document whose encoding raised: skipped (the exception is logged), its shard goes on."""

logger = logging.getLogger(__name__)


class TokenizeConfig(BaseModel):
    """Tokenizer training and token-shard settings."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Byte-level BPE training settings."""
    tokenizer_path: str | None = None
    """Use this trained tokenizer.json instead of training one."""
    val_fraction: float = 0.01
    """Share of documents (by id hash) in the validation split."""
    batch_size: int = 1000
    """Documents encoded per encode_batch call."""
    export_nanogpt: bool = False
    """Also write nanoGPT's train.bin / val.bin (flat uint16) next to the shards."""
    retrain_tokenizer: bool = False
    """Retrain the tokenizer whenever the documents change. Off, the first tokenizer trained in this run
    root with these tokenizer settings is kept: adding documents re-tokenizes only the new shards, and earlier
    token shards and checkpoints stay compatible with the new ones."""

    @field_validator("val_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        """A fraction in [0, 1)."""
        if not 0.0 <= value < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {value}")
        return value


def split_of(doc_id: str, val_fraction: float) -> str:
    """`val` or `train` for a document, from a hash of its id."""
    bucket = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") % 1_000_000
    return "val" if bucket < val_fraction * 1_000_000 else "train"


def shard_names(in_name: str) -> dict[str, str]:
    """`shard-x.parquet` -> its train and val token-shard names."""
    stem = in_name.removesuffix(".parquet")
    return {s: f"{stem}.{s}.arrow" for s in SPLITS}


def drops_name(in_name: str) -> str:
    """`shard-x.parquet` -> `shard-x.drops.parquet`, the rows it skipped (written only when there are any)."""
    return sidecar_name(in_name, "drops")


class TokenShardRef(BaseModel):
    """One input shard's token shards and their counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    source_fingerprint: str
    files: dict[str, str]
    documents: dict[str, int]
    tokens: dict[str, int]
    seconds: float
    dropped: dict[str, int] = {}
    """Rows skipped, by reason (doc_invalid_utf8, tokenize_error, ...)."""
    drops_path: str | None = None
    """File (beside the token shards) listing the skipped rows with their ids and reasons; None when none."""


def _encode(checked: CheckedBatch, tok: Tokenizer, eos: int, dtype: np.dtype) -> Sequence[np.ndarray | None]:
    """Tokens of each document of a batch, followed by end-of-text; None where encoding raised."""

    def encoded(texts: Sequence[str]) -> list[np.ndarray]:
        """One batch through the tokenizer's parallel encoder."""
        return [np.array([*enc.ids, eos], dtype=dtype) for enc in tok.encode_batch_fast(texts)]

    ids = checked.batch.column("id").to_pylist()
    return per_row(encoded, checked.batch.column("text").to_pylist(), ids, logger, "tokenizing")


def _write_drops(path: Path, dropped: list[BadRow]) -> str | None:
    """List the skipped rows in a drops file (removing a stale one when there are none); its name or None."""
    if not dropped:
        path.unlink(missing_ok=True)
        return None
    write_shard(path, storable_drops([as_drop(b) for b in dropped]), DROP_SCHEMA)
    return path.name


def tokenize_shard(
    in_path: str,
    in_fingerprint: str,
    tokenizer_path: str,
    tokenizer_hash: str,
    out_dir: str,
    cfg: TokenizeConfig,
) -> TokenShardRef:
    """Encode every usable document of one shard and write its train and val token shards."""
    start = time.perf_counter()
    tok = load(Path(tokenizer_path), tokenizer_hash)
    eos, _ = special_ids(tok, cfg.tokenizer)
    dtype = token_dtype(tok.get_vocab_size())
    parts: dict[str, tuple[list[str], list[np.ndarray]]] = {s: ([], []) for s in SPLITS}
    dropped: list[BadRow] = []
    columns = ["id", "text", "uri", "source", "input_uri"]  # the last three name a skipped row
    for checked in valid_batches(Path(in_path), DOCUMENT_SCHEMA, cfg.batch_size, columns=columns):
        encoded = _encode(checked, tok, eos, dtype)
        dropped += checked.dropped(np.array([e is not None for e in encoded], dtype=bool), TOKENIZE_ERROR)
        for doc_id, tokens in zip(checked.batch.column("id").to_pylist(), encoded, strict=True):
            if tokens is not None:
                names, arrays = parts[split_of(doc_id, cfg.val_fraction)]
                names.append(doc_id)
                arrays.append(tokens)
    files = shard_names(Path(in_path).name)
    documents, tokens = {}, {}
    for split, (names, arrays) in parts.items():
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)
        write_token_shard(
            Path(out_dir) / files[split],
            names,
            flat,
            np.concatenate(([0], np.cumsum(lengths))),
            tokenizer_hash=tokenizer_hash,
            eos_id=eos,
            vocab_size=tok.get_vocab_size(),
            split=split,
        )
        documents[split], tokens[split] = len(names), int(flat.size)
    return TokenShardRef(
        source=in_path,
        source_fingerprint=in_fingerprint,
        files=files,
        documents=documents,
        tokens=tokens,
        seconds=round(time.perf_counter() - start, 3),
        dropped=dict(sorted(Counter(b.reason for b in dropped).items())),
        drops_path=_write_drops(Path(out_dir) / drops_name(Path(in_path).name), dropped),
    )


def train_tokenizer(
    shards: list[str], fingerprints: list[str], out_dir: str, cfg: TokenizerConfig
) -> dict[str, object]:
    """Train on the shards and save out_dir/tokenizer.json (fingerprints key the cache on shard content)."""
    from tasks.tokenizer import save

    tok = train([Path(s) for s in shards], cfg)
    path = Path(out_dir) / "tokenizer.json"
    digest = save(tok, path)
    eos, pad = special_ids(tok, cfg)
    return {
        "path": str(path),
        "hash": digest,
        "vocab_size": tok.get_vocab_size(),
        "eos_id": eos,
        "pad_id": pad,
    }


train_tokenizer_task = stage_task(train_tokenizer, "train-tokenizer")
tokenize_shard_task = stage_task(tokenize_shard, "tokenize-shard")
