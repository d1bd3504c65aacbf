"""Tokenizer training, token shards and the resumable loader (no Prefect)."""

from __future__ import annotations

import gc
import random
import tracemalloc
import unicodedata
from pathlib import Path

import lxml.html
import numpy as np
import pytest
import torch
from conftest import write_doc_stage
from pydantic import ValidationError

from model.data import TokenLoader
from storage.layout import read_manifest
from storage.schemas import new_document
from storage.shards import SchemaError
from storage.tokens import export_nanogpt, open_token_shard, token_dtype, write_token_shard
from tasks.tokenize_shards import TokenizeConfig, split_of, tokenize_shard, train_tokenizer
from tasks.tokenizer import EOS, TokenizerConfig, in_sample, load, training_texts

TRICKY = [
    "emoji 😀👩‍👩‍👧 flags 🇩🇪 and ZWJ",
    "control \x00\x01\x07\x1b[31m bell, tab\tand\r\nCRLF",
    "ligature ﬁ, full-width ＡＢＣ, combining e\u0301 (NFC makes it é)",
    "a literal <|endoftext|> inside a document stays text",
    "",
    " leading and trailing spaces ",
]


def _handbook_texts(shared: Path) -> list[str]:
    """Visible text of every Debian Handbook page (26 locales)."""
    texts = []
    for path in sorted((shared / "html" / "debian-handbook").rglob("*.html")):
        page = lxml.html.fromstring(path.read_bytes())
        for node in page.xpath("//script|//style"):
            node.drop_tree()
        texts.append(page.text_content())
    return texts


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    """A 2,000-token tokenizer trained on the handbook pages, with the stage it was trained on."""
    texts = _handbook_texts(shared_data)
    root = tmp_path_factory.mktemp("tok")
    docs = [new_document(t, source="html", uri=f"handbook://{i}") for i, t in enumerate(texts)]
    stage = write_doc_stage(root / "docs", [docs[:150], docs[150:]], stage="dedup")
    shards = [str(stage / e["path"]) for e in read_manifest(stage)["shards"]]
    info = train_tokenizer(shards, [], str(root / "tok"), TokenizerConfig(vocab_size=2000))
    return stage, info, texts


def test_training_sample_by_id_hash_and_byte_budget(tmp_path: Path) -> None:
    docs = [new_document(f"document number {i} " * 20, source="text", uri=f"s://{i}") for i in range(400)]
    stage = write_doc_stage(tmp_path / "docs", [docs[:200], docs[200:]], stage="dedup")
    shards = [stage / e["path"] for e in read_manifest(stage)["shards"]]
    everything = list(training_texts(shards, TokenizerConfig()))
    assert everything == [d.text for d in docs]
    half = list(training_texts(shards, TokenizerConfig(sample_percent=50)))
    chosen = {d.text for d in docs if in_sample(d.id, 50)}
    assert set(half) == chosen and 150 < len(half) < 250
    # The choice follows each document's id alone: a part of the corpus keeps the same documents.
    part = list(training_texts(shards[:1], TokenizerConfig(sample_percent=50)))
    assert set(part) == chosen & {d.text for d in docs[:200]}
    budget = sum(len(t.encode()) for t in everything[:10])
    assert list(training_texts(shards, TokenizerConfig(train_bytes=budget))) == everything[:10]
    assert list(training_texts(shards, TokenizerConfig(train_bytes=budget + 1))) == everything[:11]


def test_round_trip_on_26_languages_emoji_and_controls(trained: tuple[Path, dict, list[str]]) -> None:
    _, info, texts = trained
    assert len(texts) == 302 and info["vocab_size"] == 2000 and (info["eos_id"], info["pad_id"]) == (0, 1)
    tok = load(Path(info["path"]), info["hash"])
    for text in [*texts, *TRICKY]:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == unicodedata.normalize("NFC", text)
        assert info["eos_id"] not in ids and None not in ids  # no document boundary and nothing unknown
    assert tok.decode(tok.encode(TRICKY[3]).ids) == TRICKY[3]
    with pytest.raises(ValueError, match="is not the tokenizer"):
        load(Path(info["path"]), "0" * 32)


