"""Training-step speed: our Transformer vs transformers' LlamaForCausalLM built from the same config.

Both models get the configuration `model.export.llama_config` writes (layers, heads, kv heads, width,
FFN, padded vocabulary, tied embeddings), fp32, SDPA attention, the same initial weights (ours,
renamed for Llama) and the same random token batches. A step is what model/train.py does: forward with
the loss, backward, the loss read back, gradient clipping and an AdamW step over two parameter groups
(ours from `model.optim.make_optimizer`, HF's built alike); the first `--warmup` steps are not timed.
Ours runs under the malloc tuning model/train.py applies on CPU (model.malloc: freed tensor memory stays
mapped for the next step); HF runs as transformers leaves the process, or with it too (`--same-malloc`),
which separates what the runtime gains from what the model does.
Equal work: HF gets labels=x and shifts them itself, ours gets targets=x shifted left with the last
position ignored, so both score the same tokens, and the first losses agree. Each model runs in a fresh
spawned process, so its peak RSS (VmHWM) is its own (the HF process also pays for importing
transformers). Both use the same `torch.set_num_threads` (default: every core). With `--rounds` above 1,
the two alternate which goes first; the report gives the best round of each and the median ratio of the
rounds run back to back, which damps noise from other jobs on a shared machine.

On a CUDA device (`--device cuda`, not exercised on the CPU-only development machine) the timing
synchronizes and MFU is printed too: tokens/s · flops_per_token / peak FLOP/s, the peak the training
loop uses (`model.train.peak_flops`: the CRUCIBLE_PEAK_FLOPS environment variable, else its table of
dense bf16 tensor-core peaks by device name). The runs here are fp32, so MFU against a bf16 peak
understates what a bf16 run would reach.

    python benchmarks/bench_train_step.py --preset small --preset tiny --rounds 6
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from model.config import GPTConfig, param_count  # noqa: E402
from model.export import llama_config, llama_state_dict  # noqa: E402
from model.malloc import reuse_freed_memory  # noqa: E402
from model.optim import TrainConfig, make_optimizer  # noqa: E402
from model.train import clip_grads, mfu, peak_flops  # noqa: E402
from model.transformer import Transformer  # noqa: E402

VOCAB = 8192
LR, WEIGHT_DECAY, GRAD_CLIP = 3e-4, 0.1, 1.0


def batches(cfg: GPTConfig, batch: int, count: int, seed: int) -> list[Tensor]:
    """`count` random (batch, block_size) token batches, identical in every process."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=gen) for _ in range(count)]


Built = tuple[nn.Module, Callable[[Tensor], Tensor], torch.optim.Optimizer]


def build_ours(cfg: GPTConfig, weights: Path, device: str) -> Built:
    """Our model with the shared initial weights, its loss on a batch and the training loop's optimizer."""
    model = Transformer(cfg)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.to(device)

    def loss_fn(x: Tensor) -> Tensor:
        """Targets pre-shifted, the last position ignored: the tokens HF's own shift scores."""
        targets = torch.cat((x[:, 1:], torch.full_like(x[:, :1], -1)), dim=1)
        return model(x, targets)[1]

    # model/optim.py's AdamW: decayed matmul weights, undecayed norms and embedding (fused on CUDA).
    return model, loss_fn, make_optimizer(model, TrainConfig(lr=LR, weight_decay=WEIGHT_DECAY))


