"""Train a byte-level BPE tokenizer on document shards (Hugging Face `tokenizers`), save and load it.

Byte-level: the base alphabet is the 256 byte values, so every string encodes (no unknown token) and
decode(encode(text)) gives back the NFC form of the text. Special tokens (end-of-text, padding) are
matched only when we add them: documents are encoded with `encode_special_tokens`, so a document that
contains the literal string "<|endoftext|>" cannot inject a document boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from storage.rows import valid_batches
from storage.schemas import DOCUMENT_SCHEMA
from storage.shards import atomic_write

EOS = "<|endoftext|>"
PAD = "<|pad|>"


class TokenizerConfig(BaseModel):
    """Byte-level BPE training settings."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    vocab_size: int = 8192
    """Vocabulary size incl. the 256 byte tokens and the specials (<= 65,536 keeps uint16 shards)."""
    min_frequency: int = 2
    """A pair must occur this often to be merged."""
    train_bytes: int = 200_000_000
    """Train on at most this many bytes of text, sampled by document-id hash (stable across runs)."""
    sample_percent: float = 100.0
    """Share of documents eligible for training, chosen by a hash of their id."""
    special_tokens: tuple[str, ...] = (EOS, PAD)
    """Special tokens; the first is end-of-text (appended to every document), the second padding."""

    @field_validator("vocab_size")
    @classmethod
    def _vocab(cls, value: int) -> int:
        """Room for the byte alphabet plus merges."""
        if value < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 bytes + specials + merges), got {value}")
        return value

    @field_validator("sample_percent")
    @classmethod
    def _percent(cls, value: float) -> float:
        """A percentage in (0, 100]."""
        if not 0.0 < value <= 100.0:
            raise ValueError(f"sample_percent must be in (0, 100], got {value}")
        return value

    @field_validator("special_tokens")
    @classmethod
    def _specials(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """End-of-text and padding at least, all distinct."""
        if len(value) < 2 or len(set(value)) != len(value):
            raise ValueError("special_tokens needs at least two distinct tokens: end-of-text, then padding")
        return value


def in_sample(doc_id: str, percent: float) -> bool:
    """Whether a document is in the training sample: a hash of its id, so the choice never shifts."""
    if percent >= 100.0:
        return True
    bucket = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little") % 10_000
    return bucket < percent * 100


def training_texts(shards: list[Path], cfg: TokenizerConfig) -> Iterator[str]:
    """Texts of the sampled documents, in shard order, up to `train_bytes` (unusable rows skipped)."""
    budget = cfg.train_bytes
    for shard in shards:
        for checked in valid_batches(shard, DOCUMENT_SCHEMA, 1000, columns=["id", "text"]):
            batch = checked.batch
            for doc_id, text in zip(
                batch.column("id").to_pylist(), batch.column("text").to_pylist(), strict=True
            ):
                if not in_sample(doc_id, cfg.sample_percent):
                    continue
                yield text
                budget -= len(text.encode("utf-8"))
                if budget <= 0:
                    return


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with NFC normalization."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train(shards: list[Path], cfg: TokenizerConfig) -> Tokenizer:
    """Train on the sampled text of the shards."""
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(cfg.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(training_texts(shards, cfg), trainer)
    return tok


def tokenizer_hash(path: Path) -> str:
    """Content hash of a saved tokenizer.json (what token shards record)."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def save(tok: Tokenizer, path: Path) -> str:
    """Write tokenizer.json atomically; returns its hash."""
    data = tok.to_str(pretty=True).encode("utf-8")
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
    return tokenizer_hash(path)


def load(path: Path, expected_hash: str | None = None) -> Tokenizer:
    """Load tokenizer.json for encoding documents (special tokens in text stay text)."""
    if expected_hash is not None and tokenizer_hash(path) != expected_hash:
        raise ValueError(f"{path} is not the tokenizer {expected_hash} (its hash is {tokenizer_hash(path)})")
    tok = Tokenizer.from_file(str(path))
    tok.encode_special_tokens = True
    return tok


def special_ids(tok: Tokenizer, cfg: TokenizerConfig) -> tuple[int, int]:
    """Ids of end-of-text and padding."""
    eos, pad = (tok.token_to_id(t) for t in cfg.special_tokens[:2])
    if eos is None or pad is None:
        raise ValueError(f"tokenizer lacks the special tokens {cfg.special_tokens[:2]}")
    return eos, pad
