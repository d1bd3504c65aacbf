"""Storage URIs on real pyarrow (and fsspec) filesystems: fetched inputs, a mirrored run root, uploads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from conftest import write_doc_stage

from flows.curate import run_curate
from flows.ingest import run_ingest
from storage.layout import MANIFEST, find_stage_dirs, manifest_shards
from storage.remote import (
    fetch_input,
    fetch_inputs,
    filesystem,
    is_remote,
    mirror_dir,
    pull_dir,
    push_root,
    workspace,
)
from storage.schemas import DOCUMENT_SCHEMA, Document, new_document
from storage.shards import ShardError, read_shard
from tasks.ingest import IngestConfig
from tasks.scoring import CurateConfig


def _tree(root: Path) -> dict[str, bytes]:
    """Every non-hidden file under a folder, by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def _doc(n: int) -> Document:
    """A small document."""
    return new_document(f"document number {n} " * 20, source="text", uri=f"file:///d/{n}.txt")


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Mirrors of URI run roots go under this test's folder."""
    monkeypatch.setenv("CRUCIBLE_MIRROR", str(tmp_path / "mirror"))
    return tmp_path / "mirror"


def test_what_counts_as_a_storage_uri() -> None:
    assert all(map(is_remote, ["s3://b/k", "gs://b/k", "file:///tmp/x", "memory://x"]))
    assert not any(
        map(is_remote, ["https://example.org/a.html", "http://x", "builtin:python-docs", "/tmp/x"])
    )


