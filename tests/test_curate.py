"""The curate stage: scoring, selection, sidecars, re-thresholding without re-scoring, bad input."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from storage.schemas import DOCUMENT_SCHEMA, SCORES_SCHEMA, documents_table, new_document
from storage.shards import file_fingerprint, read_shard, write_shard
from tasks.heuristics import REASONS
from tasks.scoring import CurateConfig, score_shard, select_shard, sidecar_name

# Varied English prose: every heuristic keeps it (no repeated n-grams, lines end in punctuation).
SENTENCES = [
    "The river runs through the valley, and the old mill still stands beside the stone bridge.",
    "Farmers have drawn water from it for centuries to irrigate their orchards and vegetable gardens.",
    "In spring the snow melts on the mountains and the current grows strong enough to turn the wheel.",
    "Children from the village walk along the bank each morning on their way to the small school.",
    "A baker opened a shop near the church last year, and people now queue there before dawn.",
    "Historians believe the first houses were built here by shepherds who followed their flocks.",
    "The town council meets once a month to discuss roads, taxes, and the repair of the chapel roof.",
    "Tourists arrive in summer to photograph the waterfall and to hike through the pine forest.",
    "During the long winter evenings, families gather by the fire and tell stories about the past.",
    "A local museum displays tools, letters, and photographs that describe how life used to be.",
    "Many young people leave for the city, yet some return to raise their own children in the valley.",
    "The railway reached the region in 1892 and changed the economy of every farm along the line.",
]
GOOD = "\n".join(SENTENCES)
SHORT = "\n".join(SENTENCES[:6])


def _shard(tmp_path: Path, texts: list[str]) -> Path:
    """An ingest-like shard holding the given texts."""
    docs = [new_document(t, source="text", uri=f"file:///in/{i}.txt") for i, t in enumerate(texts)]
    path = tmp_path / "in" / "shard-text-test.parquet"
    write_shard(path, documents_table(docs), DOCUMENT_SCHEMA)
    return path


def _curate(tmp_path: Path, texts: list[str], cfg: CurateConfig) -> tuple[list[str | None], list[dict]]:
    """Score and select one shard; return each input's drop reason and the kept documents."""
    src = _shard(tmp_path, texts)
    scored = score_shard(str(src), file_fingerprint(src), str(tmp_path / "scores"), cfg)
    scored_path = tmp_path / "scores" / scored.path
    ref = select_shard(str(scored_path), file_fingerprint(scored_path), str(tmp_path / "out"), cfg, None)
    side = read_shard(tmp_path / "out" / sidecar_name(ref.path), SCORES_SCHEMA)
    kept = read_shard(tmp_path / "out" / ref.path, DOCUMENT_SCHEMA).to_pylist()
    assert ref.rows == len(kept) and ref.drops == side.num_rows - len(kept)
    return side.column("drop_reason").to_pylist(), kept


def test_every_document_is_in_the_sidecar_with_a_reason_or_kept(tmp_path: Path) -> None:
    texts = [
        GOOD,
        "",
        "\x00\x01\x02\x03 binary \x00\x00 junk \xff\xfe" * 50,
        "Der Fluss fließt durch das Tal und die alte Mühle steht daneben. " * 20,
        "buy now " * 2000,
        "é" * 10 + " Ã©tÃ© mojibake cafÃ© " * 40,
    ]
    reasons, kept = _curate(tmp_path, texts, CurateConfig())
    assert reasons[0] is None and len(kept) == 1
    assert kept[0]["lang"] == "en" and kept[0]["lang_score"] >= 0.65
    assert reasons[3] == "lang_not_kept"
    allowed = set(REASONS) | {"lang_not_kept", "lang_low_score"}
    assert all(r in allowed for r in reasons[1:]), reasons


def test_a_ten_megabyte_single_line_document_is_handled(tmp_path: Path) -> None:
    line = ("word " * 2_000_000)[:10_000_000]
    reasons, kept = _curate(tmp_path, [line, GOOD], CurateConfig())
    assert reasons[0] is not None and reasons[1] is None and len(kept) == 1


