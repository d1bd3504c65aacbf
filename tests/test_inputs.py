"""Input discovery, kinds, grouping, and the ingest stage key's coverage of the code."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.inputs import discover, kind_of, local_spec, plan_groups, portable_spec


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


def test_unreadable_entries_stay_in_the_plan_with_their_error(tmp_path: Path) -> None:
    # A FIFO would block a reader forever, a broken link has no bytes: both must end as drops, never
    # vanish from the plan and never be opened. A linked folder is read once, a link back to an
    # ancestor does not loop.
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "real" / "a.txt").write_text("alpha")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.txt").write_text("beta")
    (src / "linked").symlink_to(tmp_path / "elsewhere")
    (src / "real" / "loop").symlink_to(src)
    (src / "gone.pdf").symlink_to(tmp_path / "missing.pdf")
    os.mkfifo(src / "pipe.txt")
    (src / "bad.urls").symlink_to(tmp_path / "missing.urls")
    files, urls = discover([str(src)])
    by_name = {Path(f.path).name: f for f in files}
    assert sorted(by_name) == ["a.txt", "b.txt", "bad.urls", "gone.pdf", "pipe.txt"] and urls == []
    assert by_name["a.txt"].error is None and by_name["b.txt"].error is None
    assert by_name["b.txt"].path == str((tmp_path / "elsewhere" / "b.txt").resolve())
    assert by_name["gone.pdf"].error.startswith("broken link") and by_name["gone.pdf"].kind == "pdf"
    assert by_name["pipe.txt"].error.startswith("not a regular file") and by_name["pipe.txt"].size == 0
    assert by_name["bad.urls"].kind == "other" and by_name["bad.urls"].error
    assert len(plan_groups(files, urls, 32, 1 << 30, 500)) >= 1


def test_a_path_with_undecodable_bytes_travels_as_a_portable_spec(tmp_path: Path) -> None:
    folder = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"a%b\xff c"))
    os.mkdir(folder)
    (Path(folder) / "x.txt").write_text("text")
    spec = portable_spec(folder)
    assert spec.startswith("fsbytes:") and spec.encode("utf-8") and local_spec(spec) == folder
    assert portable_spec(str(tmp_path)) == str(tmp_path) == local_spec(str(tmp_path))
    (found,), _ = discover([spec])
    assert found.path == str(Path(folder, "x.txt").resolve())


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
