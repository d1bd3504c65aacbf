"""Seeded corpus of real text with planted near-duplicates, for MinHash benchmarks and dedup evaluation.

Paragraphs come from ../shared/data/text: Project Gutenberg books (header and license stripped), the
fortune files (en, de), tinyshakespeare and the CCNet samples. A document is 3-12 random paragraphs
joined by blank lines; about 10% of documents are planted copies of an earlier original, most with
realistic edits (re-wrapped lines, a changed header line, 1-5% of words replaced, a paragraph dropped),
a quarter of them exact.

    python benchmarks/dedup_corpus.py [--docs N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

PLANTED = 0.10
"""Share of documents that are copies of an earlier original."""
EXACT = 0.25
"""Share of the planted copies left unedited."""
PARAGRAPHS = (3, 12)
"""Inclusive range of paragraphs per original document."""
SOURCES = {"gutenberg": 0.6, "fortunes": 0.15, "shakespeare": 0.15, "ccnet": 0.1}
"""Chance that an original is drawn from each source; books weigh most so pages average ~350 words."""

_BLANK = re.compile(r"\n[ \t]*\n")
_START = re.compile(r"^\*\*\* ?START OF .*$", re.MULTILINE)
_END = re.compile(r"^\*\*\* ?END OF .*$", re.MULTILINE)
_FORTUNE_SEP = re.compile(r"^%[ \t]*$", re.MULTILINE)
_TOKENS = re.compile(r"(\s+)")
_HEADERS = (
    "Posted on {date}",
    "Last updated: {date}",
    "Home | News | Archive | Contact",
    "Page {n} of {m}",
    "Skip to main content",
    "{title} - Read online for free",
    "{title}",
    "Share this article: Facebook Twitter Email",
)


def _paragraphs(text: str) -> list[str]:
    """Non-empty blank-line separated paragraphs of a text, with Windows line ends made Unix."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip("\n") for p in _BLANK.split(text) if p.strip()]


def _gutenberg(folder: Path) -> Iterator[str]:
    """Paragraphs of each book between its START and END markers; files without markers are skipped."""
    for path in sorted(folder.glob("*.txt")):
        # The file name says which files are Latin-1; the others are UTF-8, some with a BOM.
        text = path.read_text(encoding="latin-1" if ".latin1." in path.name else "utf-8-sig")
        start, end = _START.search(text), _END.search(text)
        if start is None or end is None:  # the license file, not a book
            continue
        yield from _paragraphs(text[start.end() : end.start()])


def _fortunes(folder: Path) -> Iterator[str]:
    """Paragraphs of every fortune cookie: quotes are separated by lines holding just '%'."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        for quote in _FORTUNE_SEP.split(path.read_text(encoding="utf-8", errors="replace")):
            yield from _paragraphs(quote)


def _ccnet(folder: Path) -> Iterator[str]:
    """Lines of the CCNet sample pages: their paragraphs are single lines, not blank-line separated."""
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            yield from (p for p in json.loads(line)["text"].splitlines() if p.strip())


def load_paragraphs(data_dir: Path) -> dict[str, list[str]]:
    """Every paragraph of each real text source, in a stable order."""
    text = data_dir / "text"
    if not text.is_dir():
        raise FileNotFoundError(f"{text} not found")
    return {
        "gutenberg": list(_gutenberg(text / "gutenberg")),
        "fortunes": list(_fortunes(text / "fortunes")),
        "shakespeare": _paragraphs((text / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")),
        "ccnet": list(_ccnet(text / "ccnet-samples-dolma")),
    }


def _rewrap(doc: str, rng: random.Random) -> str:
    """Every paragraph re-filled at one random line width, as another renderer of the page would."""
    width = rng.randint(40, 120)
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in doc.split("\n\n"))


def _header(doc: str, rng: random.Random) -> str:
    """A boilerplate header line prepended, or put in place of the first line."""
    words = doc.split()[: rng.randint(2, 6)]
    line = rng.choice(_HEADERS).format(
        date=f"{rng.randint(1998, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        n=rng.randint(1, 9),
        m=rng.randint(10, 20),
        title=" ".join(words).title(),
    )
    if rng.random() < 0.5:
        return f"{line}\n\n{doc}"
    return line + doc[doc.find("\n") :] if "\n" in doc else line


def _replace_words(doc: str, rng: random.Random, vocabulary: list[str]) -> str:
    """1-5% of the words replaced by random corpus words, whitespace kept as it was."""
    tokens = _TOKENS.split(doc)
    words = [i for i, t in enumerate(tokens) if t and not t.isspace()]
    for i in rng.sample(words, max(1, round(len(words) * rng.uniform(0.01, 0.05)))):
        tokens[i] = rng.choice(vocabulary)
    return "".join(tokens)


def _drop_paragraph(doc: str, rng: random.Random) -> str:
    """One random paragraph removed (documents of fewer than five are left whole)."""
    paragraphs = doc.split("\n\n")
    # From a shorter page, one paragraph is a third of the text: the copy would no longer be a near-duplicate.
    if len(paragraphs) >= 5:
        del paragraphs[rng.randrange(len(paragraphs))]
    return "\n\n".join(paragraphs)


def near_duplicate(doc: str, rng: random.Random, vocabulary: list[str]) -> str:
    """An edited copy of a document: each edit applied with probability 1/2, at least one of them."""
    edits = [_rewrap, _header, _replace_words, _drop_paragraph]
    chosen = [e for e in edits if rng.random() < 0.5] or [rng.choice(edits)]
    # Word replacement before re-wrapping: a replaced word must not land on a line break it made.
    for edit in sorted(chosen, key=edits.index, reverse=True):
        doc = edit(doc, rng, vocabulary) if edit is _replace_words else edit(doc, rng)
    return doc


def build_corpus(
    n_docs: int, seed: int = 0, data_dir: Path = Path("../shared/data")
) -> tuple[list[str], list[int]]:
    """Texts and, for each, the index of the original it was planted from (-1 for originals)."""
    sources = load_paragraphs(data_dir)
    names, weights = list(SOURCES), list(SOURCES.values())
    rng = random.Random(seed)
    vocabulary = [w for p in rng.sample(sources["gutenberg"], 2000) for w in p.split()]
    texts: list[str] = []
    origins: list[int] = []
    originals: list[int] = []
    for i in range(n_docs):
        if originals and rng.random() < PLANTED:
            source = rng.choice(originals)
            exact = rng.random() < EXACT
            texts.append(texts[source] if exact else near_duplicate(texts[source], rng, vocabulary))
            origins.append(source)
            continue
        # One source per page: a web page does not mix a novel with fortune cookies.
        paragraphs = sources[rng.choices(names, weights)[0]]
        texts.append("\n\n".join(rng.choices(paragraphs, k=rng.randint(*PARAGRAPHS))))
        origins.append(-1)
        originals.append(i)
    return texts, origins


def corpus_stats(texts: list[str], origins: list[int]) -> dict[str, float]:
    """Document count, mean words per document and the planted (near-)duplicates."""
    planted = [i for i, o in enumerate(origins) if o >= 0]
    return {
        "docs": len(texts),
        "mean_words": sum(len(t.split()) for t in texts) / max(1, len(texts)),
        "planted": len(planted),
        "exact_copies": sum(texts[i] == texts[origins[i]] for i in planted),
    }


def main() -> None:
    """Build a corpus and print its statistics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data-dir", type=Path, default=default_data)
    args = parser.parse_args()
    print(json.dumps(corpus_stats(*build_corpus(args.docs, args.seed, args.data_dir))))


if __name__ == "__main__":
    main()