def test_loads_unchanged_in_transformers(trained: tuple[Path, dict, list[str]]) -> None:
    from transformers import PreTrainedTokenizerFast

    _, info, texts = trained
    fast = PreTrainedTokenizerFast(tokenizer_file=info["path"], eos_token=EOS, pad_token="<|pad|>")
    tok = load(Path(info["path"]))
    for text in texts[:40:7] + TRICKY[:3]:
        assert fast(text)["input_ids"] == tok.encode(text).ids
    assert fast.eos_token_id == info["eos_id"] and fast.pad_token_id == info["pad_id"]


def test_token_shards_counts_splits_and_tokenizer_check(
    trained: tuple[Path, dict, list[str]], tmp_path: Path
) -> None:
    stage, info, texts = trained
    cfg = TokenizeConfig(val_fraction=0.1)
    tok = load(Path(info["path"]))
    refs = [
        tokenize_shard(
            str(stage / e["path"]), e["fingerprint"], info["path"], info["hash"], str(tmp_path), cfg
        )
        for e in read_manifest(stage)["shards"]
    ]
    assert sum(sum(r.documents.values()) for r in refs) == len(texts)
    for ref in refs:
        for split, name in ref.files.items():
            shard = open_token_shard(tmp_path / name, info["hash"])
            assert shard.meta["tokens"] == ref.tokens[split] == shard.tokens.size
            assert shard.tokens.dtype == np.uint16 and not shard.tokens.flags.writeable  # a read-only map
            ends = shard.tokens[shard.offsets[1:] - 1]
            assert (ends == info["eos_id"]).all()  # every document ends with end-of-text
            assert all(split_of(i, 0.1) == split for i in shard.ids.to_pylist())
    # A document's tokens are its encoding plus EOS; reading under another tokenizer is refused.
    first = open_token_shard(tmp_path / refs[0].files["train"])
    by_id = {new_document(t, source="html", uri=f"handbook://{i}").id: t for i, t in enumerate(texts)}
    text = by_id[first.ids[0].as_py()]
    assert first.tokens[first.offsets[0] : first.offsets[1]].tolist() == [
        *tok.encode(text).ids,
        info["eos_id"],
    ]
    with pytest.raises(SchemaError, match="tokenizer"):
        open_token_shard(tmp_path / refs[0].files["train"], "f" * 32)
    files = [tmp_path / r.files["train"] for r in refs]
    assert export_nanogpt(files, tmp_path / "train.bin", info["hash"]) == sum(r.tokens["train"] for r in refs)
    flat = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    assert np.array_equal(flat, np.concatenate([open_token_shard(f).tokens for f in files]))


def test_split_is_stable_and_sized() -> None:
    ids = [f"doc-{i}" for i in range(20_000)]
    val = [i for i in ids if split_of(i, 0.05) == "val"]
    assert 0.045 < len(val) / len(ids) < 0.055
    # Membership depends only on the id: a subset of the documents keeps the same assignment.
    assert [split_of(i, 0.05) for i in ids[::7]] == [split_of(i, 0.05) for i in ids][::7]
    assert all(split_of(i, 0.0) == "train" for i in ids[:100])
    with pytest.raises(ValidationError):
        TokenizeConfig(val_fraction=1.0)
    with pytest.raises(ValidationError, match="vocab_size"):
        TokenizerConfig(vocab_size=100)


def test_wide_vocabulary_uses_uint32(tmp_path: Path) -> None:
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    tokens = np.array([70_000, 3, 0], dtype=np.uint32)
    write_token_shard(
        tmp_path / "w.arrow",
        ["d"],
        tokens,
        [0, 3],
        tokenizer_hash="h",
        eos_id=0,
        vocab_size=80_000,
        split="train",
    )
    shard = open_token_shard(tmp_path / "w.arrow", "h")
    assert shard.tokens.dtype == np.uint32 and shard.tokens.tolist() == [70_000, 3, 0]
    with pytest.raises(ValueError, match="uint16"):
        export_nanogpt([tmp_path / "w.arrow"], tmp_path / "w.bin", "h")
    (tmp_path / "bad.arrow").write_bytes((tmp_path / "w.arrow").read_bytes()[:50])
    with pytest.raises(Exception, match="not a complete token shard"):
        open_token_shard(tmp_path / "bad.arrow")


