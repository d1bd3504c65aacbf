"""The end-to-end pipeline flow: ingest, curate, dedup, tokenize and train as subflows."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config import PipelineConfig
from flows.curate import run_curate
from flows.dedup import run_dedup
from flows.ingest import run_ingest
from flows.tokenize_flow import run_tokenize
from flows.train import train_flow
from storage.remote import workspace


@flow(name="pipeline", flow_run_name="pipeline {config.run_root}")
def pipeline_flow(config: PipelineConfig) -> dict[str, Any]:
    """Run every stage in order on one config; return each stage's summary."""
    if not config.inputs:
        raise ValueError("config.inputs is empty: give files, folders, URLs or builtin:python-docs")
    root, workers, dask = config.run_root, config.workers, config.dask_address
    ingest = run_ingest(config.inputs, root, config.ingest, workers, dask)
    curate = run_curate(root, config.curate, workers, ingest["stage_dir"], dask)
    dedup = run_dedup(root, config.dedup, workers, curate["stage_dir"], dask)
    tokens = run_tokenize(root, config.tokenize, workers, dedup["stage_dir"], dask)
    with workspace(root, tokens["stage_dir"]) as ws:
        trained = train_flow(run_root=ws.root, config=config.train, tokens_dir=tokens["stage_dir"])
    return {"ingest": ingest, "curate": curate, "dedup": dedup, "tokenize": tokens, "train": trained}
