"""Autoregressive sampling from a Transformer: greedy, temperature, top-k and top-p, with a KV cache.

Generation stops at block_size tokens in total, with or without the cache. nanoGPT instead crops the
context to the last block_size tokens and goes on; a cache cannot do that (its keys were rotated at
positions that would shift), so both modes stop at the same place and give the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from model.transformer import KVCache, Transformer

EOS = "<|endoftext|>"


def filter_logits(
    logits: Tensor, vocab_size: int, temperature: float, top_k: int | None, top_p: float | None
) -> Tensor:
    """Last-position logits (batch, padded_vocab) -> tempered, filtered logits (batch, vocab_size)."""
    # Dropping the padding rows is -inf masking without the scatter: those ids can never be drawn.
    logits = logits[:, :vocab_size].float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, vocab_size), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        logits = logits.masked_fill(_outside_nucleus(logits, top_p), float("-inf"))
    return logits


def _outside_nucleus(logits: Tensor, top_p: float) -> Tensor:
    """True for ids outside the smallest most-probable set whose probability reaches top_p."""
    probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    # An id is dropped when the ids ranked above it already reach top_p, so the top one always stays.
    drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
    return torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)


def next_tokens(
    logits: Tensor,
    vocab_size: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """One id per row from last-position logits: argmax at temperature 0, else a filtered sample."""
    if temperature == 0:
        return logits[:, :vocab_size].argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, vocab_size, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_args(idx: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse arguments that would sample nonsense rather than fail later."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be (batch, seq) with seq >= 1, got shape {tuple(idx.shape)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def generate(
    model: Transformer,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Extend (batch, seq) prompts by up to max_new_tokens ids; the result never exceeds block_size.

    temperature 0 is greedy (top_k and top_p then change nothing). Once a row emits eos_id, its later
    positions are filled with eos_id, and generation stops when every row has. The model's train/eval
    mode is restored afterwards.
    """
    _check_args(idx, temperature, top_k, top_p)
    cfg = model.cfg
    if idx.size(1) > cfg.block_size:
        raise ValueError(f"prompt of {idx.size(1)} tokens exceeds block_size {cfg.block_size}")
    pick = partial(
        next_tokens,
        vocab_size=cfg.vocab_size,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
    )
    steps = min(max_new_tokens, cfg.block_size - idx.size(1))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cache = model.new_cache(idx.size(0), idx.size(1) + steps) if use_cache else None
            return _decode_loop(model, idx.to(model.tok_emb.weight.device), steps, cache, pick, eos_id)
    finally:
        model.train(was_training)


def _decode_loop(
    model: Transformer,
    idx: Tensor,
    steps: int,
    cache: KVCache | None,
    pick: Callable[[Tensor], Tensor],
    eos_id: int | None,
) -> Tensor:
    """Run up to `steps` forward passes, each appending one picked id per row."""
    tokens, fresh = idx, idx
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(steps):
        # Without a cache the whole sequence is recomputed; with one, only the tokens not yet cached.
        logits, _ = model(tokens) if cache is None else model(fresh, cache=cache)
        ids = pick(logits[:, -1])
        if eos_id is not None:
            ids = ids.masked_fill(done, eos_id)
            done |= ids == eos_id
        fresh = ids[:, None]
        tokens = torch.cat((tokens, fresh), dim=1)
        if done.all():
            break
    return tokens


def sample_text(
    model: Transformer,
    tokenizer_path: Path | str,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = 0.95,
    seed: int | None = None,
    eos_token: str | None = EOS,
) -> str:
    """The prompt and its continuation as text, cut before the first end-of-text token."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    # As when the corpus was tokenized: a literal "<|endoftext|>" in the prompt stays plain text.
    tok.encode_special_tokens = True
    prompt_ids = tok.encode(prompt).ids
    eos_id = tok.token_to_id(eos_token) if eos_token is not None else None
    # Every training document follows an end-of-text token, so an empty prompt starts from one.
    context = prompt_ids or ([] if eos_id is None else [eos_id])
    if not context:
        raise ValueError("the prompt is empty and the tokenizer has no end-of-text token to start from")
    generator = None if seed is None else torch.Generator(model.tok_emb.weight.device).manual_seed(seed)
    idx = torch.tensor([context], dtype=torch.long)
    out = generate(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator=generator)
    new_ids = out[0, len(context) :].tolist()
    if eos_id is not None and eos_id in new_ids:
        new_ids = new_ids[: new_ids.index(eos_id)]
    return tok.decode(prompt_ids + new_ids, skip_special_tokens=False)
