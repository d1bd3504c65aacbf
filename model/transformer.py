"""A decoder-only transformer with Llama's architecture, in plain PyTorch.

Read top to bottom: RMSNorm, rotary position embeddings, the KV cache used for generation,
grouped-query attention, the SwiGLU MLP, a pre-norm block, and the model that stacks them. The layout and
RoPE convention (rotate_half) match Hugging Face's LlamaForCausalLM, so `model.export` can write a
checkpoint that loads there unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.config import GPTConfig

# scaled_dot_product_attention gained `enable_gqa` in torch 2.5; older builds get repeated k/v heads.
_SDPA_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)
INIT_STD = 0.02


class RMSNorm(nn.Module):
    """Root-mean-square norm: x / rms(x) * weight, with no mean subtraction and no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        """A learned per-channel gain, starting at one."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the last dimension."""
        # Squares of bf16 activations lose too much precision, so the statistic is taken in float32.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for rotary position embeddings over the whole context."""

    def __init__(self, head_dim: int, block_size: int, base: float) -> None:
        """Tables for positions 0..block_size-1, one frequency per pair of channels."""
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
        # rotate_half pairs channel i with channel i + head_dim/2, so each frequency appears twice.
        angles = torch.cat((freqs, freqs), dim=-1)
        # Not persistent: derived from the config, so checkpoints need not carry them.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, seq_len: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        """cos and sin for positions offset..offset+seq_len-1, shaped (seq_len, head_dim)."""
        # The offset lets the KV cache rotate new tokens at their absolute positions.
        if offset + seq_len > self.cos.size(0):
            raise ValueError(f"positions up to {offset + seq_len} exceed block_size {self.cos.size(0)}")
        return self.cos[offset : offset + seq_len], self.sin[offset : offset + seq_len]


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (batch, heads, seq, head_dim) queries or keys by their positions' angles."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to `max_len` positions."""

    def __init__(
        self,
        cfg: GPTConfig,
        batch: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Empty buffers of shape (n_layer, batch, n_kv_head, max_len, head_dim); max_len <= block_size."""
        self.max_len = cfg.block_size if max_len is None else max_len
        if not 0 < self.max_len <= cfg.block_size:
            raise ValueError(f"max_len must be in [1, block_size {cfg.block_size}], got {self.max_len}")
        shape = (cfg.n_layer, batch, cfg.n_kv_head, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Tokens cached so far, which is also the absolute position of the next token.
        self.length = 0

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `layer`'s new keys/values after the cached ones; return all of them (views, no copy)."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, seq: int) -> None:
        """Commit `seq` new tokens once every layer has appended them."""
        self.length += seq


def causal_mask(seq: int, offset: int, device: torch.device) -> Tensor | None:
    """Boolean (seq, offset + seq) mask letting query i see keys 0..offset+i; None when none is needed."""
    # A single new token may see the whole cache; at offset 0, SDPA's is_causal does the job instead.
    if seq == 1 or offset == 0:
        return None
    # is_causal aligns its triangle to the top-left corner, which is wrong once the keys outnumber the
    # queries, so chunks after a prefix get an explicit mask shifted right by the cached length.
    return torch.ones(seq, offset + seq, dtype=torch.bool, device=device).tril(diagonal=offset)


def attend(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, is_causal: bool, mask: Tensor | None) -> Tensor:
    """SDPA over n_head query heads and n_kv_head key/value heads (mask: True means attend)."""
    n_head, n_kv_head = q.size(1), k.size(1)
    if n_kv_head == n_head:
        return F.scaled_dot_product_attention(q, k, v, mask, dropout_p=dropout_p, is_causal=is_causal)
    if _SDPA_GQA:
        return F.scaled_dot_product_attention(
            q, k, v, mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=True
        )
    # Query head h reads kv head h // group, the grouping enable_gqa and Llama use.
    group = n_head // n_kv_head
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, mask, dropout_p=dropout_p, is_causal=is_causal)


class Attention(nn.Module):
    """Causal grouped-query self-attention: n_kv_head key/value heads shared by n_head query heads."""

    def __init__(self, cfg: GPTConfig) -> None:
        """Separate q/k/v projections (their weights map one-to-one onto Llama's) and an output one."""
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.dropout = cfg.dropout
        kv_width = cfg.n_kv_head * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, kv_width, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, kv_width, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _heads(self, x: Tensor, n_heads: int) -> Tensor:
        """(batch, seq, n_heads * head_dim) -> (batch, n_heads, seq, head_dim)."""
        batch, seq, _ = x.shape
        return x.view(batch, seq, n_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> Tensor:
        """Attend each position to itself and every earlier one, cached ones included; cos/sin: positions."""
        batch, seq, d_model = x.shape
        q = apply_rope(self._heads(self.q_proj(x), self.n_head), cos, sin)
        k = apply_rope(self._heads(self.k_proj(x), self.n_kv_head), cos, sin)
        v = self._heads(self.v_proj(x), self.n_kv_head)
        dropout_p = self.dropout if self.training else 0.0
        if cache is None:
            y = attend(q, k, v, dropout_p, is_causal=True, mask=None)
        else:
            offset = cache.length
            k, v = cache.append(layer, k, v)
            mask = causal_mask(seq, offset, x.device)
            y = attend(q, k, v, dropout_p, is_causal=offset == 0 and seq > 1, mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, d_model))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        """Gate and up project to the hidden width, down projects back."""
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.down_proj = nn.Linear(cfg.hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Gated hidden activations projected back to the residual width."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        """One attention and one MLP sub-layer, each behind its own RMSNorm."""
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> Tensor:
        """Add the attention and MLP branches to the residual stream."""
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), cos, sin, cache, layer))
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    """Token embedding, a stack of blocks, a final RMSNorm and the LM head."""

    def __init__(self, cfg: GPTConfig, checkpointing: bool = False) -> None:
        """Build the layers from `cfg` and initialise them; `checkpointing` trades compute for memory."""
        super().__init__()
        self.cfg = cfg
        self.checkpointing = checkpointing
        self.tok_emb = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.block_size, cfg.rope_base)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        self._scale_residual_projections()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """N(0, 0.02) for every matmul and embedding weight (RMSNorm weights keep their ones)."""
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def _scale_residual_projections(self) -> None:
        """Shrink the projections that write into the residual stream (GPT-2's 1/sqrt(2·n_layer))."""
        # Each block adds two branches, so without this the stream's variance grows with depth.
        std = INIT_STD / math.sqrt(2 * self.cfg.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.o_proj.weight, mean=0.0, std=std)
            nn.init.normal_(block.mlp.down_proj.weight, mean=0.0, std=std)

    def _run_block(self, block: Block, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """One block, recomputed in the backward pass instead of stored when checkpointing."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, cos, sin, use_reentrant=False)
        return block(x, cos, sin)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences, on this model's device and in its dtype."""
        weight = self.tok_emb.weight
        return KVCache(self.cfg, batch, max_len, device=weight.device, dtype=weight.dtype)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (batch, seq, padded_vocab) for token ids `idx`, and the mean loss when `targets` given.

        Targets equal to -1 are ignored, so padding or the last position can be left out of the loss.
        With a `cache`, `idx` continues the cached tokens: it is placed at positions cache.length onward,
        attends to the cached keys and values as well as its own, and is appended to the cache.
        """
        seq = idx.size(1)
        offset = 0 if cache is None else cache.length
        cos, sin = self.rope(seq, offset)
        x = self.emb_dropout(self.tok_emb(idx))
        for layer, block in enumerate(self.blocks):
            x = self._run_block(block, x, cos, sin) if cache is None else block(x, cos, sin, cache, layer)
        if cache is not None:
            cache.advance(seq)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits, None
        # The loss is taken in float32: a bf16 log-softmax over tens of thousands of ids is too coarse.
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    def configure_optimizer_groups(self, weight_decay: float = 0.1) -> list[dict[str, Any]]:
        """Two AdamW groups: 2-D matmul weights decayed; norms, biases and the embedding not."""
        decay, no_decay = [], []
        # named_parameters yields a tied LM head once, as tok_emb.weight, so it is not decayed either.
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            is_matmul = param.dim() >= 2 and not name.startswith("tok_emb.")
            (decay if is_matmul else no_decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
