"""The ingest flow: raw files, WARCs and URL lists in, raw document shards and a manifest out."""

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
from storage.layout import code_version, read_manifest, stage_dir, stage_key, stage_manifest, write_manifest
from storage.refs import ShardRef
from storage.remote import fetch_inputs, workspace
from tasks.demo_corpus import resolve_inputs
from tasks.ingest import CODE_MODULES, IngestConfig, ingest_group_task
from tasks.inputs import InputGroup, discover, load_plan, plan_groups, portable_spec, save_plan

STAGE = "ingest"


def ingest_dir(run_root: str | Path, cfg: IngestConfig) -> Path:
    """The ingest stage directory for this config and code version (inputs are content-addressed inside)."""
    key = stage_key(STAGE, cfg.model_dump(mode="json"), None, code_version(*CODE_MODULES))
    return stage_dir(run_root, STAGE, key)


def _submit(group: InputGroup, cfg: IngestConfig, out_dir: Path, run_root: str) -> Any:
    """Submit one group; force a recompute when a cached result's shard has gone missing."""
    name = f"ingest-{group.kind}: {group.label}"
    runner = cached_options(ingest_group_task, name, run_root, out_dir, group.shard_name, group.drops_name)
    return runner.submit(group, cfg, str(out_dir))


def _manifest(key: str, cfg: IngestConfig, inputs: list[str], refs: list[ShardRef]) -> dict[str, Any]:
    """The stage manifest, plus the inputs it covers."""
    manifest = stage_manifest(
        STAGE, key, code_version(*CODE_MODULES), None, cfg.model_dump(mode="json"), refs
    )
    # What the caps were measured against: the slowest input and the hungriest extraction worker.
    seconds = [r.max_input_seconds for r in refs if r.max_input_seconds is not None]
    rss = [r.peak_worker_rss_mb for r in refs if r.peak_worker_rss_mb is not None]
    return {
        **manifest,
        "inputs": inputs,
        "max_input_seconds": max(seconds, default=None),
        "peak_worker_rss_mb": max(rss, default=None),
    }


def _publish(manifest: dict[str, Any], out_dir: Path) -> None:
    """Table artifact of drop reasons and a markdown summary with the output location."""
    counts = manifest["counts"]
    rows = [{"reason": r, "count": n} for r, n in counts["drop_reasons"].items()] or [
        {"reason": "-", "count": 0}
    ]
    create_table_artifact(
        key="ingest-drop-reasons", table=rows, description="Inputs dropped at ingest, by reason"
    )
    sources = ", ".join(f"{s}: {n}" for s, n in counts["per_source"].items()) or "none"
    quirks = ", ".join(f"{q}: {n}" for q, n in counts["quirks"].items()) or "none"
    create_markdown_artifact(
        key="ingest-summary",
        markdown=(
            f"# Ingest\n\n- documents: **{counts['documents']}** ({sources})\n"
            f"- drops: **{counts['drops']}**\n"
            f"- kept despite a writer quirk: {quirks}\n"
            f"- slowest input: {manifest['max_input_seconds']} s; "
            f"peak worker memory: {manifest['peak_worker_rss_mb']} MB\n"
            f"- shards: {len(manifest['shards'])}\n- output: `{out_dir}`\n"
        ),
        description="Ingest summary",
    )


@flow(name="ingest", flow_run_name="ingest {run_root}", task_runner=ThreadPoolTaskRunner(max_workers=2))
@untagged_tasks
def ingest_flow(inputs: list[str], run_root: str, config: IngestConfig | None = None) -> dict[str, Any]:
    """Ingest files, folders, WARCs and URL lists into raw document shards; return the manifest summary."""
    cfg = config or IngestConfig()
    logger = get_run_logger()
    out_dir = ingest_dir(run_root, cfg)
    files, urls = discover(resolve_inputs(inputs, Path(run_root)))
    previous = load_plan(out_dir)
    groups = plan_groups(files, urls, cfg.group_files, cfg.group_bytes, cfg.urls_per_group, previous)
    logger.info(
        "ingest: %d files and %d urls in %d groups -> %s", len(files), len(urls), len(groups), out_dir
    )
    futures = [_submit(g, cfg, out_dir, run_root) for g in groups]
    refs = gather(futures, "ingest-progress", "ingest: input groups")
    save_plan(out_dir, previous, groups)
    manifest = _manifest(out_dir.name, cfg, list(inputs), refs)
    previous = read_manifest(out_dir)
    # An unchanged rerun leaves the manifest untouched, so the whole stage directory stays byte-identical.
    if (
        previous is None
        or previous["shards"] != manifest["shards"]
        or previous["inputs"] != manifest["inputs"]
    ):
        write_manifest(out_dir, manifest)
    _publish(manifest, out_dir)
    counts = manifest["counts"]
    logger.info("ingest: %d documents, %d drops -> %s", counts["documents"], counts["drops"], out_dir)
    return {"stage_dir": str(out_dir), **counts}


def run_ingest(
    inputs: list[str], run_root: str, cfg: IngestConfig, workers: int = 0, dask_address: str | None = None
) -> dict[str, Any]:
    """Run the ingest flow on `workers` threads (0: one per CPU) or a Dask cluster, remote inputs fetched."""
    with workspace(str(run_root)) as ws, stage_tags(STAGE):
        local_inputs = [portable_spec(i) for i in fetch_inputs(inputs, Path(ws.root) / "inputs" / "remote")]
        runner = task_runner(workers, dask_address, spawns=True)
        return ingest_flow.with_options(task_runner=runner)(inputs=local_inputs, run_root=ws.root, config=cfg)
