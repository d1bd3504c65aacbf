"""The fastText quality classifier (DCLM-style bigrams): train from trusted vs raw text, score, threshold.

Training cuts every input document into paragraph-sized passages, holds out a validation split chosen by a
seeded hash of each passage (so the split does not depend on input order), trains a supervised fastText
model with word bigrams, and saves it as `quality-<sha256[:12]>.bin` with a JSON card beside it. Scoring
returns the probability of the positive ("trusted") label for each text.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage.layout import code_version
from storage.rows import valid_batches
from storage.schemas import DOCUMENT_SCHEMA
from storage.shards import atomic_write, file_fingerprint
from tasks.langid import load_fasttext, predict_lines

POSITIVE = "__label__hq"
NEGATIVE = "__label__lq"
# Bump when `preprocess` changes: a model only scores correctly on text prepared the way it was trained.
PREPROCESS = "lower-punct-nl-v1"
LINE_BREAK = "<nl>"
MODEL_PREFIX = "quality-"


class QualityConfig(BaseModel):
    """Quality scoring at curation: which classifier, and which documents to keep by its score."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model_path: str | None = None
    """Path to a quality classifier made by the train-quality flow (quality-<hash>.bin); empty turns quality
    scoring off."""
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    """Keep documents whose quality score (probability of high quality, 0-1) is at least this."""
    keep_top_percent: float | None = Field(None, gt=0.0, le=100.0)
    """Keep the best X percent of documents by quality score, across all shards of the run (DCLM picks the
    threshold from a percentile of the scores rather than a fixed number)."""

    @model_validator(mode="after")
    def _one_rule(self) -> QualityConfig:
        """At most one keep rule, and only with a model to produce scores."""
        if self.threshold is not None and self.keep_top_percent is not None:
            raise ValueError("set at most one of quality.threshold and quality.keep_top_percent")
        if not self.model_path and (self.threshold is not None or self.keep_top_percent is not None):
            raise ValueError("quality.threshold and quality.keep_top_percent need quality.model_path")
        return self


