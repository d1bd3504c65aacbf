"""The tokenize flow: train a byte-level BPE tokenizer, then write train/val token shards per shard."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
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
    write_manifest,
)
from storage.remote import workspace
from storage.schemas import SCHEMA_VERSION
from storage.shards import atomic_write
from storage.tokens import export_nanogpt, token_dtype
from tasks.tokenize_shards import (
    SPLITS,
    TokenizeConfig,
    TokenShardRef,
    shard_names,
    tokenize_shard_task,
    train_tokenizer_task,
)
from tasks.tokenizer import load, special_ids, tokenizer_hash

STAGE = "tokens"
CODE_MODULES = (
    "storage.rows",
    "storage.layout",
    "storage.schemas",
    "storage.shards",
    "storage.tokens",
    "tasks.tokenizer",
    "tasks.tokenize_shards",
)
# What decides a trained tokenizer: a change elsewhere re-tokenizes but keeps the vocabulary.
TOKENIZER_MODULES = ("tasks.tokenizer",)


def _upstream(run_root: str, docs_dir: str | None) -> Path:
    """Documents to tokenize: the given stage, else the newest dedup stage, else the newest curate stage."""
    if docs_dir:
        return Path(docs_dir)
    for stage in ("dedup", "curate"):
        if dirs := find_stage_dirs(run_root, stage):
            return dirs[0]
    raise FileNotFoundError(f"no complete dedup or curate stage under {run_root}: run `crucible dedup` first")


def _tokenizer(
    run_root: str, cfg: TokenizeConfig, upstream: Path, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    """The tokenizer to use: the configured file, or one trained (and cached) on the upstream shards."""
    if cfg.tokenizer_path:
        path = Path(cfg.tokenizer_path)
        tok = load(path)
        eos, pad = special_ids(tok, cfg.tokenizer)
        vocab = tok.get_vocab_size()
        return {
            "path": str(path),
            "hash": tokenizer_hash(path),
            "vocab_size": vocab,
            "eos_id": eos,
            "pad_id": pad,
        }
    # Keyed by the tokenizer settings and the tokenizer code only; retraining also keys on the documents.
    data = short_hash([e["fingerprint"] for e in entries]) if cfg.retrain_tokenizer else None
    settings = cfg.tokenizer.model_dump(mode="json")
    out = stage_dir(
        run_root, "tokenizer", stage_key("tokenizer", settings, data, code_version(*TOKENIZER_MODULES))
    )
    kept = read_manifest(out)
    if kept is not None and (out / "tokenizer.json").is_file():
        return {k: kept[k] for k in ("path", "hash", "vocab_size", "eos_id", "pad_id")}
    trained = cached_options(train_tokenizer_task, "train tokenizer", run_root, out, "tokenizer.json")(
        [str(upstream / e["path"]) for e in entries],
        [e["fingerprint"] for e in entries],
        str(out),
        cfg.tokenizer,
    )
    write_manifest(out, {"stage": "tokenizer", "upstream": str(upstream), "config": settings, **trained})
    return trained


def _manifest(
    key: str, cfg: TokenizeConfig, upstream: Path, tok: dict[str, Any], refs: list[TokenShardRef]
) -> dict[str, Any]:
    """Stage manifest: tokenizer, every shard with its counts, and totals per split."""
    counts: dict[str, Any] = {
        s: {"documents": sum(r.documents[s] for r in refs), "tokens": sum(r.tokens[s] for r in refs)}
        for s in SPLITS
    }
    # Rows that could not be tokenized (unreadable); each shard's <stem>.drops.parquet names them.
    counts["dropped"] = dict(sorted(sum((Counter(r.dropped) for r in refs), Counter()).items()))
    return {
        "stage": STAGE,
        "key": key,
        "schema_version": SCHEMA_VERSION,
        "code_version": code_version(*CODE_MODULES),
        "upstream": str(upstream),
        "config": cfg.model_dump(mode="json"),
        "tokenizer": {**tok, "path": "tokenizer.json", "dtype": token_dtype(tok["vocab_size"]).name},
        "shards": [r.model_dump() for r in sorted(refs, key=lambda r: r.source)],
        "counts": counts,
    }


@flow(name="tokenize", flow_run_name="tokenize {run_root}", task_runner=ThreadPoolTaskRunner(max_workers=2))
@untagged_tasks
def tokenize_flow(
    run_root: str, config: TokenizeConfig | None = None, docs_dir: str | None = None
) -> dict[str, Any]:
    """Train (or load) the tokenizer, tokenize every shard, write the manifest (and nanoGPT .bin files)."""
    cfg = config or TokenizeConfig()
    logger = get_run_logger()
    upstream = _upstream(run_root, docs_dir)
    entries = (read_manifest(upstream) or {})["shards"]
    tok = _tokenizer(run_root, cfg, upstream, entries)
    view = {**cfg.model_dump(mode="json", exclude={"tokenizer", "tokenizer_path"}), "tokenizer": tok["hash"]}
    key = stage_key(STAGE, view, upstream.name, code_version(*CODE_MODULES))
    out = stage_dir(run_root, STAGE, key)
    logger.info(
        "tokenize: %d shards from %s with tokenizer %s -> %s", len(entries), upstream, tok["hash"], out
    )
    futures = [
        cached_options(
            tokenize_shard_task,
            f"tokenize: {e['path']}",
            run_root,
            out,
            *shard_names(e["path"]).values(),
        ).submit(str(upstream / e["path"]), e["fingerprint"], tok["path"], tok["hash"], str(out), cfg)
        for e in entries
    ]
    refs: list[TokenShardRef] = gather(futures, "tokenize-progress", "tokenize: shards")
    data = Path(tok["path"]).read_bytes()
    atomic_write(out / "tokenizer.json", lambda tmp: tmp.write_bytes(data))
    manifest = _manifest(key, cfg, upstream, tok, refs)
    if cfg.export_nanogpt:
        for split in SPLITS:
            files = [out / r.files[split] for r in sorted(refs, key=lambda r: r.source)]
            export_nanogpt(files, out / f"{split}.bin", tok["hash"])
    write_manifest(out, manifest)
    counts = manifest["counts"]
    create_markdown_artifact(
        key="tokenize-summary",
        markdown=(
            f"# Tokenize\n\n- tokenizer: `{tok['hash']}` ({tok['vocab_size']} tokens)\n"
            + "".join(
                f"- {s}: **{counts[s]['tokens']:,}** tokens in {counts[s]['documents']:,} documents\n"
                for s in SPLITS
            )
            + f"- documents dropped as unusable: {sum(counts['dropped'].values())}\n"
            + f"- output: `{out}`\n"
        ),
        description="Tokenization summary",
    )
    logger.info(
        "tokenize: %s train / %s val tokens -> %s", counts["train"]["tokens"], counts["val"]["tokens"], out
    )
    return {"stage_dir": str(out), "tokenizer": tok, **counts}


def run_tokenize(
    run_root: str,
    cfg: TokenizeConfig,
    workers: int = 0,
    docs_dir: str | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Run the tokenize flow on `workers` threads (0: two; encoding is multi-threaded) or a Dask cluster."""
    with workspace(str(run_root), docs_dir, newest=["dedup", "curate"]) as ws, stage_tags("tokenize"):
        return tokenize_flow.with_options(task_runner=task_runner(workers, dask_address, default=2))(
            run_root=ws.root, config=cfg, docs_dir=ws.local(docs_dir)
        )
