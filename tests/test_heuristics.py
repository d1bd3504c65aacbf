"""Heuristic filters: each rule's signal and reason, decide() order, re-thresholding, bad input, real data."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from storage.schemas import Document
from tasks.heur_gopher import _ngram_stats_numpy, _ngram_stats_python
from tasks.heur_text import _TOKEN, count_sentences, split_words
from tasks.heuristics import REASONS, FilterConfig, decide, score_text, signal_names
from tasks.text import TextConfig, extract_text_file
from tasks.web import HtmlConfig, extract_html_file

PROSE = (
    "The committee met on Tuesday to review the budget. Members agreed that the library should have "
    "longer opening hours, and that funds for new books must be found. A vote will be held next month "
    "after the public has been consulted. The chair thanked everyone for their patience with the "
    "process. Several residents spoke in favour of the plan, and one asked whether the reading room "
    "could stay open on Sundays. The meeting closed at nine in the evening."
)
PROSE_2 = (
    "Rain fell across the valley for most of the week, and farmers worried about the harvest. By Friday "
    "the river had risen above its banks near the old mill. Volunteers filled sandbags while children "
    "watched from the bridge. When the sun finally returned, the fields were green again and the roads "
    "were open to traffic."
)


def only(name: str, **settings: object) -> FilterConfig:
    """A config with one filter on (and the sanity checks), others off."""
    off = {
        f: {"enabled": False} for f in ("gopher_repetition", "gopher_quality", "c4", "fineweb", "badwords")
    }
    return FilterConfig.model_validate({**off, name: {"enabled": True, **settings}})


def reason(text: str, cfg: FilterConfig) -> str | None:
    """decide() on freshly scored text."""
    return decide(score_text(text, cfg)[1], cfg)


# --------------------------------------------------------------------------------- word splitter


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        (
            "Hello, world... It's great -- isn't it?!",
            "Hello | , | world | ... | It | 's | great | -- | is | n't | it | ? | !",
        ),
        (
            "Mr. Smith paid $100.50 (approx.) on 3/4/2020.",
            "Mr. | Smith | paid | $ | 100.50 | ( | approx | . | ) | on | 3/4/2020 | .",
        ),
        (
            "see /usr/bin/python or --help, e.g. U.S. law, I cannot",
            "see | /usr | / | bin | / | python | or | --help | , | e.g. | U.S. | law | , | I | can | not",
        ),
        (
            "print(x) state-of-the-art end.Next www.example.com/a?b=1.",
            "print(x | ) | state | - | of | - | the | - | art | end | . | Next | www.example.com/a?b=1 | .",
        ),
        ("_italic_ foo_bar Python?¶ |---|", "_ | italic | _ | foo_bar | Python?¶ | |---|"),
        ("你好，世界。 नमस्ते दुनिया।", "你好，世界 | 。 | नमस्ते | दुनिया | ।"),
    ],
)
def test_split_words_follows_spacy_rules(text: str, tokens: str) -> None:
    assert split_words(text) == tokens.split(" | ")


def test_chunked_split_equals_whole_text_regex() -> None:
    text = PROSE + " (see: www.x.org/p?q=1) -- it's 3.5% of $1,000; a/b x=y 1+1 «quoted» don't… O'Neil."
    assert split_words(text) == _TOKEN.findall(text)


def test_split_words_bounds_huge_runs() -> None:
    tokens = split_words("a(" * 60_000)  # one 120,000-character chunk, cut in 10,000-character pieces
    assert "".join(tokens) == "a(" * 60_000


def test_count_sentences_uses_sentencizer_rule() -> None:
    assert count_sentences(split_words("One. Two! Three? Four")) == 4
    assert count_sentences(split_words('He said "yes." Then left.')) == 2
    assert count_sentences(split_words("Mr. Smith met Dr. Who at 3.14 p.m. today")) == 1


# --------------------------------------------------------------------------------- Gopher quality


def test_gopher_quality_signals_are_exact() -> None:
    text = "The cat and the dog, with a hat.\n- item one\n# tag ..."
    _, s = score_text(text, only("gopher_quality"))
    # tokens: The cat and the dog , with a hat . - item one # tag ... -> 16 tokens, 11 words
    assert s["gopher_quality.word_count"] == 11
    assert s["gopher_quality.mean_word_length"] == pytest.approx(33 / 11)
    assert s["gopher_quality.hash_word_ratio"] == pytest.approx(1 / 16)
    assert s["gopher_quality.ellipsis_word_ratio"] == pytest.approx(1 / 16)
    assert s["gopher_quality.bullet_lines_ratio"] == pytest.approx(1 / 3)
    assert s["gopher_quality.ellipsis_lines_ratio"] == pytest.approx(1 / 3)
    assert s["gopher_quality.alpha_words_ratio"] == pytest.approx(11 / 16)
    assert s["gopher_quality.stop_words"] == 3  # the, and, with ("The" does not count)


BULLETS = "\n".join(f"- item number {i} with the list and more words" for i in range(20))
TRAILING_ELLIPSES = "\n".join(f"the narrative went on and nobody stopped listening {i}..." for i in range(9))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the cat and the dog", "gopher_short_doc"),
        (" ".join(["a"] * 60 + ["the", "and"]), "gopher_short_words"),
        (" ".join(["internationalization"] * 40 + ["the", "and"] * 10), "gopher_long_words"),
        (PROSE + " #x" * 20, "gopher_too_many_hashes"),
        (PROSE + " wait..." * 20, "gopher_too_many_ellipsis"),
        (BULLETS, "gopher_too_many_bullets"),
        (TRAILING_ELLIPSES, "gopher_too_many_end_ellipsis"),
        (PROSE + " 1 2 3 4 5 6 7 8 9 10" * 4, "gopher_few_alpha_words"),
        (" ".join(["cat dog bird fish"] * 20), "gopher_few_stop_words"),
        (PROSE, None),
    ],
)  # fmt: skip
def test_gopher_quality_reasons(text: str, expected: str | None) -> None:
    assert reason(text, only("gopher_quality")) == expected


def test_gopher_long_doc_and_disabled_rule() -> None:
    text = " ".join(["the", "reading", "and", "writing"] * 30)
    assert reason(text, only("gopher_quality", max_doc_words=100)) == "gopher_long_doc"
    assert reason(text, only("gopher_quality", max_doc_words=None)) is None


# --------------------------------------------------------------------------------- Gopher repetition


def test_gopher_repetition_line_and_paragraph_fractions() -> None:
    text = "alpha beta\n\nalpha beta\n\ngamma delta"
    _, s = score_text(text, only("gopher_repetition"))
    assert s["gopher_repetition.dup_para_frac"] == pytest.approx(1 / 3)
    assert s["gopher_repetition.dup_para_char_frac"] == pytest.approx(10 / len(text))
    assert s["gopher_repetition.dup_line_frac"] == pytest.approx(1 / 3)
    assert reason(text, only("gopher_repetition")) == "gopher_dup_para_frac"
    cfg = only("gopher_repetition", max_dup_para_frac=None)
    assert decide(score_text(text, cfg)[1], cfg) == "gopher_dup_para_char_frac"


def test_gopher_ngram_fractions_by_hand() -> None:
    text = "a b c a b c a b x"
    _, s = score_text(text, only("gopher_repetition"))
    assert s["gopher_repetition.top_2_gram_frac"] == pytest.approx(9 / 17)  # "a b" (3 chars) x3
    assert s["gopher_repetition.top_3_gram_frac"] == pytest.approx(10 / 17)  # "a b c" (5 chars) x2
    assert s["gopher_repetition.dup_5_gram_frac"] == pytest.approx(5 / 17)  # "abcab" again at token 3
    assert s["gopher_repetition.dup_6_gram_frac"] == 0.0
    text = "one two three four five six one two three four five six"
    _, s = score_text(text, only("gopher_repetition"))
    # repeated 5-gram "one two three four five" then skip 5: 19 chars of "onetwothreefourfive"
    assert s["gopher_repetition.dup_5_gram_frac"] == pytest.approx(19 / len(text))
    assert s["gopher_repetition.dup_6_gram_frac"] == pytest.approx(22 / len(text))


def test_ngram_python_and_numpy_paths_agree() -> None:
    rng = random.Random(7)
    for vocab in (3, 20, 500):
        words = [f"w{rng.randrange(vocab)}" for _ in range(rng.randrange(1, 400))]
        assert _ngram_stats_python(words) == _ngram_stats_numpy(words)
    words = split_words(PROSE * 3)
    assert _ngram_stats_python(words) == _ngram_stats_numpy(words)
    assert (
        _ngram_stats_python([])
        == _ngram_stats_numpy([])
        == ({2: 0, 3: 0, 4: 0}, dict.fromkeys(range(5, 11), 0))
    )


# --------------------------------------------------------------------------------- C4


def test_c4_line_cleaning_and_counts() -> None:
    text = "\n".join(
        [
            "Menu",  # no terminal punctuation
            "Hi there.",  # too few words
            "Please enable JavaScript to view the comments.",
            "This site uses cookies to improve your experience.",
            "The river rose [1] by two metres overnight.",
            "Residents were moved to the school hall.",
        ]
    )
    cleaned, s = score_text(text, only("c4", min_num_sentences=None))
    assert cleaned == "The river rose  by two metres overnight.\nResidents were moved to the school hall."
    assert s["c4.lines"] == 6
    assert s["c4.lines_removed"] == 4
    assert (s["c4.lines_no_terminal_punct"], s["c4.lines_too_few_words"]) == (1, 1)
    assert (s["c4.lines_javascript"], s["c4.lines_policy"]) == (1, 1)
    assert s["c4.sentences"] == 2
    assert reason(text, only("c4")) == "c4_too_few_sentences"
    assert reason(text, only("c4", min_num_sentences=2)) is None


def test_c4_document_rules() -> None:
    body = PROSE.replace(". ", ".\n")
    assert reason(body, only("c4")) is None
    assert reason(body + "\nLorem ipsum dolor sit amet.", only("c4")) == "c4_lorem_ipsum"
    assert reason(body + "\nUse {name} in the template.", only("c4")) == "c4_curly_bracket"
    # "{" in a line that a line rule removes first does not count, as in C4/datatrove
    assert reason(body + "\nvar x = {a: 1}", only("c4")) is None
    assert reason(body + "\nUse {name} in the template.", only("c4", filter_curly_bracket=False)) is None


# --------------------------------------------------------------------------------- FineWeb


def test_fineweb_signals_and_reasons() -> None:
    text = "Short line\nAnother short one\nThis line is long enough to count as a long line.\nShort line"
    _, s = score_text(text, only("fineweb"))
    assert s["fineweb.lines"] == 4
    assert s["fineweb.line_punct_ratio"] == pytest.approx(1 / 4)
    assert s["fineweb.short_line_ratio"] == pytest.approx(3 / 4)
    assert s["fineweb.char_dup_ratio"] == pytest.approx(10 / (len(text) - 3))
    assert s["fineweb.newline_ratio"] == pytest.approx(3 / 19)  # 19 tokens with the "."
    assert reason(text, only("fineweb")) == "fineweb_short_lines"
    assert reason(text, only("fineweb", max_short_line_ratio=None)) == "fineweb_char_dup"
    assert reason("\n\n  \n", only("fineweb")) == "doc_empty"
    assert (
        decide(score_text("\n\n  \n", only("fineweb"))[1] | {"sanity.empty": 0.0}, only("fineweb"))
        == "fineweb_empty"
    )
    assert (
        reason("no punctuation here\n" * 1 + "x" * 40, only("fineweb", line_punct_exclude_zero=True)) is None
    )


def test_fineweb_runs_on_c4_cleaned_text() -> None:
    text = PROSE.replace(". ", ".\n") + "\nHome\nAbout\nContact"
    cfg = FilterConfig()
    cleaned, s = score_text(text, cfg)
    assert "Home" not in cleaned
    assert s["fineweb.lines"] == len(cleaned.split("\n"))


# --------------------------------------------------------------------------------- bad words


def test_badwords_fraction_from_a_list_per_language(tmp_path: Path) -> None:
    (tmp_path / "xx.txt").write_text("# test list\nzonk\nbig blunder\n", encoding="utf-8")
    (tmp_path / "ja.json").write_text(json.dumps({"words": ["ばか"]}), encoding="utf-8")
    lists = {"xx": str(tmp_path / "xx.txt"), "ja": str(tmp_path / "ja.json")}
    cfg = only("badwords", word_lists=lists, use_package_lists=False, max_fraction=0.1)
    text = "Zonk! That was a BIG blunder, said the zonk."
    _, s = score_text(text, cfg, lang="xx")
    # words: Zonk That was a BIG blunder said the zonk -> 33 letters; matched Zonk, BIG blunder, zonk: 18
    assert (s["badwords.has_list"], s["badwords.matches"]) == (1.0, 3.0)
    assert s["badwords.fraction"] == pytest.approx(18 / 33)
    assert decide(s, cfg) == "badwords"
    _, s = score_text("これはばかげたばかです", cfg, lang="ja")  # matched anywhere: no spaces in Japanese
    assert s["badwords.matches"] == 2
    _, s = score_text(text, cfg, lang="yy")
    assert s["badwords.has_list"] == 0.0
    assert decide(s, cfg) is None


def test_badwords_packaged_english_list() -> None:
    pytest.importorskip("glin_profanity", reason="glin-profanity not installed: no packaged word lists")
    cfg = only("badwords")
    _, s = score_text("What the fuck is this shit, said the man.", cfg)
    assert s["badwords.has_list"] == 1.0
    assert s["badwords.matches"] == 2
    assert decide(s, cfg) == "badwords"
    assert reason(PROSE, cfg) is None


# --------------------------------------------------------------------------------- decide and config


def test_reasons_are_unique_and_in_pipeline_order() -> None:
    assert len(set(REASONS)) == len(REASONS)
    firsts = [
        next(i for i, r in enumerate(REASONS) if r.startswith(p))
        for p in ("doc_", "gopher_dup", "gopher_short", "c4_", "fineweb_", "badwords")
    ]
    assert firsts == sorted(firsts)


def test_decide_reports_first_failure_and_rethresholds_without_rescoring() -> None:
    text = "\n".join(["same line here"] * 10)
    cfg = FilterConfig()
    _, s = score_text(text, cfg)
    assert decide(s, cfg) == "gopher_dup_line_frac"  # repetition is checked before quality
    relaxed = FilterConfig.model_validate({"gopher_repetition": {"enabled": False}})
    assert decide(s, relaxed) == "gopher_short_doc"  # same stored signals, new config
    assert all(isinstance(v, float) for v in s.values())
    assert set(s) == set(signal_names())


def test_decide_names_a_missing_signal() -> None:
    _, s = score_text(PROSE, only("c4"))
    with pytest.raises(KeyError, match=r"gopher_repetition.dup_para_frac.*filters.gopher_repetition"):
        decide(s, FilterConfig())


def test_config_is_frozen_documented_and_splits_thresholds_from_scoring() -> None:
    cfg = FilterConfig()
    with pytest.raises(ValidationError):
        FilterConfig.model_validate({"c4": {"min_num_sentence": 3}})
    with pytest.raises(ValidationError):
        cfg.c4.min_num_sentences = 3  # type: ignore[misc]
    for section in type(cfg).model_fields:
        sub = type(getattr(cfg, section))
        for name, field in sub.model_fields.items():
            assert field.description, f"{section}.{name} has no attribute docstring"
    view = cfg.scoring_view()
    assert "min_num_sentences" not in view["c4"] and view["c4"]["min_words_per_line"] == 3
    changed = FilterConfig.model_validate(
        {"c4": {"min_num_sentences": 2}, "fineweb": {"max_newline_ratio": 1}}
    )
    assert changed.scoring_view() == view
    assert FilterConfig.model_validate({"c4": {"min_words_per_line": 5}}).scoring_view() != view


# --------------------------------------------------------------------------------- bad input


def test_empty_and_binary_text_get_reasons() -> None:
    cfg = FilterConfig()
    for text in ("", "   \n\t "):
        _, s = score_text(text, cfg)
        assert decide(s, cfg) == "doc_empty"
    junk = bytes(range(256)).decode("latin-1") * 50
    assert reason(junk, cfg) == "doc_binary"
    assert reason(PROSE + "\x00\x01\x02" * 200, cfg) == "doc_binary"


def test_mixed_encodings_do_not_crash() -> None:
    cfg = FilterConfig()
    text = PROSE + " Ã©tÃ© cafÃ© naïve Straße 中文 \udcff\udce9 €uro \ufeff " + PROSE_2
    _, s = score_text(text, cfg)
    assert decide(s, cfg) is None  # a few mojibake characters are no reason to drop prose
    assert s["sanity.control_frac"] == pytest.approx(2 / len(text))


@pytest.mark.slow
def test_ten_megabyte_single_line_documents() -> None:
    cfg = FilterConfig()
    assert reason("word " * 2_000_000, cfg) == "gopher_top_2_gram"
    assert reason("a" * 10_000_000, cfg) == "gopher_short_doc"
    assert reason("x(" * 5_000_000, cfg) == "gopher_top_2_gram"


# --------------------------------------------------------------------------------- real documents


def test_real_junk_file_is_dropped(shared_data: Path) -> None:
    path = next((shared_data / "text" / "quality-negatives").glob("*.txt"))
    (doc,) = [d for d in extract_text_file(path, TextConfig()) if isinstance(d, Document)]
    cfg = FilterConfig()
    _, s = score_text(doc.text, cfg)
    assert decide(s, cfg) == "gopher_top_4_gram"  # as datatrove: "-rw-rw-r-- 1 1005 100" on every line
    assert s["gopher_quality.bullet_lines_ratio"] > 0.9


def test_real_book_and_pages(shared_data: Path) -> None:
    cfg = FilterConfig()
    book = shared_data / "text" / "gutenberg" / "pg84-frankenstein.en.utf8.txt"
    (doc,) = list(extract_text_file(book, TextConfig()))
    assert isinstance(doc, Document)
    _, s = score_text(doc.text, cfg)
    assert decide(s, cfg) is None
    assert s["gopher_quality.word_count"] > 70_000 and s["gopher_quality.stop_words"] == 8
    page = shared_data / "html" / "postgresql-15-docs" / "tutorial-join.html"
    (doc,) = extract_html_file(page, HtmlConfig())
    assert isinstance(doc, Document)
    _, s = score_text(doc.text, cfg)
    assert decide(s, cfg) == "gopher_few_alpha_words"  # SQL output tables: as datatrove
    assert s["gopher_quality.alpha_words_ratio"] < 0.8 < s["gopher_quality.word_count"]


def test_real_fortunes_are_short(shared_data: Path) -> None:
    text = (shared_data / "text" / "fortunes" / "en" / "science").read_text(encoding="utf-8")
    quotes = [q for q in text.split("\n%\n") if q.strip()][:50]
    cfg = FilterConfig()
    reasons = Counter(reason(q, cfg) for q in quotes)
    # Short quotes fail on length, or on Gopher's top n-gram share (a single n-gram is a large share of a
    # short text); the two kept are long stories.
    assert reasons["gopher_short_doc"] >= 10 and reasons["gopher_top_3_gram"] >= 10
    kept = [q for q in quotes if reason(q, cfg) is None]
    assert len(kept) == 2 and all(len(q) > 1000 for q in kept)