def build_hf(cfg: GPTConfig, weights: Path, device: str) -> Built:
    """transformers' Llama from our config and weights (SDPA, fp32, no KV cache), its loss, and AdamW
    over the same two parameter groups."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = {k: v for k, v in llama_config(cfg).items() if k not in ("architectures", "model_type")}
    # Training makes no use of the KV cache; leaving it on would build one every forward.
    hf_cfg = LlamaConfig(**{**fields, "use_cache": False})
    model = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa", dtype=torch.float32)
    missing, unexpected = model.load_state_dict(torch.load(weights, weights_only=True), strict=False)
    # A tied head is absent from the file and shares the embedding it was just loaded into.
    assert not unexpected and missing == (["lm_head.weight"] if cfg.tie_embeddings else []), missing
    model.to(device)
    params = dict(model.named_parameters())  # a tied head appears once, as the embedding
    decay = [p for n, p in params.items() if p.dim() >= 2 and "embed_tokens" not in n]
    rest = [p for n, p in params.items() if not (p.dim() >= 2 and "embed_tokens" not in n)]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, fused=True if device.startswith("cuda") else None)
    return model, lambda x: model(input_ids=x, labels=x).loss, opt


def timed_steps(built: Built, xs: list[Tensor], warmup: int, device: str) -> dict[str, Any]:
    """Train on each batch in turn as model/train.py does (backward, clip, step, the loss read back);
    seconds of every step after the warmup (wall and this process's CPU time), and the losses."""
    model, loss_fn, opt = built
    model.train()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    seconds, cpu_seconds, losses = [], [], []
    for i, x in enumerate(xs):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = loss_fn(x.to(device))
        loss.backward()
        losses.append(loss.item())
        clip_grads(model, GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "first_loss": losses[0], "last_loss": losses[-1]}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(which: str, cfg_json: str, weights: str, args: dict[str, Any], queue: Any) -> None:
    """Child process: build one model, train it, report timings and peak RSS."""
    torch.set_num_threads(args["threads"])
    cfg = GPTConfig.model_validate_json(cfg_json)
    build = build_ours if which == "ours" else build_hf
    xs = batches(cfg, args["batch"], args["warmup"] + args["steps"], seed=1)
    built = build(cfg, Path(weights), args["device"])
    if args["compile"]:
        built[0].compile()  # in place: the loss function calls the compiled forward; warm-up compiles
    # model/train.py tunes malloc when it trains on CPU; HF gets it too only with --same-malloc.
    tune = args["device"] == "cpu" and (which == "ours" or args["same_malloc"])
    with reuse_freed_memory(tune):
        result = timed_steps(built, xs, args["warmup"], args["device"])
    queue.put({**result, "peak_rss_mb": peak_rss_mb()})


def in_child(which: str, cfg: GPTConfig, weights: Path, args: dict[str, Any]) -> dict[str, Any]:
    """Run one model's benchmark in a fresh spawned process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_one, args=(which, cfg.model_dump_json(), str(weights), args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def save_weights(cfg: GPTConfig, out: Path) -> tuple[Path, Path]:
    """One random initialisation, saved under our names and under Llama's."""
    torch.manual_seed(0)
    model = Transformer(cfg)
    ours, hf = out / "ours.pt", out / "hf.pt"
    torch.save(model.state_dict(), ours)
    torch.save(llama_state_dict(model), hf)
    return ours, hf


def steps_per_s(result: dict[str, Any]) -> float:
    """Timed steps over their total wall time."""
    return len(result["seconds"]) / sum(result["seconds"])


def cpu_per_step(result: dict[str, Any]) -> float:
    """Median CPU seconds (all threads) of a timed step."""
    return statistics.median(result["cpu_seconds"])


def measure(cfg: GPTConfig, args: dict[str, Any], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Every round of each model, the two alternating which runs first."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = dict(zip(("ours", "hf"), save_weights(cfg, Path(tmp)), strict=True))
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "hf": []}
        for r in range(rounds):
            for which in ("ours", "hf") if r % 2 == 0 else ("hf", "ours"):
                runs[which].append(in_child(which, cfg, weights[which], args))
    return runs


def report(name: str, cfg: GPTConfig, args: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> None:
    """Print the best round's steps/s, tokens/s, peak RSS and losses of both, and the ratio ours/HF."""
    tokens = args["batch"] * cfg.block_size
    peak = peak_flops(torch.device(args["device"]))
    print(
        f"\npreset {name}: {param_count(cfg) / 1e6:.2f}M params, batch {args['batch']} x block "
        f"{cfg.block_size} = {tokens} tokens/step, {args['threads']} threads, {args['device']}, "
        f"{args['steps']} timed steps after {args['warmup']} warmup, best of {len(runs['ours'])} round(s)"
        + (", both compiled" if args["compile"] else "")
        + (", HF with our malloc tuning" if args["same_malloc"] else "")
    )
    print(
        f"{'':10}{'steps/s':>9}{'tokens/s':>10}{'median s':>10}{'CPU s':>7}{'peak RSS MB':>13}"
        f"{'loss first':>12}{'last':>8}   steps/s per round"
    )
    rate = {}
    for which, label in (("ours", "ours"), ("hf", "HF Llama")):
        res = max(runs[which], key=steps_per_s)
        rate[which] = steps_per_s(res)
        rounds = ", ".join(f"{steps_per_s(r):.3f}" for r in runs[which])
        mfu_text = "" if peak is None else f"   MFU {mfu(rate[which] * tokens, cfg, peak):.1%}"
        print(
            f"{label:10}{rate[which]:9.3f}{rate[which] * tokens:10.0f}"
            f"{statistics.median(res['seconds']):10.3f}{cpu_per_step(res):7.3f}{res['peak_rss_mb']:13.0f}"
            f"{res['first_loss']:12.4f}{res['last_loss']:8.4f}   [{rounds}]{mfu_text}"
        )
    # Round r of each side ran back to back, so their ratio shares that moment's load on the machine.
    paired = [steps_per_s(o) / steps_per_s(h) for o, h in zip(runs["ours"], runs["hf"], strict=True)]
    print(
        f"ratio ours/HF (steps/s): best round {rate['ours'] / rate['hf']:.3f}, median of the paired rounds "
        f"{statistics.median(paired):.3f} [{', '.join(f'{r:.3f}' for r in paired)}] (target >= 1.0)"
    )
    # CPU time leaves out what other jobs on a shared machine take from the wall clock.
    cpu = [cpu_per_step(h) / cpu_per_step(o) for o, h in zip(runs["ours"], runs["hf"], strict=True)]
    print(f"ratio HF/ours (CPU seconds per step): median of the paired rounds {statistics.median(cpu):.3f}")


def main() -> None:
    """Parse flags, then measure and report each preset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="repeatable; default: small, then tiny")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=None, help="sequence length; default: the preset's")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; the best is kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument(
        "--same-malloc", action="store_true", help="give HF the malloc tuning model/train.py applies on CPU"
    )
    args = parser.parse_args()
    names = ("steps", "warmup", "batch", "threads", "device", "compile", "same_malloc")
    settings = {k: getattr(args, k) for k in names}
    for name in args.preset or ["small", "tiny"]:
        overrides = {} if args.block is None else {"block_size": args.block}
        cfg = GPTConfig.preset(name, VOCAB, **overrides)
        report(name, cfg, settings, measure(cfg, settings, args.rounds))


if __name__ == "__main__":
    main()
