"""The transformer's hyperparameters, its named presets, and parameter and FLOP counts.

The architecture is Llama's: RoPE, pre-norm RMSNorm, grouped-query attention and a SwiGLU MLP, all
matmuls without bias. A config is frozen and validated once, so a model built from it cannot drift.
"""

from __future__ import annotations

import math
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Embedding rows and FFN widths are rounded to this so matmul shapes stay kernel-friendly.
MULTIPLE = 64


def round_up(n: int, multiple: int = MULTIPLE) -> int:
    """`n` rounded up to a multiple of `multiple`."""
    return math.ceil(n / multiple) * multiple


def llama_ffn_hidden(d_model: int) -> int:
    """Llama's SwiGLU width: 8/3 · d_model (same FLOPs as a 4 · d_model GELU MLP), rounded up to 64."""
    return round_up(math.ceil(8 * d_model / 3))


class GPTConfig(BaseModel):
    """Hyperparameters of a decoder-only Llama-style transformer."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    vocab_size: int = Field(gt=0)
    """Tokenizer vocabulary size; the embedding and LM head are padded to `padded_vocab` rows."""
    block_size: int = Field(gt=0)
    """Context length in tokens: the longest sequence the model sees and RoPE is precomputed for."""
    n_layer: int = Field(gt=0)
    """Number of transformer blocks."""
    n_head: int = Field(gt=0)
    """Number of query heads."""
    n_kv_head: int = Field(gt=0)
    """Number of key/value heads (grouped-query attention); must divide `n_head`."""
    d_model: int = Field(gt=0)
    """Residual stream width; must be divisible by `n_head`."""
    ffn_hidden: int | None = Field(default=None, gt=0)
    """SwiGLU hidden width; None picks Llama's default, 8/3 · d_model rounded up to a multiple of 64."""
    rope_base: float = Field(default=10000.0, gt=0)
    """RoPE base wavelength (Hugging Face's `rope_theta`)."""
    norm_eps: float = Field(default=1e-5, gt=0)
    """Epsilon added to the mean square inside RMSNorm."""
    tie_embeddings: bool = True
    """Share one matrix between the token embedding and the LM head."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on attention probabilities and on each residual branch, during training only."""

    @model_validator(mode="before")
    @classmethod
    def _default_ffn_hidden(cls, data: Any) -> Any:
        """Fill in Llama's FFN width so dumps and checkpoints record the concrete number."""
        if isinstance(data, dict) and data.get("ffn_hidden") is None:
            d_model = data.get("d_model")
            if isinstance(d_model, int) and not isinstance(d_model, bool) and d_model > 0:
                return {**data, "ffn_hidden": llama_ffn_hidden(d_model)}
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> Self:
        """Reject head layouts the attention cannot split evenly."""
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = d_model // n_head ({self.d_model} // {self.n_head} = {self.head_dim}) "
                "must be even for RoPE"
            )
        return self

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head

    @property
    def hidden(self) -> int:
        """The SwiGLU hidden width actually used."""
        return self.ffn_hidden if self.ffn_hidden is not None else llama_ffn_hidden(self.d_model)

    @property
    def padded_vocab(self) -> int:
        """Rows of the embedding and LM head: vocab_size rounded up to a multiple of 64."""
        return round_up(self.vocab_size)

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides: Any) -> GPTConfig:
        """A named preset for this vocabulary, with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], "vocab_size": vocab_size, **overrides})


# Parameter counts in the comments are for an 8192-token vocabulary (base: GPT-2's padded 50304).
PRESETS: dict[str, dict[str, Any]] = {
    # ~1.4M: unit tests and smoke runs.
    "tiny": {"block_size": 128, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 128},
    # ~12.6M (9.4M non-embedding): the laptop-CPU model on Shakespeare.
    "small": {"block_size": 256, "n_layer": 6, "n_head": 6, "n_kv_head": 2, "d_model": 384},
    # ~27.8M: the guide's walkthrough model.
    "guide": {"block_size": 512, "n_layer": 8, "n_head": 8, "n_kv_head": 4, "d_model": 512},
    # ~124M: GPT-2 small's shape (multi-head attention, context 1024).
    "base": {"block_size": 1024, "n_layer": 12, "n_head": 12, "n_kv_head": 12, "d_model": 768},
}


def _block_params(cfg: GPTConfig) -> int:
    """Parameters of one transformer block: attention, SwiGLU MLP and two RMSNorm weights."""
    kv_width = cfg.n_kv_head * cfg.head_dim
    attention = 2 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * kv_width
    return attention + 3 * cfg.d_model * cfg.hidden + 2 * cfg.d_model


def param_count(cfg: GPTConfig, exclude_embedding: bool = False) -> int:
    """Parameters of the model; `exclude_embedding` drops the embedding and LM head (Kaplan's N)."""
    non_embedding = cfg.n_layer * _block_params(cfg) + cfg.d_model
    if exclude_embedding:
        return non_embedding
    tables = 1 if cfg.tie_embeddings else 2
    return non_embedding + tables * cfg.padded_vocab * cfg.d_model


def flops_per_token(cfg: GPTConfig) -> int:
    """Training FLOPs per token: 6·N + 12·n_layer·d_model·block_size (Kaplan et al.; PaLM appendix B).

    N counts every weight a token is multiplied by: the blocks, the final norm and the LM head, whether
    or not it shares the embedding table (the embedding lookup itself is free). Each such weight costs
    2 FLOPs per token forward and 4 backward, hence 6·N. The second term is the attention scores and
    their weighted sum (QKᵀ and AV over a full context, forward and backward), which no weight counts.
    """
    matmul_params = param_count(cfg, exclude_embedding=True) + cfg.padded_vocab * cfg.d_model
    return 6 * matmul_params + 12 * cfg.n_layer * cfg.d_model * cfg.block_size
