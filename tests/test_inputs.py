"""Input discovery, kinds, grouping, and the ingest stage key's coverage of the code."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.inputs import discover, kind_of, plan_groups


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.PDF", "pdf"),
        ("x.warc.gz", "warc"),
        ("old.arc", "warc"),
        ("p.htm", "html"),
        ("b.jsonl.gz", "text"),
        ("r.md", "text"),
        ("seeds.urls", "urls"),
        ("data.gz", "other"),
        ("doc.docx", "other"),
    ],
)
def test_kind_of(name: str, kind: str) -> None:
    assert kind_of(Path(name)) == kind


def test_discover_walks_folders_expands_url_lists_and_fingerprints(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("bee")
    (tmp_path / "a.html").write_text("<p>a</p>")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.txt").write_text("hidden")
    (tmp_path / "seeds.urls").write_text(
        "# seeds\nhttps://a.example/\n\nhttps://b.example/x\nhttps://a.example/\n"
    )
    files, urls = discover([str(tmp_path), str(tmp_path / "a.html"), "https://c.example/"])
    assert [Path(f.path).name for f in files] == ["a.html", "b.txt"]  # no duplicates, no hidden files
    assert urls == ["https://a.example/", "https://b.example/x", "https://c.example/"]
    again, _ = discover([str(tmp_path)])
    assert again == files
    (tmp_path / "sub" / "b.txt").write_text("changed")
    changed, _ = discover([str(tmp_path)])
    assert changed[1].fingerprint != files[1].fingerprint
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover([str(tmp_path / "missing.pdf")])


def test_plan_groups_bounds_size_and_keeps_warcs_alone(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"p{i}.pdf").write_bytes(b"%PDF" + bytes(100 * i))
    (tmp_path / "a.warc.gz").write_bytes(b"x")
    (tmp_path / "b.warc").write_bytes(b"y")
    files, _ = discover([str(tmp_path)])
    groups = plan_groups(files, ["https://u.example/1", "https://u.example/2"], 2, 10_000, 1)
    assert [g.kind for g in groups] == ["pdf"] * (len(groups) - 4) + ["warc", "warc", "urls", "urls"]
    pdfs = [g for g in groups if g.kind == "pdf"]
    assert all(1 <= len(g.files) <= 2 for g in pdfs) and sum(len(g.files) for g in pdfs) == 5
    assert [f for g in pdfs for f in g.files] == [f for f in files if f.kind == "pdf"]  # order kept
    assert len({g.shard_name for g in groups}) == len(groups)
    # Keys are content addresses: the same inputs plan to the same shard names.
    assert [g.key for g in plan_groups(files, [], 2, 10_000, 1)] == [g.key for g in groups[:-2]]
    # The byte bound cuts too: 300 + 400 bytes do not fit in 500.
    assert all(
        sum(f.size for f in g.files) <= 500 or len(g.files) == 1 for g in plan_groups(files, [], 5, 500, 1)
    )


def test_adding_inputs_keeps_the_other_groups(tmp_path: Path) -> None:
    for i in range(400):
        (tmp_path / f"doc{i:04d}.txt").write_text(f"text {i}")
    files, _ = discover([str(tmp_path)])
    first = plan_groups(files, [], 16, 1 << 30, 1)
    assert max(len(g.files) for g in first) <= 16
    # 10% more files, spread among the old ones (their names sort between them).
    for i in range(0, 400, 10):
        (tmp_path / f"doc{i:04d}b.txt").write_text(f"new {i}")
    (tmp_path / "doc0005.txt").write_text("changed")
    more, _ = discover([str(tmp_path)])
    # With the earlier plan, every earlier group whose files are unchanged is kept whole ...
    after = plan_groups(more, [], 16, 1 << 30, 1, previous=first)
    changed = [g for g in after if g not in first]
    dissolved = [g for g in first if g not in after]
    assert len(dissolved) == 1 and "doc0005.txt" in {Path(f.path).name for f in dissolved[0].files}
    # ... and only the new files and the changed file's group-mates are planned anew.
    assert sum(len(g.files) for g in changed) == 40 + len(dissolved[0].files)
    assert sorted(f.path for g in after for f in g.files) == sorted(f.path for f in more)
    # Without it, boundaries depend on the inputs themselves, so one insertion moves at most a few groups.
    for i in (3, 200):
        (tmp_path / f"doc{i:04d}c.txt").write_text(f"one more {i}")
    most, _ = discover([str(tmp_path)])
    plain, plain_more = plan_groups(more, [], 16, 1 << 30, 1), plan_groups(most, [], 16, 1 << 30, 1)
    assert len({g.key for g in plain_more} - {g.key for g in plain}) <= 6
    urls = [f"https://u.example/{i}" for i in range(1000)]
    old_keys = {g.key for g in plan_groups([], urls, 1, 1, 50)}
    new_keys = {g.key for g in plan_groups([], [*urls[:500], "https://u.example/new", *urls[500:]], 1, 1, 50)}
    assert len(new_keys - old_keys) <= 3


@pytest.mark.parametrize(
    ("stage", "module", "owner"),
    [
        ("ingest", "tasks.ingest", "tasks.ingest"),
        ("curate", "tasks.curate", "tasks.curate"),
        ("dedup", "tasks.dedup", "tasks.dedup"),
        ("train", "model.train", "flows.train"),
    ],
)
def test_stage_code_version_covers_every_module_it_imports(stage: str, module: str, owner: str) -> None:
    # A module missing from CODE_MODULES could change what a stage writes without changing its key.
    code = (
        f"import sys, {module}; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('tasks', 'storage', 'model')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    modules = importlib.import_module(owner).CODE_MODULES
    not_writers = {"tasks", "storage", "model", "storage.refs", "storage.cache", "storage.layout"}
    assert set(out) - not_writers <= set(modules)