class QualityTrainConfig(BaseModel):
    """How the fastText quality classifier is trained."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    epoch: int = Field(5, ge=1)
    """Passes over the training passages."""
    lr: float = Field(0.1, gt=0.0)
    """fastText learning rate (decays linearly to 0 over training)."""
    word_ngrams: int = Field(2, ge=1)
    """Longest word n-gram used as a feature; 2 (bigrams) as in DCLM's classifier."""
    dim: int = Field(64, ge=1)
    """Size of the word and n-gram vectors."""
    min_count: int = Field(2, ge=1)
    """Words seen fewer times than this in the training data are ignored."""
    bucket: int = Field(200_000, ge=1)
    """Hash buckets for word n-gram features; the model file holds about bucket x dim floats (200k x 64 is
    51 MB). Raise it (fastText's default is 2M) when training on much more text."""
    max_chars: int = Field(2000, ge=0)
    """Documents are cut at paragraph breaks into passages of at most about this many characters, so a
    whole book does not count as one example; 0 keeps documents whole."""
    min_chars: int = Field(100, ge=0)
    """Passages shorter than this many characters (after whitespace collapsing) are not used."""
    max_passages_per_source: int | None = Field(None, ge=1)
    """Use at most this many passages from each input file (a seeded sample), so one big source (a pile of
    books) cannot decide what the classifier learns; empty uses every passage."""
    balance: bool = True
    """Repeat passages of the smaller class until both classes are equally frequent in training, so a score
    of 0.5 means 'undecided' rather than 'the prior'."""
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of passages held out (by a seeded hash of the text) to report precision, recall and AUC."""
    seed: int = 0
    """Seed for fastText and for shuffling; the same data, seed and threads=1 give a byte-identical model."""
    threads: int = Field(1, ge=1)
    """Training threads. Above 1, fastText trains faster but the model differs from run to run."""

    @model_validator(mode="after")
    def _passage_bounds(self) -> QualityTrainConfig:
        """Passages cannot be required to be longer than they are allowed to be."""
        if self.max_chars and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must not exceed max_chars ({self.max_chars})")
        return self


def read_texts(path: Path, text_field: str = "text") -> Iterator[str]:
    """Texts of a Crucible document shard (.parquet) or a JSONL file (.jsonl, .ndjson, optionally .gz)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        # Unusable rows (invalid UTF-8, ...) are skipped: a classifier needs only the readable text.
        for checked in valid_batches(path, DOCUMENT_SCHEMA, columns=[text_field]):
            yield from (t for t in checked.batch.column(text_field).to_pylist() if t)
    elif name.removesuffix(".gz").endswith((".jsonl", ".ndjson")):
        yield from _read_jsonl(path, text_field)
    else:
        raise ValueError(f"{path}: expected a document shard (.parquet) or JSONL (.jsonl, .jsonl.gz)")


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of every non-blank line of a JSONL file, gzipped or not."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, json.loads(line)


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` string of every JSON line; a record without it is an error naming the line."""
    for lineno, record in _records(path):
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"{path}:{lineno}: no string field {text_field!r}")
        yield text


_PUNCT = re.compile(r"([^\w\s])")


def preprocess(text: str) -> str:
    """One fastText line: lower-cased, punctuation split from words, every line end kept as a `<nl>` token."""
    # fastText splits on spaces only, so "end." and "end" would be different words without the padding.
    # DCLM drops newlines; keeping them as a token lets bigrams see short, unpunctuated menu-like lines,
    # which raised AUC on DCLM's human labels from ~0.73 to ~0.80 (benchmarks/eval_quality.py).
    # A literal "__label__x" would become a training label, NUL would end fastText's C string, and a lone
    # surrogate (from a JSON "\\ud800" escape) cannot be written or passed to fastText as UTF-8.
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", " ").lower()
    text = text.replace("__label__", " label ")
    lines = (" ".join(_PUNCT.sub(r" \1 ", ln).split()) for ln in text.splitlines())
    return " ".join(f"{line} {LINE_BREAK}" for line in lines if line)


def split_passages(text: str, max_chars: int, min_chars: int = 0) -> list[str]:
    """Cut text at paragraph breaks into passages of at most ~max_chars; drop those under min_chars."""
    pieces = [text]
    if max_chars:
        pieces, current = [], ""
        for para in re.split(r"\n\s*\n", text):
            for part in _cut(para.strip(), max_chars):
                if current and len(current) + len(part) + 2 > max_chars:
                    pieces.append(current)
                    current = ""
                current = f"{current}\n\n{part}" if current else part
        pieces.append(current)
    return [p for p in pieces if len(" ".join(p.split())) >= max(min_chars, 1)]


def _cut(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph longer than max_chars cut at the last space before each limit."""
    out = []
    while len(paragraph) > max_chars:
        cut = paragraph.rfind(" ", 0, max_chars)
        cut = cut if cut > max_chars // 2 else max_chars
        out.append(paragraph[:cut].strip())
        paragraph = paragraph[cut:].strip()
    return [*out, paragraph] if paragraph else out


def _passages(paths: Sequence[Path], cfg: QualityTrainConfig, side: str) -> tuple[list[str], dict[str, int]]:
    """Distinct prepared passages of every input (capped per input if asked), and how many each gave."""
    lines: list[str] = []
    seen: set[str] = set()
    per_source: dict[str, int] = {}
    for i, path in enumerate(paths):
        got = []
        for text in read_texts(Path(path)):
            for passage in split_passages(text, cfg.max_chars, cfg.min_chars):
                line = preprocess(passage)
                # Templates (navigation, licences) repeat verbatim; one copy is enough to learn from.
                if line not in seen:
                    seen.add(line)
                    got.append(line)
        if cfg.max_passages_per_source is not None and len(got) > cfg.max_passages_per_source:
            # Seeded by position, not path, so the same data in another folder gives the same model.
            got = random.Random(f"{cfg.seed}:{side}:{i}").sample(got, cfg.max_passages_per_source)
        per_source[str(path)] = len(got)
        lines.extend(got)
    return lines, per_source


def _held_out(line: str, cfg: QualityTrainConfig) -> bool:
    """Held-out membership from a seeded hash of the prepared passage (independent of input order)."""
    digest = hashlib.blake2b(f"{cfg.seed}\x1f{line}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < cfg.valid_fraction


def _upsample(lines: list[str], n: int, rng: random.Random) -> list[str]:
    """`lines` grown to n: whole copies first, then a seeded sample, so every passage is used."""
    reps, extra = divmod(n, len(lines))
    return lines * reps + rng.sample(lines, extra)


def _training_lines(pos: list[str], neg: list[str], cfg: QualityTrainConfig) -> list[str]:
    """Labelled, class-balanced (if asked) and seeded-shuffled fastText training lines."""
    rng = random.Random(cfg.seed)
    if cfg.balance:
        n = max(len(pos), len(neg))
        pos, neg = _upsample(pos, n, rng), _upsample(neg, n, rng)
    lines = [f"{POSITIVE} {t}" for t in pos] + [f"{NEGATIVE} {t}" for t in neg]
    rng.shuffle(lines)
    return lines


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (ties count half), or None without both classes."""
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if not n_pos or not n_neg:
        return None
    # Mann-Whitney U from average ranks: tied scores share the mean of the ranks they span.
    _, inverse, counts = np.unique(
        np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True
    )
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(avg_rank[inverse][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """AUC, and precision/recall/accuracy of 'score >= threshold means positive', with counts."""
    y = np.asarray(labels, dtype=bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int((pred & y).sum())
    auc = roc_auc(labels, scores)
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
        "auc": None if auc is None else round(auc, 4),
        "threshold": threshold,
        "precision": round(tp / int(pred.sum()), 4) if pred.any() else None,
        "recall": round(tp / int(y.sum()), 4) if y.any() else None,
        "accuracy": round(float((pred == y).mean()), 4) if len(y) else None,
    }


def train_quality_classifier(
    positives: Sequence[Path], negatives: Sequence[Path], out_dir: Path, cfg: QualityTrainConfig
) -> dict[str, Any]:
    """Train the classifier, save `quality-<hash12>.bin` and its JSON card in out_dir; return a small ref."""
    pos, pos_sources = _passages(positives, cfg, "positive")
    neg, neg_sources = _passages(negatives, cfg, "negative")
    # A passage given as both good and bad teaches nothing but noise: leave it out of both classes.
    both = set(pos) & set(neg)
    pos, neg = [t for t in pos if t not in both], [t for t in neg if t not in both]
    valid = [(1, t) for t in pos if _held_out(t, cfg)] + [(0, t) for t in neg if _held_out(t, cfg)]
    pos, neg = [t for t in pos if not _held_out(t, cfg)], [t for t in neg if not _held_out(t, cfg)]
    for what, got in (("positives", pos), ("negatives", neg)):
        if not got:
            raise ValueError(f"no {what} passages to train on (passages need min_chars={cfg.min_chars})")
    lines = _training_lines(pos, neg, cfg)
    model_path, sha, model = _fit_and_save(lines, Path(out_dir), cfg)
    metrics = binary_metrics([y for y, _ in valid], _positive_probs(model, [t for _, t in valid]))
    card = {
        "model": model_path.name,
        "sha256": sha,
        "labels": {"positive": POSITIVE, "negative": NEGATIVE},
        "preprocess": PREPROCESS,
        "config": cfg.model_dump(mode="json"),
        "counts": {"positives": len(pos), "negatives": len(neg), "held_out": len(valid)},
        "sources": {"positives": pos_sources, "negatives": neg_sources},
        "metrics": {"held_out": metrics},
        "fasttext": _package_version("fasttext-numpy2"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    card_path = model_path.with_suffix(".json")
    body = json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    # The card is written last: its presence says the model beside it is complete.
    atomic_write(card_path, lambda tmp: tmp.write_text(body, encoding="utf-8"))
    return {"model_path": str(model_path), "card_path": str(card_path), "sha256": sha, "metrics": metrics}


# Runs in a fresh interpreter. fastText's input-matrix init writes only min(thread, 10)/10 of the matrix
# (DenseMatrix::uniformThread); the rest is whatever malloc returns. Freshly mmapped pages are zero, reused
# heap memory is garbage (NaN or a different model on a second training in one process). Forcing big
# allocations onto mmap in a new process makes that part zero, so training is reproducible.
_FIT_SCRIPT = (
    "import json, sys, fasttext; a = json.loads(sys.argv[1]); "
    "fasttext.train_supervised(**a['args']).save_model(a['out'])"
)
_FIT_ENV = {"MALLOC_MMAP_THRESHOLD_": "4096"}


def _fit_and_save(lines: list[str], out_dir: Path, cfg: QualityTrainConfig) -> tuple[Path, str, Any]:
    """Train fastText on labelled lines in a child process; save atomically as quality-<hash12>.bin."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".train-") as tmp:
        train_file, saved = Path(tmp) / "train.txt", Path(tmp) / "model.bin"
        train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        args = {
            "input": str(train_file),
            "lr": cfg.lr,
            "epoch": cfg.epoch,
            "wordNgrams": cfg.word_ngrams,
            "dim": cfg.dim,
            "minCount": cfg.min_count,
            "bucket": cfg.bucket,
            "loss": "softmax",
            "thread": cfg.threads,
            "seed": cfg.seed,
            "verbose": 0,
        }
        cmd = [sys.executable, "-c", _FIT_SCRIPT, json.dumps({"args": args, "out": str(saved)})]
        done = subprocess.run(
            cmd, env={**os.environ, **_FIT_ENV}, capture_output=True, text=True, check=False
        )
        if done.returncode or not saved.is_file():
            err = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            hint = " (training diverged: lower lr)" if "NaN" in err[0] else ""
            raise RuntimeError(f"fastText training failed: {err[0]}{hint}")
        with open(saved, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        model = load_fasttext.__wrapped__(str(saved))
        model_path = out_dir / f"{MODEL_PREFIX}{sha[:12]}.bin"
        # The saved file is renamed to atomic_write's temp name, then fsynced and renamed into place.
        atomic_write(model_path, lambda dst: saved.replace(dst))
    return model_path, sha, model


def _package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _positive_probs(model: Any, lines: Sequence[str]) -> list[float]:
    """P(positive) for prepared lines; an empty line scores 0 (no evidence of quality)."""
    labels = model.get_labels()
    if sorted(labels) != sorted((POSITIVE, NEGATIVE)):
        raise ValueError(f"not a Crucible quality model: labels {labels}, expected {POSITIVE} and {NEGATIVE}")
    out = [0.0] * len(lines)
    todo = [i for i, line in enumerate(lines) if line]
    if todo:
        got_labels, got_probs = predict_lines(model, [lines[i] for i in todo], k=2)
        for i, labs, probs in zip(todo, got_labels, got_probs, strict=True):
            p = dict(zip(labs, (float(x) for x in probs), strict=True)).get(POSITIVE, 0.0)
            # fastText's softmax adds 1e-5 before the log, so a probability can exceed 1 by a hair.
            out[i] = min(max(p, 0.0), 1.0)
    return out


def quality_scores(model_path: str, texts: Sequence[str]) -> list[float]:
    """Probability that each text is high quality (the positive class) under the given classifier."""
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"quality.model_path {model_path!r} is not a file (train-quality makes one)")
    return _positive_probs(load_fasttext(str(path)), [preprocess(t or "") for t in texts])


def score_threshold(scores: Sequence[float], cfg: QualityConfig) -> float | None:
    """The minimum score to keep: the absolute threshold, or the score keeping the top X%; None keeps all."""
    if cfg.threshold is not None:
        return cfg.threshold
    values = np.asarray([s for s in scores if s is not None and not math.isnan(s)], dtype=np.float64)
    if cfg.keep_top_percent is None or not len(values):
        return None
    # The k-th highest score: documents scoring at least this are the top X% (more only on exact ties).
    k = max(1, math.ceil(len(values) * cfg.keep_top_percent / 100.0 - 1e-9))
    return float(np.sort(values)[len(values) - k])


def read_labeled(jsonl: Path) -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels of a labeled JSONL file (`{"text": ..., "label": 0 or 1}` per line)."""
    pairs = []
    for lineno, r in _records(Path(jsonl)):
        if not isinstance(r, dict) or r.get("label") not in (0, 1) or not isinstance(r.get("text"), str):
            raise ValueError(f"{jsonl}:{lineno}: expected a string 'text' and a 'label' of 0 or 1")
        pairs.append((r["text"], int(r["label"])))
    return [t for t, _ in pairs], [y for _, y in pairs]


def evaluate_labeled(model_path: str, jsonl: Path) -> dict[str, Any]:
    """AUC, and precision/recall at 0.5, of a classifier on human-labeled documents (label 1 = good)."""
    texts, labels = read_labeled(Path(jsonl))
    return binary_metrics(labels, quality_scores(model_path, texts))


def _training_key(ctx: Any, inputs: dict[str, Any]) -> str:
    """Cache key part: the bytes of every training file and the training code, not just the paths."""
    files = [file_fingerprint(Path(p)) for p in [*inputs["positives"], *inputs["negatives"]]]
    code = code_version("tasks.quality", "tasks.langid", "storage.rows")
    return hash_objects(files, code, raise_on_failure=True)


_TRAIN_POLICY = CacheKeyFnPolicy(cache_key_fn=_training_key) + INPUTS + TASK_SOURCE
train_quality_task = task(name="train-quality", cache_policy=_TRAIN_POLICY, persist_result=True, retries=1)(
    train_quality_classifier
)
evaluate_labeled_task = task(name="evaluate-quality", cache_policy=NO_CACHE)(evaluate_labeled)
