"""The fastText quality classifier: configs, reading, passages, metrics, thresholds, training and the flow."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import itertools
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from storage.schemas import DOCUMENT_SCHEMA, documents_table, new_document
from storage.shards import write_shard
from tasks.gutenberg import strip_gutenberg
from tasks.langid import LangIdConfig, detect_languages
from tasks.quality import (
    LINE_BREAK,
    QualityConfig,
    QualityTrainConfig,
    evaluate_labeled,
    preprocess,
    quality_scores,
    read_labeled,
    read_texts,
    roc_auc,
    score_threshold,
    split_passages,
    train_quality_classifier,
)
from tasks.text import decode_text
from tasks.web import decode_html

ROOT = Path(__file__).resolve().parents[1]
# Small and fast: the tests check behaviour, not the best model.
FAST = QualityTrainConfig(dim=16, bucket=20_000, epoch=5)
BOOKS = (
    "pg11-alice-in-wonderland.en.utf8.txt",
    "pg84-frankenstein.en.utf8.txt",
    "pg1342-pride-and-prejudice.en.utf8.txt",
)


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    """One {"text": ...} record per line."""
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def test_quality_config_allows_one_keep_rule_and_needs_a_model() -> None:
    assert QualityConfig().model_path is None
    QualityConfig(model_path="m.bin", keep_top_percent=30)
    with pytest.raises(ValidationError, match=r"quality\.threshold and quality\.keep_top_percent"):
        QualityConfig(model_path="m.bin", threshold=0.5, keep_top_percent=10)
    with pytest.raises(ValidationError, match=r"need quality\.model_path"):
        QualityConfig(threshold=0.5)
    with pytest.raises(ValidationError, match="keep_top_percent"):
        QualityConfig(model_path="m.bin", keep_top_percent=0)
    with pytest.raises(ValidationError, match="threshold"):
        QualityConfig(model_path="m.bin", threshold=2)


def test_train_config_is_checked() -> None:
    assert QualityTrainConfig().word_ngrams == 2
    with pytest.raises(ValidationError, match=r"min_chars \(500\) must not exceed max_chars \(100\)"):
        QualityTrainConfig(min_chars=500, max_chars=100)
    with pytest.raises(ValidationError, match="valid_fraction"):
        QualityTrainConfig(valid_fraction=1.0)
    with pytest.raises(ValidationError, match="epoch"):
        QualityTrainConfig(epoch=0)
    with pytest.raises(ValidationError):
        QualityTrainConfig(epochs=3)  # type: ignore[call-arg]


def test_percentile_threshold_keeps_the_top_percent() -> None:
    scores = [random.Random(7).random() for _ in range(1)] + list(np.random.default_rng(0).random(999))
    for pct in (0.1, 1, 10, 25, 33.3, 50, 99, 100):
        t = score_threshold(scores, QualityConfig(model_path="m.bin", keep_top_percent=pct))
        assert t is not None
        kept = sum(s >= t for s in scores)
        assert kept == max(1, int(np.ceil(len(scores) * pct / 100 - 1e-9))), pct
    # Ties at the cut keep every tied document; an absolute threshold is returned as is.
    assert score_threshold([0.5] * 10, QualityConfig(model_path="m.bin", keep_top_percent=20)) == 0.5
    assert score_threshold(scores, QualityConfig(model_path="m.bin", threshold=0.42)) == 0.42
    assert score_threshold(scores, QualityConfig(model_path="m.bin")) is None
    assert score_threshold([], QualityConfig(model_path="m.bin", keep_top_percent=10)) is None


def test_roc_auc_matches_pairwise_counting_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + labels * 0.3, 1)  # rounding makes many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert roc_auc(labels.tolist(), scores.tolist()) == pytest.approx(np.mean(pairs))
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([1, 1], [0.1, 0.2]) is None


def test_preprocess_and_passages() -> None:
    assert (
        preprocess("Hello, World!\n\nNext line.") == f"hello , world ! {LINE_BREAK} next line . {LINE_BREAK}"
    )
    assert preprocess(" \n\x00 ") == ""
    assert "__label__" not in preprocess("a __label__spam token") and "\n" not in preprocess("a\r\nb\u2028c")
    paras = [f"Paragraph {i} " + "word " * 60 for i in range(10)]
    passages = split_passages("\n\n".join(paras), max_chars=1000)
    assert all(len(p) <= 1000 for p in passages) and len(passages) == 4
    assert " ".join(" ".join(passages).split()) == " ".join(" ".join(paras).split())
    long = "x" * 50 + " " + "word " * 1000
    assert all(len(p) <= 300 for p in split_passages(long, max_chars=300))
    assert split_passages("short\n\n" + "long enough " * 20, max_chars=0, min_chars=50) != []
    assert split_passages("tiny", max_chars=100, min_chars=50) == []


def test_read_texts_from_shards_and_jsonl(tmp_path: Path) -> None:
    docs = [new_document(f"document {i}", source="text", uri=f"file:///{i}") for i in range(3)]
    write_shard(tmp_path / "s.parquet", documents_table(docs), DOCUMENT_SCHEMA)
    assert list(read_texts(tmp_path / "s.parquet")) == ["document 0", "document 1", "document 2"]
    _write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"body": "three"}\n\n{"body": "four"}\n')
    assert list(read_texts(tmp_path / "a.jsonl")) == ["one", "two"]
    assert list(read_texts(tmp_path / "b.jsonl.gz", text_field="body")) == ["three", "four"]
    with pytest.raises(ValueError, match=r"b\.jsonl\.gz:1: no string field 'text'"):
        list(read_texts(tmp_path / "b.jsonl.gz"))
    with pytest.raises(ValueError, match="expected a document shard"):
        list(read_texts(tmp_path / "notes.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "x", "label": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: .*label"):
        read_labeled(tmp_path / "bad.jsonl")


def _crawl_text(raw: bytes) -> str:
    """All visible text of a page, boilerplate included."""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(decode_html(raw)[0], main_content=False, alt_texts=False)


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Positives: three English Gutenberg books. Negatives: raw crawl text of English web pages, and junk."""
    out = tmp_path_factory.mktemp("corpus")
    books = [
        strip_gutenberg(decode_text((shared_data / "text" / "gutenberg" / b).read_bytes())[0])[0]
        for b in BOOKS
    ]
    pages = [
        _crawl_text(p.read_bytes())
        for p in sorted((shared_data / "html" / "trafilatura-eval" / "raw").iterdir())
    ]
    english = [
        t for t, (lang, _) in zip(pages, detect_languages(pages, LangIdConfig()), strict=True) if lang == "en"
    ]
    junk = [
        decode_text(p.read_bytes())[0] for p in (shared_data / "text" / "quality-negatives").glob("*.txt")
    ]
    return _write_jsonl(out / "books.jsonl", books), _write_jsonl(out / "crawl.jsonl", english + junk)


