"""The curate flow: raw document shards in, filtered shards plus per-document scores sidecars out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.progress import gather
from flows.runners import task_runner
from flows.stage_tags import stage_tags, untagged_tasks
from storage.cache import cached_options
from storage.layout import (
    code_version,
    find_stage_dirs,
    read_manifest,
    stage_dir,
    stage_key,
    stage_manifest,
    write_manifest,
)
from storage.refs import ShardRef
from storage.remote import workspace
from tasks.curate import CODE_MODULES, quality_threshold_task, score_shard_task, select_shard_task
from tasks.scoring import CurateConfig, sidecar_name

STAGE = "curate"
SCORE_STAGE = "curate-scores"


def curate_dirs(run_root: str | Path, cfg: CurateConfig, upstream: Path) -> tuple[Path, Path]:
    """The scoring directory (keyed without thresholds) and the curate directory (keyed with everything)."""
    code = code_version(*CODE_MODULES)
    score_key = stage_key(SCORE_STAGE, cfg.scoring_view(), upstream.name, code)
    key = stage_key(STAGE, cfg.model_dump(mode="json"), upstream.name, code)
    return stage_dir(run_root, SCORE_STAGE, score_key), stage_dir(run_root, STAGE, key)


def _upstream(run_root: str, ingest_dir: str | None) -> Path:
    """The ingest stage to curate: the one given, or the newest complete one under the run root."""
    if ingest_dir:
        return Path(ingest_dir)
    dirs = find_stage_dirs(run_root, "ingest")
    if not dirs:
        raise FileNotFoundError(f"no complete ingest stage under {run_root}: run `crucible ingest` first")
    return dirs[0]


def _options(task_obj: Any, name: str, run_root: str, out: Path, *files: str) -> Any:
    """A curate task with its name; recomputed when its outputs have gone missing."""
    return cached_options(task_obj, name, run_root, out, *files)


def _publish(manifest: dict[str, Any], out_dir: Path) -> None:
    """Table artifact of drop counts per reason and a markdown summary."""
    counts = manifest["counts"]
    rows = [{"reason": r, "count": n} for r, n in counts["drop_reasons"].items()] or [
        {"reason": "-", "count": 0}
    ]
    create_table_artifact(key="curate-drop-reasons", table=rows, description="Documents dropped by curation")
    create_markdown_artifact(
        key="curate-summary",
        markdown=(
            f"# Curate\n\n- documents in: **{counts['documents_in']}**\n- kept: **{counts['documents']}**\n"
            f"- dropped: **{counts['drops']}**\n- output: `{out_dir}`\n"
        ),
        description="Curation summary",
    )


@flow(name="curate", flow_run_name="curate {run_root}", task_runner=ThreadPoolTaskRunner(max_workers=2))
@untagged_tasks
def curate_flow(
    run_root: str, config: CurateConfig | None = None, ingest_dir: str | None = None
) -> dict[str, Any]:
    """Score every ingested shard once, apply thresholds, and write filtered shards with scores sidecars."""
    cfg = config or CurateConfig()
    logger = get_run_logger()
    upstream = _upstream(run_root, ingest_dir)
    entries = (read_manifest(upstream) or {})["shards"]
    score_dir, out_dir = curate_dirs(run_root, cfg, upstream)
    logger.info("curate: %d shards from %s -> %s", len(entries), upstream, out_dir)
    scored_futures = [
        _options(
            score_shard_task, f"score: {e['path']}", run_root, score_dir, e["path"], sidecar_name(e["path"])
        ).submit(str(upstream / e["path"]), e["fingerprint"], str(score_dir), cfg)
        for e in entries
    ]
    scored: list[ShardRef] = gather(scored_futures, "curate-score-progress", "curate: scoring shards")
    sidecars = [str(score_dir / r.drops_path) for r in scored]
    threshold = _options(quality_threshold_task, "quality threshold", run_root, score_dir)(
        sidecars, cfg.quality
    )
    selected = [
        _options(
            select_shard_task, f"select: {r.path}", run_root, out_dir, r.path, sidecar_name(r.path)
        ).submit(str(score_dir / r.path), r.fingerprint, str(out_dir), cfg, threshold)
        for r in scored
    ]
    refs: list[ShardRef] = gather(selected, "curate-select-progress", "curate: selecting")
    manifest = _manifest(out_dir.name, cfg, upstream, refs, scored, threshold)
    previous = read_manifest(out_dir)
    if previous is None or previous["shards"] != manifest["shards"]:
        write_manifest(out_dir, manifest)
    _publish(manifest, out_dir)
    counts = manifest["counts"]
    logger.info("curate: kept %d of %d documents -> %s", counts["documents"], counts["documents_in"], out_dir)
    return {"stage_dir": str(out_dir), "scores_dir": str(score_dir), **counts}


def _manifest(
    key: str,
    cfg: CurateConfig,
    upstream: Path,
    refs: list[ShardRef],
    scored: list[ShardRef],
    threshold: float | None,
) -> dict[str, Any]:
    """The stage manifest, plus documents in and the quality threshold applied."""
    code = code_version(*CODE_MODULES)
    manifest = stage_manifest(STAGE, key, code, str(upstream), cfg.model_dump(mode="json"), refs)
    # Rows scoring could not use (unreadable, or a step raised) are in the sidecars as drops, not scored.
    manifest["counts"]["documents_in"] = sum(r.rows + r.drops for r in scored)
    return {**manifest, "quality_threshold": threshold}


def run_curate(
    run_root: str,
    cfg: CurateConfig,
    workers: int = 0,
    ingest_dir: str | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Run the curate flow on `workers` threads (0: one per CPU) or a Dask cluster."""
    with workspace(str(run_root), ingest_dir, newest=["ingest"]) as ws, stage_tags("curate"):
        return curate_flow.with_options(task_runner=task_runner(workers, dask_address))(
            run_root=ws.root, config=cfg, ingest_dir=ws.local(ingest_dir)
        )
