"""Generation: the KV cache against full forwards, sampling filters, stopping rules, and HF Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import GPTConfig
from model.export import export_llama
from model.generate import filter_logits, generate, sample_text
from model.transformer import KVCache, Transformer

VOCAB = 1000  # not a multiple of 64, so the padded ids 1000..1023 exist and must never be drawn


def tiny(**overrides: object) -> GPTConfig:
    """A model small enough for a CPU test in well under a second; untied unless overridden."""
    # A random tied model scores each token's own embedding highest, so its greedy output just repeats
    # the last prompt token and would hide ordering mistakes.
    fields = {"vocab_size": VOCAB, "block_size": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64}
    return GPTConfig(**{**fields, "tie_embeddings": False, **overrides})


def build(cfg: GPTConfig, seed: int = 0) -> Transformer:
    """A random model whose attention is sharp, so position or masking mistakes change the output."""
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    # At init, scores are near zero and attention almost uniform, so positions barely matter.
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_proj.weight.mul_(4.0)
            block.attn.k_proj.weight.mul_(4.0)
    return model


def prompts(batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    """Random prompt ids below the real vocabulary."""
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


KV_HEADS = pytest.mark.parametrize("n_kv_head", [2, 4], ids=["gqa", "mha"])


@KV_HEADS
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_cached_logits_equal_full_forward(n_kv_head: int, tied: bool) -> None:
    """Prefill, a multi-token chunk after it, then one token at a time: the full forward's logits."""
    model = build(tiny(n_kv_head=n_kv_head, tie_embeddings=tied))
    idx = prompts(2, 20)
    cache = model.new_cache(2)
    with torch.no_grad():
        full, _ = model(idx)
        # Prefill at offset 0 (is_causal), a chunk at offset 5 (explicit mask), then single tokens.
        parts = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:9], cache=cache)[0]]
        parts += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(9, 20)]
    assert cache.length == 20
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_cache_refuses_to_overflow() -> None:
    """Writing past the preallocated length is an error, not a silent wrap or a resize."""
    model = build(tiny())
    cache = model.new_cache(1, max_len=6)
    with torch.no_grad():
        model(prompts(1, 4), cache=cache)
        with pytest.raises(ValueError, match="6 positions"):
            model(prompts(1, 3), cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        KVCache(tiny(), 1, max_len=65)


@KV_HEADS
@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (3, 7), (2, 30)])
@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 0.8, "top_k": 40, "top_p": 0.9}],
    ids=["greedy", "sampled", "filtered"],
)
def test_cached_generation_equals_uncached(
    n_kv_head: int, batch: int, seq: int, sampling: dict[str, float]
) -> None:
    """With the same seeded generator, the cache changes the speed of generation, not its tokens."""
    model = build(tiny(n_kv_head=n_kv_head))
    idx = prompts(batch, seq)
    outs = [
        generate(model, idx, 12, use_cache=use_cache, generator=torch.Generator().manual_seed(7), **sampling)
        for use_cache in (True, False)
    ]
    assert outs[0].shape == (batch, seq + 12)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][:, :seq], idx)


def test_top_k_one_and_a_tiny_top_p_are_greedy() -> None:
    """Keeping only the most probable id, either way, leaves nothing to sample."""
    model = build(tiny())
    idx = prompts(3, 5)
    greedy = generate(model, idx, 10, temperature=0.0)
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(generate(model, idx, 10, temperature=1.5, top_k=1, generator=gen), greedy)
    assert torch.equal(generate(model, idx, 10, temperature=1.5, top_p=1e-6, generator=gen), greedy)


def test_filters_keep_the_top_k_and_the_nucleus() -> None:
    """top-k keeps k ids; top-p keeps the fewest ids whose probability reaches p; padding is cut off."""
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3, 0.0]])
    logits = torch.cat([probs.clamp_min(1e-9).log(), torch.full((1, 3), 50.0)], dim=1)
    kept = filter_logits(logits, 5, 1.0, top_k=2, top_p=None).isfinite()
    assert kept.tolist() == [[False, True, False, True, False]]
    kept = filter_logits(logits, 5, 1.0, top_k=None, top_p=0.7).isfinite()
    assert kept.tolist() == [[False, True, False, True, False]]
    kept = filter_logits(logits, 5, 1.0, top_k=None, top_p=0.5).isfinite()
    assert kept.tolist() == [[False, True, False, False, False]]


