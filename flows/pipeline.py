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


@flow(name="pipeline", flow_run_name="pipeline {config.run_root}")
def pipeline_flow(config: PipelineConfig) -> dict[str, Any]:
    """Run every stage in order on one config; return each stage's summary."""
    if not config.inputs:
        raise ValueError("config.inputs is empty: give files, folders, URLs or builtin:python-docs")
    ingest = run_ingest(config.inputs, config.run_root, config.ingest, config.workers)
    curate = run_curate(config.run_root, config.curate, config.workers, ingest["stage_dir"])
    dedup = run_dedup(config.run_root, config.dedup, config.workers, curate["stage_dir"])
    tokens = run_tokenize(config.run_root, config.tokenize, config.workers, dedup["stage_dir"])
    trained = train_flow(run_root=config.run_root, config=config.train, tokens_dir=tokens["stage_dir"])
    return {"ingest": ingest, "curate": curate, "dedup": dedup, "tokenize": tokens, "train": trained}
