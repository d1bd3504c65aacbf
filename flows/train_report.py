"""What a training run shows: samples from the final checkpoint, the loss curve, links to its outputs."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_image_artifact, create_link_artifact, create_markdown_artifact

from storage.cache import SHARD_POLICY
from storage.shards import atomic_write
from tasks.report import svg_curve, text_curve

CURVE_FILE = "loss_curve.svg"


def sample(
    checkpoint_dir: str,
    checkpoint_fingerprint: str,
    tokenizer: str,
    prompt: str,
    count: int,
    max_new_tokens: int,
    temperature: float,
) -> list[str]:
    """`count` seeded samples from a checkpoint (the fingerprint keys the cache on its content)."""
    from model.checkpoint import load_model
    from model.generate import sample_text

    model, _ = load_model(Path(checkpoint_dir))
    return [
        sample_text(model, tokenizer, prompt, max_new_tokens, temperature, None, 0.95, seed)
        for seed in range(count)
    ]


sample_task = task(name="sample", cache_policy=SHARD_POLICY, persist_result=True, retries=1)(sample)


def curves(summary: dict[str, Any]) -> dict[str, list[list[float]]]:
    """The train and validation loss series of a training summary."""
    return {"train loss": summary["train_losses"], "val loss": summary["val_losses"]}


def write_curve(out_dir: Path, summary: dict[str, Any]) -> Path:
    """Write the loss curve as SVG into the train stage directory (atomically)."""
    svg = svg_curve(curves(summary), "loss by step")
    path = Path(out_dir) / CURVE_FILE
    atomic_write(path, lambda tmp: tmp.write_text(svg, encoding="utf-8"))
    return path


def _markdown(summary: dict[str, Any], preset: str, samples: list[str]) -> str:
    """The train summary: model, steps, throughput, final losses, the curve as text and the samples."""
    val = summary["val_losses"]
    lines = [
        "# Train",
        "",
        f"- model: {summary['params']:,} parameters ({preset}), {summary['device']}, "
        f"{summary['flops_per_token'] / 1e6:,.1f} MFLOPs per token (training)",
        f"- steps: {summary['step']}, tokens/s: {summary['tokens_per_s']:,.0f}",
        f"- final train loss: {summary['train_losses'][-1][1]:.4f}" if summary["train_losses"] else "",
        f"- final val loss: {val[-1][1]:.4f}"
        if val
        else f"- no evaluation: {summary.get('no_eval') or 'no validation split'}",
        f"- checkpoint: `{summary['checkpoint']}`",
        "",
        "```",
        text_curve(curves(summary)),
        "```",
    ]
    for i, text in enumerate(samples):
        lines += ["", f"**Sample {i + 1}**", "", "```", text.replace("```", "'''"), "```"]
    return "\n".join(lines) + "\n"


def publish(summary: dict[str, Any], preset: str, out_dir: Path, samples: list[str]) -> None:
    """Markdown summary with samples, the loss-curve image, links to the checkpoint and the curve file."""
    curve = write_curve(out_dir, summary)
    create_markdown_artifact(
        key="train-summary", markdown=_markdown(summary, preset, samples), description="Training summary"
    )
    encoded = base64.b64encode(curve.read_bytes()).decode()
    create_image_artifact(
        image_url=f"data:image/svg+xml;base64,{encoded}", key="train-loss-curve", description="Loss curve"
    )
    if summary["checkpoint"]:
        create_link_artifact(
            link=Path(summary["checkpoint"]).resolve().as_uri(),
            link_text=summary["checkpoint"],
            key="train-checkpoint",
            description="Final checkpoint",
        )
    create_link_artifact(
        link=Path(out_dir).resolve().as_uri(),
        link_text=str(out_dir),
        key="train-outputs",
        description="Outputs",
    )
