"""Prefect wrappers for curation; scoring runs in an isolated worker process per shard."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from storage.cache import SHARD_POLICY
from storage.layout import short_hash
from storage.refs import ShardRef
from tasks.isolate import Failure, Finished, run_isolated
from tasks.scoring import CurateConfig, quality_threshold, score_shard_item, select_shard

# Modules whose source decides what curation writes; their hash is part of the stage keys.
CODE_MODULES = (
    "storage.schemas",
    "storage.shards",
    "tasks.curate",
    "tasks.scoring",
    "tasks.isolate",
    "tasks.langid",
    "tasks.quality",
    "tasks.heuristics",
    "tasks.heur_badwords",
    "tasks.heur_config",
    "tasks.heur_gopher",
    "tasks.heur_lines",
    "tasks.heur_text",
)

# A shard of hostile documents must not hang the flow; scoring a healthy shard takes seconds to minutes.
SCORE_TIMEOUT_S = 3600
SCORE_MEMORY_MB = 8192


def score_shard_isolated(in_path: str, in_fingerprint: str, out_dir: str, cfg: CurateConfig) -> ShardRef:
    """Score one shard in a worker process (CPU-parallel across shards, and a crash costs one attempt)."""
    item = (in_path, in_fingerprint, out_dir, cfg)
    for event in run_isolated(score_shard_item, [item], timeout_s=SCORE_TIMEOUT_S, memory_mb=SCORE_MEMORY_MB):
        if isinstance(event, Finished):
            continue
        if isinstance(event, Failure):
            raise RuntimeError(f"scoring {in_path} failed: {event.reason}: {event.detail}")
        return event[1][0]
    raise RuntimeError(f"scoring {in_path} returned nothing")


def _scoring_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key of a scoring task: the input shard and only the settings that change scores."""
    cfg: CurateConfig = parameters["cfg"]
    keyed = [parameters["in_path"], parameters["in_fingerprint"], parameters["out_dir"], cfg.scoring_view()]
    return short_hash(keyed, 32)


# Thresholds are not in the key, so re-thresholding hits the cache and never re-runs fastText or heuristics.
SCORE_POLICY = CacheKeyFnPolicy(cache_key_fn=_scoring_key) + TASK_SOURCE

score_shard_task = task(name="curate-score", cache_policy=SCORE_POLICY, persist_result=True, retries=1)(
    score_shard_isolated
)
select_shard_task = task(name="curate-select", cache_policy=SHARD_POLICY, persist_result=True, retries=1)(
    select_shard
)
quality_threshold_task = task(
    name="curate-quality-threshold", cache_policy=SHARD_POLICY, persist_result=True
)(quality_threshold)
