"""The `crucible` command line: one subcommand per flow, each a thin call into `flows/`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from flows.config import PipelineConfig, is_override, load_config


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate `key=value` overrides from input paths."""
    overrides = [a for a in args if is_override(a)]
    return [a for a in args if a not in overrides], overrides


def _config(ns: argparse.Namespace, extra: list[str]) -> PipelineConfig:
    """Load the config file, apply overrides and the --run-root flag."""
    if ns.run_root:
        extra = [*extra, f"run_root={ns.run_root}"]
    if getattr(ns, "dask_address", None):
        extra = [*extra, f"dask_address={ns.dask_address}"]
    return load_config(ns.config, extra)


def cmd_ingest(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible ingest PATH_OR_URL... --run-root DIR`."""
    from flows.ingest import run_ingest

    inputs, overrides = _split(ns.inputs)
    cfg = _config(ns, overrides)
    inputs = inputs or cfg.inputs
    if not inputs:
        raise ValueError("no inputs: give files, folders, URLs, *.urls lists or builtin:python-docs")
    return run_ingest(inputs, cfg.run_root, cfg.ingest, cfg.workers, cfg.dask_address)


def cmd_curate(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible curate --run-root DIR`: filter the newest ingest stage (or --ingest-dir)."""
    from flows.curate import run_curate

    cfg = _config(ns, ns.overrides)
    return run_curate(cfg.run_root, cfg.curate, cfg.workers, ns.ingest_dir, cfg.dask_address)


def cmd_dedup(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible dedup --run-root DIR`: dedup the newest curate stage (or --curate-dir)."""
    from flows.dedup import run_dedup

    cfg = _config(ns, ns.overrides)
    return run_dedup(cfg.run_root, cfg.dedup, cfg.workers, ns.curate_dir, cfg.dask_address)


def cmd_tokenize(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible tokenize --run-root DIR`: train the tokenizer and tokenize the newest dedup stage."""
    from flows.tokenize_flow import run_tokenize

    cfg = _config(ns, ns.overrides)
    return run_tokenize(cfg.run_root, cfg.tokenize, cfg.workers, ns.docs_dir, cfg.dask_address)


def cmd_train(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible train --run-root DIR`: train the configured model on the newest token shards."""
    from flows.stage_tags import stage_tags
    from flows.train import train_flow
    from storage.remote import workspace

    cfg = _config(ns, ns.overrides)
    with workspace(cfg.run_root, ns.tokens_dir, newest=["tokens"]) as ws, stage_tags("train"):
        return train_flow(run_root=ws.root, config=cfg.train, tokens_dir=ws.local(ns.tokens_dir))


def _trained(ns: argparse.Namespace) -> tuple[Any, dict[str, Any], Path]:
    """The model of --checkpoint (or the newest train stage of --run-root) and its tokenizer.json."""
    from flows.train import tokenizer_of
    from model.checkpoint import load_model
    from storage.layout import find_stage_dirs

    if ns.checkpoint:
        where = Path(ns.checkpoint)
    else:
        stages = find_stage_dirs(ns.run_root or "runs/default", "train")
        if not stages:
            raise FileNotFoundError("no train stage found: give --checkpoint or --run-root")
        where = stages[0]
    model, state = load_model(where)
    stage = next((p for p in [where, *where.parents] if (p / "_manifest.json").exists()), None)
    tokenizer = Path(ns.tokenizer) if ns.tokenizer else (tokenizer_of(stage) if stage else None)
    if tokenizer is None or not tokenizer.exists():
        raise FileNotFoundError("tokenizer.json not found: give --tokenizer")
    return model, state, tokenizer


def cmd_generate(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible generate --checkpoint DIR --prompt TEXT`: sample a continuation."""
    from model.generate import sample_text

    model, state, tokenizer = _trained(ns)
    texts = [
        sample_text(
            model, tokenizer, ns.prompt, ns.max_new_tokens, ns.temperature, ns.top_k, ns.top_p, ns.seed + i
        )
        for i in range(ns.samples)
    ]
    return {"step": state["step"], "samples": texts}


def cmd_export(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible export --checkpoint DIR --out DIR`: write a Hugging Face Llama checkpoint."""
    from tokenizers import Tokenizer

    from model.export import export_llama
    from tasks.tokenizer import EOS, PAD

    model, state, tokenizer = _trained(ns)
    tok = Tokenizer.from_file(str(tokenizer))
    out = export_llama(
        model,
        model.cfg,
        Path(ns.out),
        tokenizer,
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
    )
    return {"step": state["step"], "out": str(out)}


def cmd_train_quality(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible train-quality --positive P... --negative N... --out DIR`."""
    from flows.quality import train_quality_flow

    return train_quality_flow(
        positives=ns.positive, negatives=ns.negative, out_dir=ns.out, eval_jsonl=ns.eval_jsonl
    )


def cmd_run(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible run CONFIG.yaml`: the whole pipeline."""
    from flows.pipeline import outline, pipeline_flow, report

    ns.config = ns.config_file
    result = pipeline_flow(config=_config(ns, ns.overrides))
    # People read the report (after the run's log lines, on stderr); scripts parse the JSON on stdout.
    print("\n" + report(result), file=sys.stderr)
    return outline(result)


def cmd_inspect(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible inspect RUN_ROOT`: manifests, drop reasons with examples."""
    from flows.inspect_run import inspect_run

    return inspect_run(Path(ns.run_root_pos), ns.stage, ns.reason, ns.n, ns.docs, ns.unaccounted)


def cmd_server(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible server`: a local Prefect server and a process worker, until Ctrl-C or SIGTERM."""
    from flows.server import ServerPlan, project_home, serve

    state = Path(ns.state_dir).expanduser().resolve() if ns.state_dir else None
    return serve(ServerPlan(project_home(ns.home), ns.host, ns.port, ns.pool, state))


def cmd_deploy(ns: argparse.Namespace) -> dict[str, Any]:
    """`crucible deploy [NAME...]`: register prefect.yaml's deployments with the server at PREFECT_API_URL."""
    from flows.deploy import deploy
    from flows.server import project_home

    return deploy(project_home(ns.home), ns.names)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="crucible", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="ingest files, folders, WARCs, URLs and URL lists")
    ingest.add_argument("inputs", nargs="*", help="paths, URLs, *.urls lists, builtin:python-docs; key=value")
    ingest.add_argument("--config", help="YAML pipeline config (its ingest section and inputs are used)")
    ingest.add_argument("--run-root", help="output folder (default: the config's run_root)")
    ingest.set_defaults(func=cmd_ingest)

    curate = sub.add_parser(
        "curate", help="language ID, heuristic filters and quality scores over ingested shards"
    )
    curate.add_argument(
        "overrides", nargs="*", help="dotted.key=value overrides, e.g. curate.langid.threshold=0.5"
    )
    curate.add_argument("--config", help="YAML pipeline config (its curate section is used)")
    curate.add_argument("--run-root", help="output folder (default: the config's run_root)")
    curate.add_argument(
        "--ingest-dir", help="ingest stage directory to curate (default: the newest in the run root)"
    )
    curate.set_defaults(func=cmd_curate)

    dedup = sub.add_parser("dedup", help="exact and MinHash near-duplicate removal over curated shards")
    dedup.add_argument(
        "overrides", nargs="*", help="dotted.key=value overrides, e.g. dedup.minhash=aggressive"
    )
    dedup.add_argument("--config", help="YAML pipeline config (its dedup section is used)")
    dedup.add_argument("--run-root", help="output folder (default: the config's run_root)")
    dedup.add_argument(
        "--curate-dir", help="curate stage directory to dedup (default: the newest in the run root)"
    )
    dedup.set_defaults(func=cmd_dedup)

    tokenize = sub.add_parser("tokenize", help="train a byte-level BPE tokenizer and write token shards")
    tokenize.add_argument(
        "overrides", nargs="*", help="dotted.key=value overrides, e.g. tokenize.val_fraction=0.05"
    )
    tokenize.add_argument("--config", help="YAML pipeline config (its tokenize section is used)")
    tokenize.add_argument("--run-root", help="output folder (default: the config's run_root)")
    tokenize.add_argument(
        "--docs-dir", help="document stage to tokenize (default: the newest dedup, else curate, stage)"
    )
    tokenize.set_defaults(func=cmd_tokenize)

    trainer = sub.add_parser("train", help="train the transformer on the newest token shards")
    trainer.add_argument(
        "overrides", nargs="*", help="dotted.key=value overrides, e.g. train.train.max_steps=500"
    )
    trainer.add_argument("--config", help="YAML pipeline config (its train section is used)")
    trainer.add_argument("--run-root", help="output folder (default: the config's run_root)")
    trainer.add_argument(
        "--tokens-dir", help="tokens stage to train on (default: the newest in the run root)"
    )
    trainer.set_defaults(func=cmd_train)

    for name, helptext in (("generate", "sample text from a checkpoint"), ("export", "export a checkpoint")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--checkpoint", help="checkpoint, checkpoints folder or train stage (newest one)")
        p.add_argument("--run-root", help="use the newest train stage of this run root")
        p.add_argument("--tokenizer", help="tokenizer.json (default: the one the model was trained with)")
        if name == "generate":
            p.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
            p.add_argument("--max-new-tokens", type=int, default=100)
            p.add_argument("--temperature", type=float, default=0.8)
            p.add_argument("--top-k", type=int, default=None)
            p.add_argument("--top-p", type=float, default=0.95)
            p.add_argument("--samples", type=int, default=1)
            p.add_argument("--seed", type=int, default=0)
            p.set_defaults(func=cmd_generate)
        else:
            p.add_argument("--out", required=True, help="output folder for the Hugging Face Llama checkpoint")
            p.set_defaults(func=cmd_export)

    quality = sub.add_parser("train-quality", help="train the fastText quality classifier")
    quality.add_argument("--positive", nargs="+", required=True, help="document shards or JSONL of good text")
    quality.add_argument("--negative", nargs="+", required=True, help="document shards or JSONL of bad text")
    quality.add_argument("--out", required=True, help="folder for quality-<hash>.bin and its card")
    quality.add_argument("--eval-jsonl", help="labeled JSONL to report AUC on (e.g. DCLM human labels)")
    quality.set_defaults(func=cmd_train_quality)

    run = sub.add_parser("run", help="run the whole pipeline from a YAML config")
    run.add_argument("config_file", help="YAML pipeline config, e.g. configs/demo.yaml")
    run.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    run.add_argument("--run-root", help="output folder (default: the config's run_root)")
    run.set_defaults(func=cmd_run)
    for stage in (ingest, curate, dedup, tokenize, run):
        stage.add_argument("--dask-address", help="Dask scheduler for the data stages, e.g. tcp://host:8786")

    insp = sub.add_parser("inspect", help="show a run's manifests and dropped inputs")
    insp.add_argument("run_root_pos", metavar="RUN_ROOT")
    insp.add_argument("--stage", default="ingest")
    insp.add_argument("--reason", help="print examples of this drop reason")
    insp.add_argument("-n", type=int, default=5, help="how many examples")
    insp.add_argument("--docs", type=int, default=0, help="also print this many sample documents")
    insp.add_argument(
        "--unaccounted",
        action="store_true",
        help="list ingested input files and URLs that no document or drop row names (expected: none)",
    )
    insp.set_defaults(func=cmd_inspect)

    server = sub.add_parser("server", help="run a local Prefect server (UI and API) and a process worker")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    server.add_argument("--port", type=int, default=4200, help="UI and API port (default: 4200)")
    server.add_argument("--pool", default="crucible-process", help="process work pool the worker polls")
    server.add_argument("--home", help="project folder (default: $CRUCIBLE_HOME, else the current one)")
    server.add_argument("--state-dir", help="Prefect state and SQLite file (default: HOME/.crucible/prefect)")
    server.set_defaults(func=cmd_server)

    dep = sub.add_parser("deploy", help="register prefect.yaml's deployments with the running server")
    dep.add_argument("names", nargs="*", help="only these, e.g. pipeline/demo (default: all)")
    dep.add_argument("--home", help="project folder with prefect.yaml (default: $CRUCIBLE_HOME, else here)")
    dep.set_defaults(func=cmd_deploy)
    return parser


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so exit handlers run: they stop the temporary Prefect server."""
    # Python's default SIGTERM ends the process at once, leaving that server (a child) running for good.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand, print where outputs are, exit non-zero with one line on failure."""
    _exit_on_sigterm()
    from flows.server import telemetry_off

    # The temporary server Prefect starts without PREFECT_API_URL inherits this process's environment.
    telemetry_off(os.environ)
    parser = build_parser()
    # Overrides may follow options (`ingest DIR --run-root X key=v`), which plain argparse refuses.
    ns, extra = parser.parse_known_args(argv)
    if extra and (
        ns.command not in ("ingest", "run", "curate", "dedup", "tokenize", "train")
        or any(a.startswith("-") for a in extra)
    ):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if ns.command == "ingest":
        ns.inputs = [*ns.inputs, *extra]
    elif ns.command in ("run", "curate", "dedup", "tokenize", "train"):
        ns.overrides = [*ns.overrides, *extra]
    try:
        result = ns.func(ns)
    except Exception as exc:
        print(f"crucible {ns.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str, ensure_ascii=False))
    # `inspect --unaccounted` is a check a nightly job can act on: some input left no trace at all.
    return 3 if result.get("unaccounted") else 0


if __name__ == "__main__":
    sys.exit(main())