def _shards(tmp_path: Path, sizes: list[int]) -> list[Path]:
    """Token shards of consecutive integers (so windows are easy to check)."""
    paths, start = [], 0
    for k, n in enumerate(sizes):
        path = tmp_path / f"s{k}.train.arrow"
        tokens = np.arange(start, start + n, dtype=np.uint32) % 60_000
        write_token_shard(
            path,
            ["d"],
            tokens.astype(np.uint16),
            [0, n],
            tokenizer_hash="h",
            eos_id=0,
            vocab_size=60_000,
            split="train",
        )
        paths.append(path)
        start += n
    return paths


def test_loader_windows_resume_and_epochs(tmp_path: Path) -> None:
    paths = _shards(tmp_path, [1000, 333, 10, 2500])
    loader = TokenLoader(paths, block_size=32, batch_size=8, seed=3, tokenizer_hash="h")
    x, y = loader.next_batch()
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and ((y[:, -1] - x[:, -1]) % 60_000 == 1).all()
    for _ in range(57):
        loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(300)]  # crosses into later epochs
    assert loader.epoch >= 2
    resumed = TokenLoader(paths, block_size=32, batch_size=8, seed=3)
    resumed.load_state_dict(state)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(expected, (resumed.next_batch() for _ in range(300)), strict=True)
    )
    # Each epoch serves every window once; different epochs shift the grid.
    fresh = TokenLoader(paths, block_size=32, batch_size=1, seed=3)
    firsts = [int(fresh.next_batch()[0][0, 0]) for _ in range(fresh.windows_per_epoch)]
    assert len(set(firsts)) == fresh.windows_per_epoch
    with pytest.raises(ValueError, match="seed"):
        TokenLoader(paths, block_size=32, batch_size=8, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="shards"):
        TokenLoader(paths[:2], block_size=32, batch_size=8, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="window"):
        TokenLoader(paths[2:3], block_size=32, batch_size=8)


def _anon_rss() -> int:
    """This process's anonymous resident memory in bytes: the heap and torch's allocations, without the
    file-backed pages of the memory maps (page cache the kernel may drop, which nanoGPT issue #287 is not)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status (not Linux)")


def test_loader_memory_stays_flat(tmp_path: Path) -> None:
    """Neither the Python heap nor the process's anonymous memory grows with the batches served."""
    loader = TokenLoader(_shards(tmp_path, [400_000, 300_000]), block_size=128, batch_size=16, seed=0)
    for _ in range(500):
        loader.next_batch()
    gc.collect()
    tracemalloc.start()
    base, rss = tracemalloc.take_snapshot(), _anon_rss()
    for _ in range(5000):  # 5000 batches of 16 x 129 int64: 80 MB if any of them were kept
        x, y = loader.next_batch()
        loss = (x.float() - y.float()).mean()  # use them as training would, through torch
    gc.collect()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    assert x.shape == (16, 128) and torch.isfinite(loss)
    assert grown < 1_000_000, grown  # a few batches, not thousands
    assert _anon_rss() - rss < 8_000_000, _anon_rss() - rss


def test_random_documents_round_trip(trained: tuple[Path, dict, list[str]]) -> None:
    _, info, _ = trained
    tok = load(Path(info["path"]))
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20, 0x2FFF) if unicodedata.category(chr(c))[0] not in "CZ"] + [
        "\n",
        " ",
    ]
    for _ in range(200):
        text = unicodedata.normalize("NFC", "".join(rng.choices(alphabet, k=rng.randint(0, 80))))
        assert tok.decode(tok.encode(text).ids) == text
