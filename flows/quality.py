"""The train-quality flow: fit the fastText quality classifier, evaluate it, publish metrics and the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from storage.cache import result_store
from tasks.quality import QualityTrainConfig, evaluate_labeled_task, train_quality_task

METRIC_COLUMNS = ("n", "positives", "negatives", "auc", "precision", "recall", "accuracy", "threshold")


def _train(positives: list[str], negatives: list[str], out: Path, cfg: QualityTrainConfig) -> dict[str, Any]:
    """Run the training task; a cached result whose model or card has gone missing is recomputed."""
    runner = train_quality_task.with_options(
        task_run_name=f"train-quality: {len(positives)} positive, {len(negatives)} negative inputs",
        result_storage=result_store(out),
    )
    args = ([Path(p) for p in positives], [Path(n) for n in negatives], out, cfg)
    ref = runner.submit(*args).result()
    if not (Path(ref["model_path"]).is_file() and Path(ref["card_path"]).is_file()):
        ref = runner.with_options(refresh_cache=True).submit(*args).result()
    return ref


def _publish(ref: dict[str, Any], labeled: dict[str, Any] | None, eval_jsonl: str | None) -> None:
    """A table of precision/recall/AUC per evaluation set and a markdown note with the model and hash."""
    rows = [{"split": "held-out passages", **{k: ref["metrics"].get(k) for k in METRIC_COLUMNS}}]
    if labeled is not None:
        rows.append(
            {
                "split": f"labeled: {Path(eval_jsonl or '').name}",
                **{k: labeled.get(k) for k in METRIC_COLUMNS},
            }
        )
    create_table_artifact(
        key="quality-classifier-metrics",
        table=rows,
        description="Quality classifier: precision and recall at score >= 0.5, and ROC AUC",
    )
    create_markdown_artifact(
        key="quality-classifier-model",
        markdown=(
            f"# Quality classifier\n\n- model: `{ref['model_path']}`\n- sha256: `{ref['sha256']}`\n"
            f"- card: `{ref['card_path']}`\n- held-out AUC: **{ref['metrics'].get('auc')}**\n"
            + (f"- labeled-set AUC: **{labeled.get('auc')}**\n" if labeled is not None else "")
            + f"\nUse it with `quality.model_path={ref['model_path']}`.\n"
        ),
        description="Where the trained quality classifier is",
    )


@flow(name="train-quality", flow_run_name="train-quality -> {out_dir}")
def train_quality_flow(
    positives: list[str],
    negatives: list[str],
    out_dir: str,
    config: QualityTrainConfig | None = None,
    eval_jsonl: str | None = None,
) -> dict[str, Any]:
    """Train the quality classifier from shards/JSONL of good and bad text; return model, hash, metrics."""
    cfg = config or QualityTrainConfig()
    logger = get_run_logger()
    out = Path(out_dir).resolve()
    ref = _train(positives, negatives, out, cfg)
    logger.info("quality classifier %s (held-out AUC %s)", ref["model_path"], ref["metrics"].get("auc"))
    labeled = None
    if eval_jsonl:
        labeled = evaluate_labeled_task.submit(ref["model_path"], Path(eval_jsonl)).result()
        logger.info("AUC on %s: %s", eval_jsonl, labeled.get("auc"))
    _publish(ref, labeled, eval_jsonl)
    return {**ref, "labeled": labeled}
