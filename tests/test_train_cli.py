"""`crucible train`, `generate` and `export` from the command line, on a real tokenizer and token shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
from conftest import write_doc_stage
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
)

from flows.tokenize_flow import tokenize_flow
from model.checkpoint import load_model
from storage.schemas import new_document
from tasks.tokenize_shards import TokenizeConfig
from tasks.tokenizer import TokenizerConfig

ROOT = Path(__file__).parents[1]
LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "All that glitters is not gold, and all who wander are not lost.",
    "To be or not to be, that is the question.",
]


def _cli(*args: str, api: str) -> dict:
    """Run `python -m flows.cli ARGS`; the parsed JSON summary it prints."""
    env = {**os.environ, "PREFECT_API_URL": api}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


@pytest.fixture()
def tokens_root(tmp_path: Path, prefect_api: str) -> Path:
    """A run root with a dedup stage of repetitive English and its tokens stage (real BPE tokenizer)."""
    docs = [
        new_document(" ".join(LINES[i % 4 :] + LINES[: i % 4]) * 3, source="text", uri=f"m://{i}")
        for i in range(40)
    ]
    run = tmp_path / "run"
    write_doc_stage(run / "dedup" / "d1", [docs[:20], docs[20:]], stage="dedup")
    cfg = TokenizeConfig(tokenizer=TokenizerConfig(vocab_size=300), val_fraction=0.2)
    tokenize_flow(run_root=str(run), config=cfg)
    return run


def test_train_generate_export(tokens_root: Path, prefect_api: str, tmp_path: Path) -> None:
    settings = [
        "train.model.block_size=32",
        "train.train.max_steps=30",
        "train.train.warmup_steps=3",
        "train.train.lr=0.01",
        "train.train.batch_size=4",
        "train.train.eval_every=0",
        "train.train.eval_batches=2",
        "train.train.checkpoint_every=0",
        "train.device=cpu",
    ]
    trained = _cli("train", "--run-root", str(tokens_root), *settings, api=prefect_api)
    assert trained["step"] == 30 and trained["checkpoint"].endswith("step-000030")
    assert trained["train_losses"][-1][1] < trained["train_losses"][0][1]
    # The run's summary: samples from the final checkpoint, the loss curve as a file and as artifacts.
    assert len(trained["samples"]) == 2 and all(isinstance(t, str) and t for t in trained["samples"])
    svg = ElementTree.parse(Path(trained["stage_dir"]) / "loss_curve.svg").getroot()
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}polyline")) == 2
    with get_client(sync_client=True) as client:
        # Other tests share the server: this run's artifacts are those of its own train flow run.
        name = FlowRunFilterName(any_=[f"train {tokens_root}"])
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=name))
        for key, kind in (
            ("train-summary", "markdown"),
            ("train-loss-curve", "image"),
            ("train-checkpoint", "markdown"),
        ):
            (artifact,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])
                )
            )
            assert artifact.type == kind
            if key == "train-summary":
                assert "Sample 1" in artifact.data and "train loss" in artifact.data
            if key == "train-checkpoint":  # a link artifact is stored as markdown
                assert Path(trained["checkpoint"]).resolve().as_uri() in artifact.data

    # generate finds the newest train stage and the tokenizer its tokens stage kept.
    sampled = _cli(
        "generate",
        "--run-root",
        str(tokens_root),
        "--prompt",
        "The quick",
        "--max-new-tokens",
        "12",
        "--samples",
        "2",
        api=prefect_api,
    )
    assert sampled["step"] == 30 and len(sampled["samples"]) == 2
    assert all(s.startswith("The quick") and len(s) > len("The quick") for s in sampled["samples"])

    out = tmp_path / "hf"
    exported = _cli("export", "--checkpoint", trained["checkpoint"], "--out", str(out), api=prefect_api)
    assert exported["out"] == str(out) and (out / "tokenizer.json").is_file()
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(out).eval()
    ours, _ = load_model(Path(trained["checkpoint"]))
    idx = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        theirs = hf(idx).logits[..., :300]
        mine = ours(idx)[0][..., :300]
    assert torch.allclose(theirs, mine, atol=1e-4)
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 0


def test_generate_without_a_train_stage_fails_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "generate", "--run-root", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "crucible generate: error: FileNotFoundError: no train stage found: give --checkpoint or --run-root"
    ]
