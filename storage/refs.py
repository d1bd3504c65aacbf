"""Small, picklable references that tasks return instead of tables."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ShardRef(BaseModel):
    """Where one output shard (and its drops sidecar) is, and what it holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    """Shard file name, relative to the stage directory."""
    rows: int
    """Documents in the shard."""
    bytes: int
    """Size of the shard file."""
    fingerprint: str
    """Content hash of the shard file."""
    drops_path: str
    """Drops sidecar file name, relative to the stage directory."""
    drops: int
    """Dropped input items recorded in the sidecar."""
    inputs: list[str]
    """URIs of the input files this shard came from."""
    per_source: dict[str, int]
    """Documents per source kind."""
    drop_reasons: dict[str, int]
    """Drops per reason."""
    seconds: float
    """Wall time spent producing the shard."""
    quirks: dict[str, int] = {}
    """Records kept despite a known writer quirk (e.g. a WARC payload digest of the whole block), by quirk."""
    max_input_seconds: float | None = None
    """Ingest: the longest time one input file took to extract (its worker killed past the time cap)."""
    peak_worker_rss_mb: float | None = None
    """Ingest: the highest peak resident memory of an extraction worker (capped by worker_memory_mb)."""
