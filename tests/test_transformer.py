"""The transformer: Hugging Face Llama as the oracle, causality, init, checkpointing, presets, config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from model.config import PRESETS, GPTConfig, flops_per_token, param_count
from model.export import export_llama
from model.transformer import Transformer

VOCAB = 1000  # not a multiple of 64, so the padding rows are exercised


def tiny(**overrides: object) -> GPTConfig:
    """A model small enough for a CPU test in well under a second."""
    fields = {"vocab_size": VOCAB, "block_size": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64}
    return GPTConfig(**{**fields, **overrides})


def build(cfg: GPTConfig, seed: int = 0, checkpointing: bool = False) -> Transformer:
    """A freshly initialised model, reproducible from `seed`."""
    torch.manual_seed(seed)
    return Transformer(cfg, checkpointing=checkpointing)


def load_hf(path: Path) -> torch.nn.Module:
    """The exported directory loaded by transformers' own Llama, fp32 and SDPA attention."""
    transformers = pytest.importorskip("transformers")
    # transformers 5 renamed torch_dtype to dtype and warns on the old name.
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    kwargs = {dtype_arg: torch.float32, "attn_implementation": "sdpa"}
    return transformers.LlamaForCausalLM.from_pretrained(path, **kwargs).eval()


def sharpen_attention(model: Transformer, scale: float = 4.0) -> Transformer:
    """Scale q/k weights so attention is far from uniform and RoPE or head-order mistakes show."""
    # At init, scores are near zero and attention almost uniform, so positions barely matter.
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_proj.weight.mul_(scale)
            block.attn.k_proj.weight.mul_(scale)
    return model


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("n_kv_head", [2, 4], ids=["gqa", "mha"])
def test_logits_and_loss_match_hf_llama(tmp_path: Path, n_kv_head: int, tied: bool) -> None:
    """The exported checkpoint reproduces our logits and loss in Hugging Face's LlamaForCausalLM."""
    cfg = tiny(n_kv_head=n_kv_head, tie_embeddings=tied, rope_base=5000.0)
    model = sharpen_attention(build(cfg).eval())
    out = export_llama(model, cfg, tmp_path / "hf", eos_token_id=0)
    hf = load_hf(out)
    assert (out / "model.safetensors").is_file()
    idx = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    # HF shifts labels itself; ours are pre-shifted with the last position ignored.
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -1)], dim=1)
    with torch.no_grad():
        logits, loss = model(idx, targets)
        ref = hf(input_ids=idx, labels=idx)
    assert ref.logits.shape == logits.shape == (2, 32, cfg.padded_vocab)
    assert (logits - ref.logits).abs().max().item() <= 1e-4
    assert loss is not None
    assert abs(loss.item() - ref.loss.item()) <= 1e-5


def test_export_writes_config_and_tokenizer_and_overwrites(tmp_path: Path) -> None:
    """config.json carries the architecture; a second export replaces the first without leftovers."""
    cfg = tiny(tie_embeddings=False)
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text('{"model": {}}', encoding="utf-8")
    out = tmp_path / "hf"
    export_llama(build(cfg), cfg, out, tokenizer_json=tokenizer)
    export_llama(build(cfg, seed=1), cfg, out, tokenizer_json=tokenizer, eos_token_id=3, pad_token_id=0)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["vocab_size"] == cfg.padded_vocab and config["num_key_value_heads"] == 2
    assert config["intermediate_size"] == cfg.hidden and config["tie_word_embeddings"] is False
    assert config["eos_token_id"] == 3 and config["pad_token_id"] == 0
    assert (out / "tokenizer.json").read_text(encoding="utf-8") == '{"model": {}}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "tok.json"]


def test_export_rejects_a_mismatched_config(tmp_path: Path) -> None:
    """Exporting with a config other than the model's would write a checkpoint that cannot load."""
    with pytest.raises(ValueError, match="cfg differs"):
        export_llama(build(tiny()), tiny(n_layer=3), tmp_path / "hf")


def test_shapes_and_causality() -> None:
    """Logits have the padded-vocab shape and a later token never changes an earlier position."""
    cfg = tiny()
    model = build(cfg).eval()
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % VOCAB
    with torch.no_grad():
        logits, loss = model(idx)
        logits2, _ = model(changed)
    assert logits.shape == (2, 20, cfg.padded_vocab) and loss is None
    assert torch.equal(logits[:, :12], logits2[:, :12])
    assert not torch.allclose(logits[:, 12:], logits2[:, 12:])


def test_sequence_longer_than_the_context_is_refused() -> None:
    """RoPE tables stop at block_size, so a longer input is an error rather than silent garbage."""
    cfg = tiny(block_size=8)
    with pytest.raises(ValueError, match="block_size 8"):
        build(cfg)(torch.zeros(1, 9, dtype=torch.long))


def test_padded_vocab() -> None:
    """The vocabulary is padded to a multiple of 64 that covers every real id."""
    for vocab in (1, 64, 65, 1000, 50257):
        cfg = tiny(vocab_size=vocab)
        assert cfg.padded_vocab % 64 == 0 and vocab <= cfg.padded_vocab < vocab + 64
    logits, _ = build(tiny()).eval()(torch.zeros(1, 4, dtype=torch.long))
    assert logits.size(-1) % 64 == 0 and logits.size(-1) >= VOCAB