def test_padded_ids_are_never_sampled() -> None:
    """Even when the padding rows of the LM head win every argmax, only real ids come out."""
    cfg = tiny(tie_embeddings=False)
    model = build(cfg)
    with torch.no_grad():
        model.lm_head.weight[VOCAB:] = torch.randn(cfg.padded_vocab - VOCAB, cfg.d_model) * 100
        logits, _ = model(prompts(4, 8))
    # The hack bites: unmasked, a padded id would win at most positions.
    assert (logits.argmax(-1) >= VOCAB).float().mean() > 0.5
    idx = prompts(4, 8)
    for temperature in (0.0, 1.0, 5.0):
        out = generate(model, idx, 20, temperature=temperature, generator=torch.Generator().manual_seed(0))
        assert out.max().item() < VOCAB


def test_eos_stops_generation_and_pads_finished_rows() -> None:
    """A row that emits eos keeps emitting it; generation ends once every row has."""
    model = build(tiny())
    idx = prompts(2, 4)

    def run(rows: slice, eos: int | None) -> torch.Tensor:
        """Seeded sampling, so rows vary (unlike greedy on a random model) yet runs repeat exactly."""
        gen = torch.Generator().manual_seed(5)
        return generate(model, idx[rows], 12, temperature=1.0, eos_id=eos, generator=gen)

    # The generator's draws depend on the batch size, so each run is compared with a free run its size.
    alone = run(slice(0, 1), None)
    assert torch.equal(run(slice(0, 1), alone[0, 4 + 2].item()), alone[:, : 4 + 3])
    free = run(slice(None), None)
    eos = free[0, 4 + 2].item()  # the third new token of row 0
    assert eos not in free[1].tolist() and len(set(free[0, 4:].tolist())) > 6
    both = run(slice(None), eos)
    # Row 1 never draws eos, so it runs to the end unchanged while row 0 repeats eos after its own.
    assert torch.equal(both[1], free[1])
    assert torch.equal(both[0, : 4 + 3], free[0, : 4 + 3]) and torch.all(both[0, 4 + 2 :] == eos)


@pytest.mark.parametrize("use_cache", [True, False])
def test_length_never_exceeds_block_size(use_cache: bool) -> None:
    """Generation stops at block_size tokens in total, in both modes, at the same tokens."""
    model = build(tiny(block_size=16))
    idx = prompts(2, 10)
    out = generate(model, idx, 50, temperature=0.0, use_cache=use_cache)
    assert out.shape == (2, 16)
    assert torch.equal(out, generate(model, idx, 50, temperature=0.0, use_cache=not use_cache))
    assert torch.equal(generate(model, prompts(1, 16), 5, use_cache=use_cache), prompts(1, 16))
    with pytest.raises(ValueError, match="exceeds block_size"):
        generate(model, prompts(1, 17), 5, use_cache=use_cache)


def test_mode_is_restored_and_bad_arguments_refused() -> None:
    """A model in training stays in training; nonsense settings fail loudly."""
    model = build(tiny()).train()
    generate(model, prompts(1, 3), 2)
    assert model.training
    for kwargs in ({"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            generate(model, prompts(1, 3), 2, **kwargs)
    with pytest.raises(ValueError, match="seq >= 1"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)


@KV_HEADS
def test_greedy_matches_hf_llama_generate(tmp_path: Path, n_kv_head: int) -> None:
    """The exported checkpoint, greedy-decoded by transformers' own generate, gives our tokens."""
    transformers = pytest.importorskip("transformers")
    cfg = tiny(n_kv_head=n_kv_head)
    model = build(cfg)
    out_dir = export_llama(model, cfg, tmp_path / "hf")
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    kwargs = {dtype_arg: torch.float32, "attn_implementation": "sdpa"}
    hf = transformers.LlamaForCausalLM.from_pretrained(out_dir, **kwargs).eval()
    idx = prompts(2, 6)
    ours = generate(model, idx, 8, temperature=0.0)
    # HF knows nothing of our padding, so the padded ids are suppressed there the way we drop them.
    theirs = hf.generate(
        idx,
        attention_mask=torch.ones_like(idx),
        max_new_tokens=8,
        do_sample=False,
        suppress_tokens=list(range(VOCAB, cfg.padded_vocab)),
        pad_token_id=0,
    )
    assert len(set(ours[:, 6:].flatten().tolist())) > 8  # a varied continuation, not one token repeated
    assert torch.equal(ours, theirs)


def test_sample_text_round_trips_through_the_tokenizer(tmp_path: Path) -> None:
    """The prompt comes back as text, followed by the decoded continuation."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    model = build(tiny(vocab_size=tok.get_vocab_size()))
    text = sample_text(model, path, "the cat", max_new_tokens=10, seed=0)
    assert text.startswith("the cat") and len(text) > len("the cat")
    assert sample_text(model, path, "the cat", max_new_tokens=10, seed=0) == text
    assert isinstance(sample_text(model, path, "", max_new_tokens=3, temperature=0.0), str)
