"""Export a trained Transformer as a Hugging Face Llama checkpoint directory.

Our modules mirror Llama's one to one and our RoPE uses Hugging Face's rotate_half convention, so the
export only renames weights: no q/k permutation is needed. The directory is built beside `out_dir` and
swapped in at the end, so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.config import GPTConfig
from model.transformer import Transformer

# Our per-block module names -> Llama's, under model.layers.{i}.
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.o_proj": "self_attn.o_proj",
    "mlp_norm": "post_attention_layernorm",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}


def llama_config(
    cfg: GPTConfig,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> dict[str, Any]:
    """The config.json of a LlamaForCausalLM with our architecture."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.padded_vocab,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.block_size,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        # transformers < 5 reads rope_theta; 5.x reads rope_parameters (and still accepts rope_theta).
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        # Llama has no residual dropout to mirror ours; the export is meant for inference anyway.
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }


def llama_state_dict(model: Transformer) -> dict[str, Tensor]:
    """Our weights under Llama's names, as contiguous float32 CPU tensors (no LM head when tied)."""
    weights = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    for i, block in enumerate(model.blocks):
        for ours, theirs in LAYER_NAMES.items():
            weights[f"model.layers.{i}.{theirs}.weight"] = block.get_submodule(ours).weight
    # A tied head is the embedding; Llama re-ties it from tie_word_embeddings, and safetensors refuses
    # to store one tensor twice.
    if not model.cfg.tie_embeddings:
        weights["lm_head.weight"] = model.lm_head.weight
    return {name: w.detach().to("cpu", torch.float32).contiguous() for name, w in weights.items()}


def _write_weights(weights: dict[str, Tensor], directory: Path) -> Path:
    """model.safetensors when the safetensors package is there, else pytorch_model.bin."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        path = directory / "pytorch_model.bin"
        torch.save(weights, path)
        return path
    path = directory / "model.safetensors"
    # transformers checks this metadata key to know the tensors are PyTorch's layout.
    save_file(weights, str(path), metadata={"format": "pt"})
    return path


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished tmp directory, keeping the old one until the rename succeeds."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex}")
    out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except OSError:
        old.rename(out_dir)
        raise
    shutil.rmtree(old)


def export_llama(
    model: Transformer,
    cfg: GPTConfig,
    out_dir: Path,
    tokenizer_json: Path | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Path:
    """Write a directory `LlamaForCausalLM.from_pretrained` loads; returns out_dir."""
    if model.cfg != cfg:
        raise ValueError("cfg differs from the config the model was built with")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    # mkdtemp makes the directory private (0700); a checkpoint is meant to be readable like any output.
    tmp.chmod(0o755)
    try:
        config = llama_config(cfg, bos_token_id, eos_token_id, pad_token_id)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _write_weights(llama_state_dict(model), tmp)
        if tokenizer_json is not None:
            shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
