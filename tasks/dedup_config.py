"""Dedup settings: exact and MinHash near-dedup, verification, presets and the persistent index."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.minhash import MinHashConfig, detection_probability

DUP_EXACT = "dup_exact"
DUP_MINHASH = "dup_minhash"

# Named MinHash settings; `minhash: <name>` in a config picks one. The threshold is where detection
# reaches 50% (about (1/bands)**(1/rows)).
PRESETS: dict[str, dict[str, int]] = {
    "fineweb": {"ngram": 5, "bands": 14, "rows": 8},  # FineWeb: ~0.72 threshold, 92% detection at J=0.8
    "aggressive": {"ngram": 5, "bands": 20, "rows": 5},  # ~0.55 threshold: more recall, more candidates
    "conservative": {"ngram": 5, "bands": 9, "rows": 13},  # ~0.84 threshold: only very close copies
}


class IndexConfig(BaseModel):
    """The persistent dedup index that lets a later run dedup new documents against earlier runs."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Dedup against the documents other run roots kept (their newest parts in the index), and add this
    run's kept documents afterwards."""
    path: str | None = None
    """Index folder shared by the run roots that should dedup against each other (any shared filesystem
    that honours flock); default `<run_root>/dedup-index/<settings>`, which only this run root writes."""


class DedupConfig(BaseModel):
    """Exact dedup on the normalized-text hash, then MinHash-LSH near dedup with optional verification."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    exact: bool = True
    """Remove documents whose normalized text (`content_hash`) equals another's."""
    near: bool = True
    """Remove near duplicates found by MinHash-LSH."""
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    """Shingle size, bands x rows and seed, or a preset name: fineweb, aggressive, conservative."""
    verify: bool = True
    """Confirm each LSH candidate pair by exact Jaccard of its shingle sets (removes false positives)."""
    verify_threshold: float = 0.8
    """Minimum exact Jaccard similarity for a verified near-duplicate pair."""
    resolution: Literal["star", "component"] = "star"
    """star: in keep order, a document is removed only for a kept document it is linked to (every removal
    is similar to its kept document); component: one kept per union-find component (FineWeb; a chain
    A~B~C can remove C for A even when they differ)."""
    index: IndexConfig = Field(default_factory=IndexConfig)
    """Persistent index of earlier runs' kept documents."""
    batch_size: int = 2000
    """Documents hashed at once when computing signatures (bounds memory per shard)."""

    @field_validator("minhash", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        """Expand a preset name into its settings."""
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(f"minhash preset {value!r} is not one of {sorted(PRESETS)}")
            return PRESETS[value]
        return value

    @field_validator("verify_threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        """A Jaccard similarity is in (0, 1]."""
        if not 0.0 < value <= 1.0:
            raise ValueError(f"verify_threshold must be in (0, 1], got {value}")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int) -> int:
        """At least one document per batch."""
        if value < 1:
            raise ValueError(f"batch_size must be >= 1, got {value}")
        return value

    def detection_at(self, similarity: float) -> float:
        """Chance that LSH proposes a pair with this Jaccard similarity."""
        return detection_probability(similarity, self.minhash)
