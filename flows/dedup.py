"""The dedup flow: curated shards in; signatures (mapped), LSH buckets, one clustering, filtering (mapped)."""

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
    short_hash,
    stage_dir,
    stage_key,
    stage_manifest,
    write_manifest,
)
from storage.refs import ShardRef
from storage.remote import workspace
from tasks.dedup import (
    CODE_MODULES,
    SIGNATURE_MODULES,
    bucket_task,
    cluster_task,
    commit_task,
    filter_task,
    signature_task,
)
from tasks.dedup_config import DedupConfig
from tasks.dedup_index import index_dir, part_name, snapshot
from tasks.dedup_report import cluster_summary
from tasks.dedup_sigs import SignatureError, SigRef, signature_name, signature_view, validate_signatures
from tasks.dedup_stage import sidecar_name

STAGE = "dedup"
PAIRS = "candidates.npy"


def _upstream(run_root: str, curate_dir: str | None) -> Path:
    """The curate stage to dedup: the one given, or the newest complete one under the run root."""
    if curate_dir:
        return Path(curate_dir)
    dirs = find_stage_dirs(run_root, "curate")
    if not dirs:
        raise FileNotFoundError(f"no complete curate stage under {run_root}: run `crucible curate` first")
    return dirs[0]


def _options(task_obj: Any, name: str, run_root: str, out: Path, *files: str) -> Any:
    """A dedup task with its name; recomputed when its outputs have gone missing."""
    return cached_options(task_obj, name, run_root, out, *files)


def _signatures(
    entries: list[dict[str, Any]], upstream: Path, run_root: str, cfg: DedupConfig
) -> list[SigRef]:
    """Signature files of every shard, each validated; an invalid file has its producer re-run once."""
    sig_dir = (
        Path(run_root)
        / "dedup-signatures"
        / short_hash([signature_view(cfg), code_version(*SIGNATURE_MODULES)])
    )
    logger = get_run_logger()

    def submit(entry: dict[str, Any], refresh: bool = False) -> Any:
        opts = _options(
            signature_task,
            f"signatures: {entry['path']}",
            run_root,
            sig_dir,
            signature_name(entry["fingerprint"]),
        )
        if refresh:
            opts = opts.with_options(refresh_cache=True)
        return opts.submit(str(upstream / entry["path"]), entry["fingerprint"], str(sig_dir), cfg)

    done = gather([submit(e) for e in entries], "dedup-signature-progress", "dedup: signatures")
    refs: list[SigRef] = []
    for entry, result in zip(entries, done, strict=True):
        # A cached ref may come from the same content under another stage: point it at this shard.
        ref = result.model_copy(update={"source": str(upstream / entry["path"])})
        try:
            validate_signatures(ref, cfg, rows=entry["rows"])
        except SignatureError as exc:
            logger.warning("re-computing signatures of %s: %s", entry["path"], exc)
            ref = (
                submit(entry, refresh=True)
                .result()
                .model_copy(update={"source": str(upstream / entry["path"])})
            )
            validate_signatures(ref, cfg, rows=entry["rows"])
        refs.append(ref)
    return refs


def _publish(manifest: dict[str, Any], out_dir: Path, clusters: list[dict[str, Any]]) -> None:
    """Table artifacts of removals per reason and of the largest clusters, and a markdown summary."""
    dedup = manifest["dedup"]
    rows = [{"reason": r, "count": n} for r, n in manifest["counts"]["drop_reasons"].items()] or [
        {"reason": "-", "count": 0}
    ]
    create_table_artifact(key="dedup-removed", table=rows, description="Documents removed by dedup")
    create_table_artifact(
        key="dedup-clusters",
        table=clusters or [{"kept": "-", "removed": 0}],
        description="Kept documents with the most duplicates removed for them",
    )
    create_markdown_artifact(
        key="dedup-summary",
        markdown=(
            f"# Dedup\n\n- documents in: **{dedup['documents']}** (index: {dedup['indexed_documents']})\n"
            f"- kept: **{manifest['counts']['documents']}**\n- exact duplicates: **{dedup['dup_exact']}**\n"
            f"- near duplicates: **{dedup['dup_minhash']}** ({dedup['candidate_pairs']} candidate pairs, "
            f"{dedup['links_rejected']} rejected by verification)\n"
            f"- unusable rows dropped: {dedup.get('unusable', 0)}\n- output: `{out_dir}`\n"
        ),
        description="Dedup summary",
    )