def test_init_statistics() -> None:
    """Residual projections start at std 0.02/sqrt(2·n_layer), other weights at 0.02, norms at one."""
    cfg = tiny(n_layer=4, d_model=128)
    model = build(cfg)
    residual = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, param in model.named_parameters():
        if param.dim() == 1:
            assert torch.all(param == 1), name
            continue
        expected = residual if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        assert abs(param.std().item() / expected - 1) < 0.1, name
        assert abs(param.mean().item()) < 0.1 * expected, name


def test_checkpointing_gives_the_same_loss_and_gradients() -> None:
    """Recomputing blocks in the backward pass changes memory use, not the numbers."""
    cfg = tiny()
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    targets = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(4))
    results = []
    for checkpointing in (False, True):
        model = build(cfg, checkpointing=checkpointing).train()
        _, loss = model(idx, targets)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-6), name


def test_parameter_groups_split_matmuls_from_the_rest() -> None:
    """Matmul weights are decayed; norms and the (tied) embedding are not; every parameter once."""
    for tied in (True, False):
        model = build(tiny(tie_embeddings=tied))
        decay, no_decay = model.configure_optimizer_groups(weight_decay=0.1)
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        assert all(p.dim() == 2 for p in decay["params"])
        assert any(p is model.tok_emb.weight for p in no_decay["params"])
        assert any(p is model.lm_head.weight for p in decay["params"]) is not tied
        grouped = [id(p) for group in (decay, no_decay) for p in group["params"]]
        assert sorted(grouped) == sorted(id(p) for p in model.parameters())


@pytest.mark.parametrize("tied", [True, False])
def test_param_count_matches_the_built_model(tied: bool) -> None:
    """The analytic count equals the parameters a built model actually holds."""
    cfg = tiny(tie_embeddings=tied, ffn_hidden=96)
    model = build(cfg)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())
    head = 0 if tied else model.lm_head.weight.numel()
    embedding = model.tok_emb.weight.numel() + head
    assert param_count(cfg, exclude_embedding=True) == param_count(cfg) - embedding


@pytest.mark.parametrize(
    ("name", "vocab", "low", "high"),
    [
        ("tiny", 8192, 0.5e6, 2e6),
        ("small", 8192, 8e6, 15e6),
        ("guide", 8192, 15e6, 40e6),
        ("base", 50304, 100e6, 170e6),
    ],
)
def test_presets_are_in_their_intended_range(name: str, vocab: int, low: float, high: float) -> None:
    """Each preset lands at the size its name promises; FLOPs per token follow 6N plus attention."""
    cfg = GPTConfig.preset(name, vocab)
    assert low <= param_count(cfg) <= high
    attention = 12 * cfg.n_layer * cfg.d_model * cfg.block_size
    # With a tied head, every stored parameter is a matmul weight: N is simply the model size.
    assert flops_per_token(cfg) == 6 * param_count(cfg) + attention
    untied = GPTConfig.preset(name, vocab, tie_embeddings=False)
    # Untied, the input table is a lookup and costs nothing; the head is still counted.
    embedding = cfg.padded_vocab * cfg.d_model
    assert flops_per_token(untied) == 6 * (param_count(untied) - embedding) + attention
    assert flops_per_token(cfg) > 6 * param_count(cfg, exclude_embedding=True) > 0


def test_preset_overrides_and_unknown_name() -> None:
    """Overrides win over the preset; an unknown preset is named in the error."""
    cfg = GPTConfig.preset("tiny", 8192, block_size=256, dropout=0.1)
    assert cfg.block_size == 256 and cfg.dropout == 0.1 and cfg.d_model == PRESETS["tiny"]["d_model"]
    with pytest.raises(ValueError, match="huge"):
        GPTConfig.preset("huge", 8192)


def test_ffn_hidden_defaults_to_llamas_rounding() -> None:
    """8/3 · d_model rounded up to 64, recorded in the dump; an explicit width is kept."""
    assert tiny(d_model=128).ffn_hidden == 384
    assert tiny(d_model=768, n_head=12, n_kv_head=12).ffn_hidden == 2048
    assert tiny(d_model=512).model_dump()["ffn_hidden"] == 1408
    assert tiny(ffn_hidden=100).hidden == 100
    cfg = tiny()
    assert GPTConfig(**cfg.model_dump()) == cfg


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"n_head": 4, "n_kv_head": 3}, ("n_head", "n_kv_head")),
        ({"d_model": 66, "n_head": 4, "n_kv_head": 2}, ("d_model", "n_head")),
        ({"d_model": 60, "n_head": 4, "n_kv_head": 2}, ("head_dim",)),
        ({"vocab_size": 0}, ("vocab_size",)),
        ({"dropout": 1.5}, ("dropout",)),
        ({"colour": "red"}, ("colour",)),
    ],
)
def test_config_errors_name_the_fields(overrides: dict[str, object], fields: tuple[str, ...]) -> None:
    """Invalid configs are refused with messages that name the offending fields."""
    with pytest.raises(ValidationError) as info:
        tiny(**overrides)
    for field in fields:
        assert field in str(info.value)


def test_config_is_frozen() -> None:
    """A config cannot change under a model built from it."""
    cfg = tiny()
    with pytest.raises(ValidationError):
        cfg.n_layer = 3  # type: ignore[misc]