def test_fetch_mirrors_a_prefix_and_refetches_only_changes(tmp_path: Path) -> None:
    src = tmp_path / "bucket"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha " * 100)
    (src / "sub" / "b.md").write_text("# beta\n\nbody\n")
    (src / ".hidden").write_text("never fetched")
    cache = tmp_path / "cache"
    local = fetch_input(src.as_uri(), cache)
    assert local == cache / "file" / str(src).lstrip("/")
    assert _tree(local) == _tree(src) and not (local / ".hidden").exists()
    inode = (local / "a.txt").stat().st_ino
    assert fetch_input(src.as_uri(), cache) == local and (local / "a.txt").stat().st_ino == inode
    # A changed file is fetched again; one removed at the source goes from the cache too.
    (src / "a.txt").write_text("changed")
    (src / "sub" / "b.md").unlink()
    fetch_input(src.as_uri(), cache)
    assert _tree(local) == {"a.txt": b"changed"}
    # A single file, local paths and web URLs passed through, a missing URI refused.
    one = fetch_inputs([(src / "a.txt").as_uri(), "/x/y", "https://example.org/"], cache)
    assert one == [str(local / "a.txt"), "/x/y", "https://example.org/"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fetch_input((tmp_path / "nothing").as_uri(), cache)


def test_fsspec_serves_schemes_pyarrow_lacks(tmp_path: Path) -> None:
    fs, path = filesystem("memory://crucible-test/in")
    assert isinstance(fs, pafs.PyFileSystem)
    with fs.open_output_stream(f"{path}/x.txt") as out:
        out.write(b"from memory")
    assert (fetch_input("memory://crucible-test/in", tmp_path) / "x.txt").read_bytes() == b"from memory"


def test_push_uploads_marker_last_and_repairs_interrupted_uploads(tmp_path: Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    stage = write_doc_stage(local / "curate" / "k1", [[_doc(i) for i in range(5)], [_doc(9)]])
    remote.mkdir()
    fs, base = filesystem(remote.as_uri())
    # An upload that fails part-way (a folder sits where the second shard goes) leaves no manifest.
    (remote / "curate" / "k1" / "shard-00001.parquet").mkdir(parents=True)
    with pytest.raises(OSError):
        push_root(fs, base, local)
    assert not (remote / "curate" / "k1" / MANIFEST).exists()
    (remote / "curate" / "k1" / "shard-00001.parquet").rmdir()
    assert push_root(fs, base, local) == ["curate/k1"]
    assert _tree(remote / "curate" / "k1") == _tree(stage)
    assert push_root(fs, base, local) == []
    # A lost manifest, or a truncated shard under a present manifest, is found and uploaded again.
    (remote / "curate" / "k1" / MANIFEST).unlink()
    assert push_root(fs, base, local) == ["curate/k1"]
    with open(remote / "curate" / "k1" / "shard-00000.parquet", "r+b") as f:
        f.truncate(100)
    assert push_root(fs, base, local) == ["curate/k1"]
    assert _tree(remote / "curate" / "k1") == _tree(stage)
    # Pulling gives the same files; a damaged remote stage is refused, not consumed.
    fresh = tmp_path / "fresh" / "curate" / "k1"
    assert pull_dir(fs, f"{base}/curate/k1", fresh, MANIFEST) and _tree(fresh) == _tree(stage)
    assert not pull_dir(fs, f"{base}/curate/k1", fresh, MANIFEST)
    with open(remote / "curate" / "k1" / "shard-00001.parquet", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ShardError, match="does not have"):
        pull_dir(fs, f"{base}/curate/k1", tmp_path / "other" / "curate" / "k1", MANIFEST)
    assert not (tmp_path / "other" / "curate" / "k1" / MANIFEST).exists()


def test_workspace_pulls_the_newest_stage_or_the_one_named(tmp_path: Path, mirror: Path) -> None:
    remote = tmp_path / "remote"
    # Newest by manifest time, not by name: the older stage sorts last.
    old = write_doc_stage(remote / "curate" / "b-older", [[_doc(1)]])
    new = write_doc_stage(remote / "curate" / "a-newer", [[_doc(2)]])
    os.utime(old / MANIFEST, (1e9, 1e9))
    with workspace(remote.as_uri(), newest=["dedup", "curate"]) as ws:
        assert ws.root == str(mirror_dir(remote.as_uri())) and ws.local("/x") == "/x"
        assert [d.name for d in find_stage_dirs(ws.root, "curate")] == ["a-newer"]
        assert _tree(Path(ws.root) / "curate" / "a-newer") == _tree(new)
        # A stage named by its URI is downloaded and mapped into the mirror; one outside the root refused.
        assert ws.local(f"{remote.as_uri()}/curate/b-older") == str(Path(ws.root) / "curate" / "b-older")
        assert _tree(Path(ws.root) / "curate" / "b-older") == _tree(old)
        with pytest.raises(ValueError, match="not under the run root"):
            ws.local((tmp_path / "elsewhere").as_uri())
    # A failed block uploads nothing: its outputs may be incomplete.
    with pytest.raises(RuntimeError), workspace(remote.as_uri()) as ws:
        write_doc_stage(Path(ws.root) / "curate" / "made", [[_doc(3)]])
        raise RuntimeError("stage failed")
    assert not (remote / "curate" / "made").exists()
    with workspace(remote.as_uri()):
        pass
    assert _tree(remote / "curate" / "made") == _tree(Path(ws.root) / "curate" / "made")


@pytest.fixture(scope="module")
def inputs(shared_data: Path) -> list[str]:
    """A few small real inputs: 18 Python tutorial pages and 20 CCNet documents."""
    return [
        str(shared_data / "html" / "python-3.11-docs" / "tutorial"),
        str(shared_data / "text" / "ccnet-samples-dolma"),
    ]


def test_ingest_from_a_file_uri(prefect_api: str, inputs: list[str], tmp_path: Path) -> None:
    by_path = run_ingest(inputs[1:], str(tmp_path / "a"), IngestConfig(), workers=1)
    by_uri = run_ingest([Path(inputs[1]).as_uri()], str(tmp_path / "b"), IngestConfig(), workers=1)
    assert by_uri["documents"] == by_path["documents"] == 20
    texts = [
        sorted(
            d["text"]
            for p in manifest_shards(Path(r["stage_dir"]))
            for d in read_shard(p, DOCUMENT_SCHEMA).to_pylist()
        )
        for r in (by_path, by_uri)
    ]
    assert texts[0] == texts[1]
    cached = tmp_path / "b" / "inputs" / "remote" / "file" / inputs[1].lstrip("/")
    assert sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in Path(inputs[1]).iterdir())


def _counts(summary: dict) -> dict:
    """A stage summary without its (machine-specific) folders."""
    return {k: v for k, v in summary.items() if not k.endswith("_dir")}


def _manifest_view(path: Path, root: Path) -> dict:
    """A manifest with its run root's path replaced and timings and memory peaks dropped (they differ by
    run)."""
    measured = ("seconds", "max_input_seconds", "peak_worker_rss_mb")
    manifest = json.loads(path.read_text().replace(str(root), "<root>"))
    for entry in [manifest, *manifest.get("shards", [])]:
        for key in measured:
            entry.pop(key, None)
    return manifest


def test_stages_on_a_file_run_root(
    prefect_api: str, inputs: list[str], tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    remote.mkdir()
    uri = remote.as_uri()
    run_ingest(inputs, str(local), IngestConfig(), workers=2)
    expect = run_curate(str(local), CurateConfig(), workers=2)
    ingest = run_ingest(inputs, uri, IngestConfig(), workers=2)
    curate = run_curate(uri, CurateConfig(), workers=2)
    assert _counts(curate) == _counts(expect)
    work = mirror_dir(uri)
    assert Path(curate["stage_dir"]).parent.parent == work and Path(ingest["stage_dir"]).is_relative_to(work)

    # The remote root holds every complete stage, each with its manifest, equal to the mirror and to the
    # local run (shards byte for byte; manifests up to the run root's path and timings).
    stages = ["curate/" + Path(curate["stage_dir"]).name, "ingest/" + Path(ingest["stage_dir"]).name]
    assert (
        sorted(f"{d.parent.name}/{d.name}" for d in remote.glob("*/*") if (d / MANIFEST).exists()) == stages
    )
    assert not (remote / "inputs").exists() and not (remote / "_prefect").exists()
    for stage in stages:
        there, mine, theirs = _tree(remote / stage), _tree(work / stage), _tree(local / stage)
        assert there == mine and there.keys() == theirs.keys()
        assert {k: v for k, v in there.items() if k.endswith(".parquet")} == {
            k: v for k, v in theirs.items() if k.endswith(".parquet")
        }
        assert _manifest_view(remote / stage / MANIFEST, work) == _manifest_view(
            local / stage / MANIFEST, local
        )

    # An interrupted upload (remote manifest gone, a remote shard truncated) is repaired by the next run.
    (remote / stages[0] / MANIFEST).unlink()
    shard = next((remote / stages[1]).glob("shard-*.parquet"))
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    run_curate(uri, CurateConfig(), workers=2)
    for stage in stages:
        assert _tree(remote / stage) == _tree(work / stage)

    # A machine with an empty mirror downloads the newest ingest stage first and curates the same.
    monkeypatch.setenv("CRUCIBLE_MIRROR", str(tmp_path / "other-machine"))
    again = run_curate(uri, CurateConfig(), workers=2)
    fresh = mirror_dir(uri)
    assert fresh != work and [d.name for d in find_stage_dirs(fresh, "ingest")] == [stages[1].split("/")[1]]
    assert _tree(fresh / stages[1]) == _tree(remote / stages[1]) and _counts(again) == _counts(expect)