@flow(name="dedup", flow_run_name="dedup {run_root}", task_runner=ThreadPoolTaskRunner(max_workers=2))
@untagged_tasks
def dedup_flow(
    run_root: str, config: DedupConfig | None = None, curate_dir: str | None = None
) -> dict[str, Any]:
    """Remove exact and near duplicates from the newest curated stage, against this run and the index."""
    cfg = config or DedupConfig()
    logger = get_run_logger()
    upstream = _upstream(run_root, curate_dir)
    entries = (read_manifest(upstream) or {})["shards"]
    code = code_version(*CODE_MODULES)
    base = stage_key(STAGE, cfg.model_dump(mode="json"), upstream.name, code)
    index = index_dir(cfg, run_root)
    parts = snapshot(index, cfg, exclude_base=base, run_root=run_root) if cfg.index.enabled else []
    key = stage_key(STAGE, {"base": base, "index": [p["fingerprint"] for p in parts]}, upstream.name, code)
    out_dir, work = stage_dir(run_root, STAGE, key), stage_dir(run_root, "dedup-work", key)
    logger.info(
        "dedup: %d shards from %s against %d index parts -> %s", len(entries), upstream, len(parts), out_dir
    )

    refs = _signatures(entries, upstream, run_root, cfg)
    pairs = str(work / PAIRS)
    _options(bucket_task, "lsh buckets", run_root, work, PAIRS)(refs, str(index), parts, pairs, cfg)
    sidecars = [sidecar_name(Path(r.source).name) for r in refs]
    summary = dict(
        _options(cluster_task, "cluster", run_root, out_dir, *sidecars)(
            refs, str(index), parts, pairs, str(out_dir), cfg
        )
    )
    decided = summary.pop("sidecars")
    filtered = [
        _options(
            filter_task, f"filter: {e['path']}", run_root, out_dir, e["path"], sidecar_name(e["path"])
        ).submit(
            str(upstream / e["path"]),
            e["fingerprint"],
            decided[sidecar_name(e["path"])],
            str(out_dir),
            cfg.batch_size,
        )
        for e in entries
    ]
    shards: list[ShardRef] = gather(filtered, "dedup-filter-progress", "dedup: filtering shards")
    manifest = stage_manifest(STAGE, key, code, str(upstream), cfg.model_dump(mode="json"), shards)
    manifest["counts"]["documents_in"] = summary["documents"]
    manifest["dedup"] = summary
    manifest["index"] = {"path": str(index) if cfg.index.enabled else None, "parts": parts}
    previous = read_manifest(out_dir)
    if previous is None or previous["shards"] != manifest["shards"]:
        write_manifest(out_dir, manifest)
    if cfg.index.enabled:
        committed = _options(commit_task, "index commit", run_root, index, part_name(base))
        committed(refs, str(out_dir), str(index), cfg, base, run_root)
    _publish(manifest, out_dir, cluster_summary(str(out_dir), [str(upstream / e["path"]) for e in entries]))
    counts = manifest["counts"]
    logger.info("dedup: kept %d of %d documents -> %s", counts["documents"], summary["documents"], out_dir)
    return {"stage_dir": str(out_dir), **counts, "dedup": manifest["dedup"]}


def run_dedup(
    run_root: str,
    cfg: DedupConfig,
    workers: int = 0,
    curate_dir: str | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Run the dedup flow on `workers` threads (0: one per CPU) or a Dask cluster."""
    # A URI run root: the curate stage and the dedup index are downloaded first, the outputs uploaded after.
    with (
        workspace(str(run_root), curate_dir, newest=["curate"], every=["dedup-index"]) as ws,
        stage_tags(STAGE),
    ):
        return dedup_flow.with_options(task_runner=task_runner(workers, dask_address))(
            run_root=ws.root, config=cfg, curate_dir=ws.local(curate_dir)
        )
