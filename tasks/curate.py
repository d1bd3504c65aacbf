"""Prefect wrappers for curation; scoring runs in an isolated worker process per shard."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

from storage.cache import stage_task
from storage.layout import short_hash
from storage.refs import ShardRef
from tasks.isolate import run_one_isolated
from tasks.scoring import CurateConfig, quality_threshold, score_shard_item, select_shard

# Modules whose source decides what curation writes; their hash is part of the stage keys.
CODE_MODULES = (
    "storage.rows",
    "storage.layout",
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
    return run_one_isolated(
        score_shard_item, item, f"scoring {in_path}", timeout_s=SCORE_TIMEOUT_S, memory_mb=SCORE_MEMORY_MB
    )


def _scoring_key(context: Any, parameters: dict[str, Any]) -> str:
    """Cache key of a scoring task: the input shard and only the settings that change scores."""
    cfg: CurateConfig = parameters["cfg"]
    keyed = [parameters["in_path"], parameters["in_fingerprint"], parameters["out_dir"], cfg.scoring_view()]
    return short_hash(keyed, 32)


# Thresholds are not in the key, so re-thresholding hits the cache and never re-runs fastText or heuristics.
SCORE_POLICY = CacheKeyFnPolicy(cache_key_fn=_scoring_key) + TASK_SOURCE

score_shard_task = stage_task(score_shard_isolated, "curate-score", SCORE_POLICY)
select_shard_task = stage_task(select_shard, "curate-select")
quality_threshold_task = stage_task(quality_threshold, "curate-quality-threshold", retries=0)