@pytest.fixture(scope="module")
def trained(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model trained on the corpus with the fast test settings."""
    return train_quality_classifier([corpus[0]], [corpus[1]], tmp_path_factory.mktemp("models"), FAST)


def test_training_round_trip_under_numpy_2(trained: dict[str, Any], shared_data: Path) -> None:
    assert int(np.__version__.split(".")[0]) >= 2
    model = Path(trained["model_path"])
    assert model.name == f"quality-{trained['sha256'][:12]}.bin"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == trained["sha256"]
    assert not [p for p in model.parent.iterdir() if p.name.startswith(".")]  # no temp files left behind
    card = json.loads(Path(trained["card_path"]).read_text(encoding="utf-8"))
    assert card["sha256"] == trained["sha256"] and card["config"]["word_ngrams"] == 2
    assert card["metrics"]["held_out"] == trained["metrics"] and card["counts"]["negatives"] > 100
    book = (shared_data / "text" / "gutenberg" / "pg84-frankenstein.en.utf8.txt").read_text(encoding="utf-8")
    passage = " ".join(book.split()[20000:20300])
    menu = "Home\nAbout us\nContact\nLogin | Register\nPrivacy policy\nShare on Facebook\nCookies\n" * 5
    scores = quality_scores(trained["model_path"], [passage, menu, ""])
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > 0.5 > scores[1] and scores[2] == 0.0


def test_held_out_auc_is_high(trained: dict[str, Any]) -> None:
    metrics = trained["metrics"]
    assert metrics["positives"] > 50 and metrics["negatives"] > 10
    # AUC is the contract; precision/recall at 0.5 depend on calibration, so their floors are looser.
    assert metrics["auc"] >= 0.95 and metrics["precision"] >= 0.7 and metrics["recall"] >= 0.8, metrics


def test_same_data_and_seed_give_the_same_model(
    corpus: tuple[Path, Path], trained: dict[str, Any], tmp_path: Path
) -> None:
    # The same files copied elsewhere: the model depends on content and seed, not on paths.
    pos, neg = shutil.copy(corpus[0], tmp_path / "p.jsonl"), shutil.copy(corpus[1], tmp_path / "n.jsonl")
    again = train_quality_classifier([Path(pos)], [Path(neg)], tmp_path / "again", FAST)
    assert again["sha256"] == trained["sha256"] and again["metrics"] == trained["metrics"]
    other = train_quality_classifier(
        [Path(pos)], [Path(neg)], tmp_path / "other", FAST.model_copy(update={"seed": 1})
    )
    assert other["sha256"] != trained["sha256"]


def test_odd_text_in_training_data_is_harmless(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    # A literal label token and a lone surrogate (valid as a JSON escape) inside a training document.
    odd = "Chapter one. __label__spam is not a label here, nor is \ud800 a character. " * 10
    neg = _write_jsonl(tmp_path / "odd.jsonl", [odd, *read_texts(corpus[1])])
    ref = train_quality_classifier([corpus[0]], [neg], tmp_path / "m", FAST)
    assert len(quality_scores(ref["model_path"], [odd])) == 1  # the model has exactly the two labels


def test_no_usable_negatives_is_an_error(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    empty = _write_jsonl(tmp_path / "empty.jsonl", ["too short"])
    with pytest.raises(ValueError, match="no negatives passages"):
        train_quality_classifier([corpus[0]], [empty], tmp_path / "m", FAST)


def test_evaluate_labeled_on_dclm_file(trained: dict[str, Any], shared_data: Path) -> None:
    got = evaluate_labeled(trained["model_path"], shared_data / "quality" / "dclm_labeled_shared.jsonl")
    assert (got["n"], got["positives"], got["negatives"]) == (249, 144, 105)
    assert 0.0 <= got["auc"] <= 1.0 and got["threshold"] == 0.5


@pytest.mark.slow
def test_benchmark_recipe_reaches_the_dclm_auc_floor(shared_data: Path, tmp_path: Path) -> None:
    """The README's number: the benchmark's default recipe, evaluated on DCLM's human labels."""
    spec = importlib.util.spec_from_file_location("eval_quality", ROOT / "benchmarks" / "eval_quality.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sources, recipe_cfg = bench.RECIPES["mixed"]
    pos, neg = bench.prepare(shared_data, tmp_path / "data", sources)
    ref = train_quality_classifier(
        pos, neg, tmp_path / "models", QualityTrainConfig.model_validate(recipe_cfg)
    )
    got = evaluate_labeled(ref["model_path"], shared_data / "quality" / "dclm_labeled_shared.jsonl")
    assert got["auc"] >= 0.75, got


@pytest.mark.slow
def test_train_quality_flow_publishes_and_caches(
    prefect_api: str, corpus: tuple[Path, Path], shared_data: Path, tmp_path: Path
) -> None:
    from conftest import task_states
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.quality import train_quality_flow

    def run() -> tuple[dict[str, Any], list[str], list[Any]]:
        state = train_quality_flow(
            [str(corpus[0])],
            [str(corpus[1])],
            str(tmp_path / "models"),
            config=FAST,
            eval_jsonl=str(shared_data / "quality" / "dclm_labeled_shared.jsonl"),
            return_state=True,
        )
        run_id = state.state_details.flow_run_id
        with get_client(sync_client=True) as client:
            flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            artifacts = client.read_artifacts(artifact_filter=flt)
        return state.result(), task_states(run_id), artifacts

    first, states, artifacts = run()
    assert Path(first["model_path"]).is_file() and first["labeled"]["n"] == 249
    assert sorted(states) == ["Completed", "Completed"]
    assert {a.key for a in artifacts} == {"quality-classifier-metrics", "quality-classifier-model"}
    table = next(a for a in artifacts if a.type == "table")
    assert "held-out passages" in str(table.data) and "dclm_labeled_shared.jsonl" in str(table.data)
    assert first["sha256"] in str(next(a for a in artifacts if a.type == "markdown").data)

    second, states, _ = run()
    assert "Cached" in states and second["sha256"] == first["sha256"]

    # A cache hit whose model file was deleted trains again instead of pointing at nothing.
    Path(first["model_path"]).unlink()
    third, _, _ = run()
    assert third["sha256"] == first["sha256"] and Path(third["model_path"]).is_file()
