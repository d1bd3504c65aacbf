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
    kinds = [(g.kind, len(g.files) or len(g.urls)) for g in groups]
    assert kinds == [("pdf", 2), ("pdf", 2), ("pdf", 1), ("warc", 1), ("warc", 1), ("urls", 1), ("urls", 1)]
    assert len({g.shard_name for g in groups}) == len(groups)
    # Keys are content addresses: the same inputs plan to the same shard names.
    assert [g.key for g in plan_groups(files, [], 2, 10_000, 1)] == [g.key for g in groups[:5]]


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
