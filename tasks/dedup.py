"""Prefect wrappers for dedup; signatures are computed in an isolated worker process per shard."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from storage.cache import stage_task
from storage.layout import short_hash
from tasks.dedup_config import DedupConfig
from tasks.dedup_sigs import SigRef, signature_shard, signature_view
from tasks.dedup_stage import bucket_step, cluster_step, commit_step, filter_shard
from tasks.isolate import run_one_isolated

# Modules whose source decides what dedup writes; their hash is part of the stage keys.
CODE_MODULES = (
    "storage.rows",
    "storage.layout",
    "storage.schemas",
    "storage.shards",
    "tasks.dedup",
    "tasks.dedup_config",
    "tasks.dedup_index",
    "tasks.dedup_resolve",
    "tasks.dedup_sigs",
    "tasks.dedup_stage",
    "tasks.isolate",
    "tasks.minhash",
    "tasks.shingles",
)
# The subset that decides signature files: their folder is keyed by it, so unrelated changes reuse them.
SIGNATURE_MODULES = (
    "storage.rows",
    "storage.schemas",
    "storage.shards",
    "tasks.dedup_sigs",
    "tasks.minhash",
    "tasks.shingles",
)

SIGNATURE_TIMEOUT_S = 3600
SIGNATURE_MEMORY_MB = 8192


def signature_item(item: tuple[str, str, str, DedupConfig]) -> Iterator[SigRef]:
    """Worker-process entry point: compute one shard's signature file and yield its ref."""
    yield signature_shard(*item)


def signature_shard_isolated(in_path: str, in_fingerprint: str, out_dir: str, cfg: DedupConfig) -> SigRef:
    """Compute one shard's signatures in a worker process (CPU-parallel; a crash costs one attempt)."""
    item = (in_path, in_fingerprint, out_dir, cfg)
    what = f"signatures of {in_path}"
    return run_one_isolated(
        signature_item, item, what, timeout_s=SIGNATURE_TIMEOUT_S, memory_mb=SIGNATURE_MEMORY_MB
    )


def _signature_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key of a signature task: the shard's content and the MinHash settings, not its path."""
    keyed = [parameters["in_fingerprint"], parameters["out_dir"], signature_view(parameters["cfg"])]
    return short_hash(keyed, 32)


# Keyed on content: a shard that reappears unchanged in a later upstream stage reuses its signatures.
SIGNATURE_POLICY = CacheKeyFnPolicy(cache_key_fn=_signature_key) + TASK_SOURCE

signature_task = stage_task(signature_shard_isolated, "dedup-signatures", SIGNATURE_POLICY)
bucket_task = stage_task(bucket_step, "dedup-buckets")
cluster_task = stage_task(cluster_step, "dedup-cluster")
filter_task = stage_task(filter_shard, "dedup-filter")
# Committing is idempotent (a run replaces its own part). Cached like the rest, so an unchanged rerun
# commits nothing; the flow refreshes it when the part is gone.
commit_task = stage_task(commit_step, "dedup-index-commit", retries=2, retry_delay_seconds=5)
