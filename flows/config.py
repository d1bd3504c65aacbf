"""The pipeline config: one YAML file composing each stage's own config, plus key=value overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from flows.train import TrainStage
from tasks.dedup_config import DedupConfig
from tasks.ingest import IngestConfig
from tasks.scoring import CurateConfig
from tasks.tokenize_shards import TokenizeConfig

OVERRIDE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)$", re.DOTALL)


class PipelineConfig(BaseModel):
    """A whole run: where inputs come from, where outputs go, and each stage's settings."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    run_root: str = "runs/default"
    """Folder that holds every stage's outputs (`<run_root>/<stage>/<key>/`)."""
    inputs: list[str] = Field(default_factory=list)
    """Files, folders, URLs or URL lists (`*.urls`) to ingest; `builtin:python-docs` is the demo corpus."""
    workers: int = 0
    """Input groups processed at once, each in its own worker process; 0 means one per CPU."""
    dask_address: str | None = None
    """Dask scheduler (`tcp://host:8786`) that runs the ingest, curate, dedup and tokenize tasks; unset:
    this machine's threads. Workers must share the run root's filesystem; ingest needs them non-daemonic."""
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    """Ingest stage settings."""
    curate: CurateConfig = Field(default_factory=CurateConfig)
    """Curation settings: language ID, heuristic filters, quality classifier."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    """Deduplication settings: exact, MinHash-LSH near dedup, verification, persistent index."""
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    """Tokenizer training (byte-level BPE) and token shards."""
    train: TrainStage = Field(default_factory=TrainStage)
    """Model preset and overrides, optimizer, schedule, evaluation and checkpoints."""


def is_override(arg: str) -> bool:
    """Whether a command-line argument is a `dotted.key=value` override rather than a path."""
    return bool(OVERRIDE_RE.match(arg)) and not Path(arg).exists()


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `a.b.c=value` entries in a nested dict; values are parsed as YAML scalars or lists."""
    for item in overrides:
        match = OVERRIDE_RE.match(item)
        if not match:
            raise ValueError(f"override {item!r} is not of the form dotted.key=value")
        *parents, leaf = match.group(1).split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(match.group(2)) if match.group(2) else ""
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config (or the defaults), apply overrides, and validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping")
        data = loaded or {}
    return PipelineConfig.model_validate(apply_overrides(data, list(overrides or [])))
