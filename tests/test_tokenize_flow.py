"""The tokenize flow on a real Prefect server: manifest totals, caching, nanoGPT export, CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import task_runs, task_states, write_doc_stage
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tokenize_flow import tokenize_flow
from storage.layout import read_manifest
from storage.schemas import new_document
from storage.tokens import open_token_shard
from tasks.tokenize_shards import TokenizeConfig
from tasks.tokenizer import TokenizerConfig, tokenizer_hash

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "that",
    "for",
    "it",
    "with",
    "as",
    "his",
    "on",
    "be",
    "at",
    "by",
    "had",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
]


@pytest.fixture()
def deduped(tmp_path: Path) -> Path:
    """A run root with a dedup stage of three shards of English-like text."""
    rng = random.Random(0)
    docs = [
        new_document(
            " ".join(rng.choices(WORDS, k=rng.randint(20, 400))) + ".", source="text", uri=f"m://{i}"
        )
        for i in range(300)
    ]
    write_doc_stage(tmp_path / "run" / "dedup" / "d1", [docs[:100], docs[100:220], docs[220:]], stage="dedup")
    return tmp_path / "run"


def test_tokenize_flow_manifest_cache_and_export(deduped: Path, prefect_api: str) -> None:
    cfg = TokenizeConfig(tokenizer=TokenizerConfig(vocab_size=400), val_fraction=0.1, export_nanogpt=True)
    flow = tokenize_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    state = flow(run_root=str(deduped), config=cfg, return_state=True)
    first = state.result()
    assert set(task_states(state.state_details.flow_run_id)) == {"Completed"}
    out = Path(first["stage_dir"])
    manifest = read_manifest(out)
    digest = manifest["tokenizer"]["hash"]
    assert tokenizer_hash(out / "tokenizer.json") == digest and manifest["tokenizer"]["dtype"] == "uint16"
    for split in ("train", "val"):
        shards = [open_token_shard(out / s["files"][split], digest) for s in manifest["shards"]]
        assert manifest["counts"][split]["tokens"] == sum(s.tokens.size for s in shards) > 0
        assert manifest["counts"][split]["documents"] == sum(len(s.ids) for s in shards)
        assert np.fromfile(out / f"{split}.bin", dtype=np.uint16).size == manifest["counts"][split]["tokens"]
    assert manifest["counts"]["train"]["documents"] + manifest["counts"]["val"]["documents"] == 300

    again = flow(run_root=str(deduped), config=cfg, return_state=True)
    assert again.result() == first
    assert set(task_states(again.state_details.flow_run_id)) == {"Cached"}


def test_tokenizer_kept_retrained_or_given(deduped: Path, prefect_api: str, tmp_path: Path) -> None:
    """The tokenizer is frozen per run root, retrained only when asked, and taken as given from a file."""
    cfg = TokenizeConfig(tokenizer=TokenizerConfig(vocab_size=400), val_fraction=0.1)
    first = tokenize_flow(run_root=str(deduped), config=cfg)
    rng = random.Random(1)
    other_words = ["zebra", "quixotic", "jumps", "lazy", "vexing", "fjord", "glyph", "nymph", "waltz"]
    more = [
        new_document(" ".join(rng.choices(other_words, k=200)) + ".", source="text", uri=f"m://more-{i}")
        for i in range(100)
    ]
    grown = write_doc_stage(deduped / "dedup" / "d2", [more], stage="dedup")
    # New documents: the run root's tokenizer is kept (its shards and checkpoints stay valid).
    kept = tokenize_flow(run_root=str(deduped), config=cfg, docs_dir=str(grown))
    assert kept["tokenizer"]["hash"] == first["tokenizer"]["hash"]
    retrain = cfg.model_copy(update={"retrain_tokenizer": True})
    retrained = tokenize_flow(run_root=str(deduped), config=retrain, docs_dir=str(grown))
    assert retrained["tokenizer"]["hash"] != first["tokenizer"]["hash"]
    assert read_manifest(Path(retrained["stage_dir"]))["tokenizer"]["hash"] == retrained["tokenizer"]["hash"]
    # A given tokenizer.json is used as it is: nothing is trained.
    given = tmp_path / "given" / "tokenizer.json"
    given.parent.mkdir()
    given.write_bytes((Path(first["stage_dir"]) / "tokenizer.json").read_bytes())
    state = tokenize_flow(
        run_root=str(deduped), config=cfg.model_copy(update={"tokenizer_path": str(given)}), return_state=True
    )
    assert state.result()["tokenizer"]["hash"] == tokenizer_hash(given) == first["tokenizer"]["hash"]
    assert state.result()["tokenizer"]["path"] == str(given)
    names = [r.name for r in task_runs(state.state_details.flow_run_id)]
    assert names and not any("train tokenizer" in n for n in names)


def test_cli_tokenize(deduped: Path, prefect_api: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    args = [
        "tokenize",
        "--run-root",
        str(deduped),
        "tokenize.tokenizer.vocab_size=300",
        "tokenize.val_fraction=0",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["tokenizer"]["vocab_size"] == 300 and summary["val"]["documents"] == 0
    assert summary["train"]["documents"] == 300
