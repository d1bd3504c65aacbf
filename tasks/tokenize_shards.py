"""Tokenize document shards into token shards: one train and one validation file per input shard.

Documents are encoded in batches with the library's parallel `encode_batch_fast` (Rust threads, no
offsets), each followed by the end-of-text id. The split is decided per document by a hash of its id, so
a document stays on its side when filters upstream change.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from prefect import task
from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.cache import SHARD_POLICY
from storage.schemas import DOCUMENT_SCHEMA
from storage.shards import iter_batches
from storage.tokens import token_dtype, write_token_shard
from tasks.tokenizer import TokenizerConfig, load, special_ids, train

SPLITS = ("train", "val")


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


class TokenShardRef(BaseModel):
    """One input shard's token shards and their counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    source_fingerprint: str
    files: dict[str, str]
    documents: dict[str, int]
    tokens: dict[str, int]
    seconds: float


def tokenize_shard(
    in_path: str,
    in_fingerprint: str,
    tokenizer_path: str,
    tokenizer_hash: str,
    out_dir: str,
    cfg: TokenizeConfig,
) -> TokenShardRef:
    """Encode every document of one shard and write its train and val token shards."""
    start = time.perf_counter()
    tok = load(Path(tokenizer_path), tokenizer_hash)
    eos, _ = special_ids(tok, cfg.tokenizer)
    dtype = token_dtype(tok.get_vocab_size())
    parts: dict[str, tuple[list[str], list[np.ndarray]]] = {s: ([], []) for s in SPLITS}
    for batch in iter_batches(Path(in_path), DOCUMENT_SCHEMA, cfg.batch_size, columns=["id", "text"]):
        ids = batch.column("id").to_pylist()
        for doc_id, enc in zip(ids, tok.encode_batch_fast(batch.column("text").to_pylist()), strict=True):
            names, arrays = parts[split_of(doc_id, cfg.val_fraction)]
            names.append(doc_id)
            arrays.append(np.array([*enc.ids, eos], dtype=dtype))
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


train_tokenizer_task = task(
    name="train-tokenizer", cache_policy=SHARD_POLICY, persist_result=True, retries=1
)(train_tokenizer)
tokenize_shard_task = task(name="tokenize-shard", cache_policy=SHARD_POLICY, persist_result=True, retries=1)(
    tokenize_shard
)
