"""The pipeline flow (ingest, curate, dedup, tokenize and train as subflows) and the incremental flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.config import PipelineConfig, apply_overrides
from flows.curate import run_curate
from flows.dedup import run_dedup
from flows.ingest import run_ingest
from flows.stage_tags import stage_tags
from flows.tokenize_flow import run_tokenize
from flows.train import train_flow
from storage.remote import is_remote, workspace
from tasks.inputs import URL_RE


def with_overrides(config: PipelineConfig, overrides: list[str] | None) -> PipelineConfig:
    """The config with `dotted.key=value` overrides applied and validated again."""
    if not overrides:
        return config
    return PipelineConfig.model_validate(apply_overrides(config.model_dump(mode="json"), list(overrides)))


def run_name() -> str:
    """`<flow> <run root>` with the overrides applied, so the UI lists where a run really writes."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    try:
        config = PipelineConfig.model_validate(params["config"])
        root = with_overrides(config, params.get("overrides")).run_root
    except (KeyError, ValueError):
        # A bad override fails the run itself, with the validation message; the name stays plain.
        root = "(invalid config)"
    return f"{flow_run.flow_name} {root}"


@flow(name="pipeline", flow_run_name=run_name)
def pipeline_flow(config: PipelineConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every stage in order on one config; return each stage's summary."""
    config = with_overrides(config, overrides)
    if not config.inputs:
        raise ValueError("config.inputs is empty: give files, folders, URLs or builtin:python-docs")
    root, workers, dask = config.run_root, config.workers, config.dask_address
    ingest = run_ingest(config.inputs, root, config.ingest, workers, dask)
    curate = run_curate(root, config.curate, workers, ingest["stage_dir"], dask)
    dedup = run_dedup(root, config.dedup, workers, curate["stage_dir"], dask)
    tokens = run_tokenize(root, config.tokenize, workers, dedup["stage_dir"], dask)
    with workspace(root, tokens["stage_dir"]) as ws, stage_tags("train"):
        trained = train_flow(run_root=ws.root, config=config.train, tokens_dir=tokens["stage_dir"])
    return {"ingest": ingest, "curate": curate, "dedup": dedup, "tokenize": tokens, "train": trained}


def watched_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """The inputs that exist now (URLs, storage URIs and builtin corpora count as existing), and the rest."""
    present = [
        i
        for i in inputs
        if URL_RE.match(i) or is_remote(i) or i.startswith("builtin:") or Path(i).expanduser().exists()
    ]
    return present, [i for i in inputs if i not in present]


@flow(name="incremental", flow_run_name=run_name)
def incremental_flow(config: PipelineConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Ingest, curate and dedup the watched inputs: old files hit the cache, new ones meet all in dedup."""
    config = with_overrides(config, overrides)
    inputs, missing = watched_inputs(config.inputs)
    if missing:
        # A watched folder that does not exist yet is an empty inbox, not a failed night.
        get_run_logger().warning("incremental: skipping inputs that do not exist: %s", ", ".join(missing))
    if not inputs:
        return {"skipped": "no watched input exists", "missing": missing}
    root, workers, dask = config.run_root, config.workers, config.dask_address
    ingest = run_ingest(inputs, root, config.ingest, workers, dask)
    curate = run_curate(root, config.curate, workers, ingest["stage_dir"], dask)
    dedup = run_dedup(root, config.dedup, workers, curate["stage_dir"], dask)
    return {"ingest": ingest, "curate": curate, "dedup": dedup, "missing": missing}


def outline(result: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's result without per-step loss lists: each stage's outputs and counts."""
    train = {k: v for k, v in result["train"].items() if k not in ("train_losses", "val_losses")}
    val = result["train"].get("val_losses") or []
    return {**result, "train": {**train, "final_val_loss": val[-1][1] if val else None}}


def report(result: dict[str, Any]) -> str:
    """A few lines for people: documents kept by each stage, tokens, the checkpoint and a sample."""
    ingest, curate, dedup, tokens, train = (
        result[k] for k in ("ingest", "curate", "dedup", "tokenize", "train")
    )
    lines = [
        f"ingest:   {ingest['documents']:,} documents, {ingest['drops']:,} inputs dropped"
        f" -> {ingest['stage_dir']}",
        f"curate:   kept {curate['documents']:,} of {curate['documents_in']:,} -> {curate['stage_dir']}",
        f"dedup:    kept {dedup['documents']:,} of {dedup['documents_in']:,} -> {dedup['stage_dir']}",
        f"tokenize: {tokens['train']['tokens']:,} train / {tokens['val']['tokens']:,} val tokens"
        f" -> {tokens['stage_dir']}",
        f"train:    {train['step']} steps, final val loss "
        + (f"{train['val_losses'][-1][1]:.3f}" if train.get("val_losses") else "n/a"),
        f"checkpoint: {train['checkpoint']}",
    ]
    for i, text in enumerate(train.get("samples") or []):
        lines += [f"sample {i + 1}:", *("  " + line for line in text.splitlines() or [""])]
    return "\n".join(lines)