def test_rethresholding_reads_signals_without_rescoring(tmp_path: Path) -> None:
    src = _shard(tmp_path, [GOOD, SHORT])
    cfg = CurateConfig()
    scored = score_shard(str(src), file_fingerprint(src), str(tmp_path / "scores"), cfg)
    scored_path = tmp_path / "scores" / scored.path
    sidecar = scored_path.with_name(sidecar_name(scored.path))
    before = sidecar.stat().st_mtime_ns
    strict = CurateConfig.model_validate({"filters": {"gopher_quality": {"min_doc_words": 150}}})
    assert strict.scoring_view() == cfg.scoring_view()  # a threshold is not part of the scoring key
    ref = select_shard(str(scored_path), file_fingerprint(scored_path), str(tmp_path / "out"), strict, None)
    side = read_shard(tmp_path / "out" / sidecar_name(ref.path), SCORES_SCHEMA)
    assert side.column("drop_reason").to_pylist() == [None, "gopher_short_doc"]
    assert sidecar.stat().st_mtime_ns == before  # the scores were read, not recomputed
    counts = pc.value_counts(side["drop_reason"]).to_pylist()
    assert {"values": "gopher_short_doc", "counts": 1} in counts


def test_quality_scores_reach_the_sidecar_and_keep_the_top_percent(tmp_path: Path) -> None:
    import json
    import random

    from tasks.quality import QualityConfig, QualityTrainConfig, train_quality_classifier
    from tasks.scoring import quality_threshold

    rng = random.Random(0)
    spam = [
        "BUY cheap pills now!!! click here",
        "free $$$ winner casino bonus >>> sign up",
        "hot deals 100% off",
    ]
    pos, neg = tmp_path / "pos.jsonl", tmp_path / "neg.jsonl"
    pos.write_text(
        "".join(json.dumps({"text": " ".join(rng.sample(SENTENCES, 6))}) + "\n" for _ in range(60))
    )
    neg.write_text(
        "".join(json.dumps({"text": " | ".join(rng.choices(spam, k=8))}) + "\n" for _ in range(60))
    )
    model = train_quality_classifier(
        [pos], [neg], tmp_path / "model", QualityTrainConfig(epoch=5, min_count=1)
    )
    cfg = CurateConfig(quality=QualityConfig(model_path=model["model_path"], keep_top_percent=50))
    # Prose with 0 to 4 spam sentences mixed in: every document passes the heuristics, scores differ.
    adverts = [
        "Buy cheap pills now and click here to claim your free casino bonus.",
        "Winner! Sign up today for hot deals with one hundred percent off.",
        "Free money is waiting, so click here and enter your card number.",
        "Cheap watches and pills ship tonight, so buy now while deals last.",
    ]
    docs = ["\n".join(SENTENCES[: 8 + i % 2] + adverts[: i // 2]) for i in range(10)]
    src = _shard(tmp_path, docs)
    scored = score_shard(str(src), file_fingerprint(src), str(tmp_path / "scores"), cfg)
    sidecar = tmp_path / "scores" / sidecar_name(scored.path)
    scores = read_shard(sidecar, SCORES_SCHEMA).column("quality_score").to_pylist()
    assert len(scores) == 10 and all(0.0 <= s <= 1.0 for s in scores)
    threshold = quality_threshold([str(sidecar)], cfg.quality)
    assert threshold is not None and min(scores) <= threshold <= max(scores)
    scored_path = tmp_path / "scores" / scored.path
    ref = select_shard(str(scored_path), file_fingerprint(scored_path), str(tmp_path / "out"), cfg, threshold)
    reasons = (
        read_shard(tmp_path / "out" / sidecar_name(ref.path), SCORES_SCHEMA).column("drop_reason").to_pylist()
    )
    assert set(reasons) <= {None, "quality_low"}
    assert reasons.count("quality_low") == sum(s < threshold for s in scores) and 4 <= ref.rows <= 6
