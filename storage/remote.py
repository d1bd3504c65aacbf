"""Storage URIs (s3://, gs://, file://, any fsspec protocol) behind local paths.

The rest of the code only ever sees local paths. Remote inputs are downloaded into a cache under the run
root before ingest. A run root that is a URI is worked in a local mirror: the upstream stages a stage reads
are downloaded first, and every complete stage folder is uploaded afterwards with its completion marker
(`_manifest.json`; `index.json` for the dedup index) uploaded last, so a reader that trusts only folders
with a marker never trusts a half-uploaded one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from storage.layout import MANIFEST, short_hash
from storage.shards import ShardError, atomic_write

SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# http(s) inputs are web pages to fetch (tasks/fetch.py), not storage.
WEB_SCHEMES = frozenset({"http", "https"})
# Top-level folders whose completion marker is not the stage manifest.
MARKERS = {"dedup-index": "index.json"}
# Folders under a run root that are never uploaded: downloaded inputs and Prefect's local result store.
LOCAL_ONLY = frozenset({"inputs", "_prefect"})
CHUNK = 8 << 20


def is_remote(path: str) -> bool:
    """Whether `path` is a storage URI rather than a local path or an http(s) page to fetch."""
    match = SCHEME_RE.match(path)
    return bool(match) and match.group(1).lower() not in WEB_SCHEMES


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a URI and the path inside it; fsspec serves schemes pyarrow lacks."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid:
        # Only for an unrecognised scheme: pyarrow's own S3/GCS/Azure clients are faster and retry.
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _join(base: str, rel: str) -> str:
    """A path inside a filesystem, always `/`-separated."""
    return f"{base.rstrip('/')}/{rel}" if rel else base


def _safe_rel(rel: str) -> str:
    """Refuse object keys that would land outside the local folder they are downloaded into."""
    if rel.startswith("/") or ".." in rel.split("/"):
        raise ShardError(f"refusing remote name {rel!r}: it would leave its folder")
    return rel


def list_files(fs: pafs.FileSystem, base: str) -> dict[str, pafs.FileInfo]:
    """Files under a remote folder by relative path, hidden names skipped; empty when it does not exist."""
    selector = pafs.FileSelector(base.rstrip("/"), recursive=True, allow_not_found=True)
    prefix = len(base.rstrip("/")) + 1
    found = {}
    for info in fs.get_file_info(selector):
        rel = info.path[prefix:]
        if info.type == pafs.FileType.File and not any(p.startswith(".") for p in rel.split("/")):
            found[_safe_rel(rel)] = info
    return found


def _local_files(directory: Path) -> dict[str, Path]:
    """Files under a local folder by `/`-separated relative path, hidden names (temp files, locks) skipped."""
    return {
        p.relative_to(directory).as_posix(): p
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    }


def _fresh(local: Path, info: pafs.FileInfo) -> bool:
    """Whether a downloaded copy still matches the remote file (same size and modification time)."""
    if not local.is_file() or info.mtime_ns is None:
        return False
    stat = local.stat()
    return stat.st_size == info.size and stat.st_mtime_ns == info.mtime_ns


def download(fs: pafs.FileSystem, info: pafs.FileInfo, local: Path) -> None:
    """Copy one remote file to `local` atomically, stamped with the remote modification time."""

    def write(tmp: Path) -> None:
        with fs.open_input_stream(info.path) as src, open(tmp, "wb") as dst:
            while block := src.read(CHUNK):
                dst.write(block)
        if tmp.stat().st_size != info.size:
            raise ShardError(f"{info.path}: got {tmp.stat().st_size} bytes, the listing said {info.size}")
        if info.mtime_ns is not None:
            # The stamp is how a later fetch knows the copy is current, and keeps newest-manifest order.
            os.utime(tmp, ns=(info.mtime_ns, info.mtime_ns))

    atomic_write(local, write)


def upload(fs: pafs.FileSystem, src: Path, dest: str) -> None:
    """Copy one local file to `dest` so that it appears whole or not at all."""
    # A temp name and a rename on local filesystems (atomic and cheap there); one PUT on object stores,
    # where an object appears only once its upload completes.
    local_fs = fs.type_name == "local"
    target = dest
    if local_fs:
        parent, name = dest.rsplit("/", 1)
        fs.create_dir(parent, recursive=True)
        target = f"{parent}/.{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    with open(src, "rb") as f, fs.open_output_stream(target) as out:
        while block := f.read(CHUNK):
            out.write(block)
    if target != dest:
        fs.move(target, dest)


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    """A small remote file's bytes."""
    with fs.open_input_stream(path) as f:
        return f.read()


def fetch_input(uri: str, cache: Path) -> Path:
    """Download a remote file, or every file under a remote folder, into `cache`; return the local path.

    The local layout mirrors the remote one (`<cache>/<scheme>/<bucket>/<key>`), so a file keeps its local
    path, and with it its document ids and shard names, across runs; it is re-downloaded only when its size
    or modification time changed, and local files the remote folder no longer has are removed.
    """
    fs, base = filesystem(uri)
    local = cache / SCHEME_RE.match(uri).group(1).lower() / _safe_rel(base.strip("/"))
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        if not _fresh(local, info):
            download(fs, info, local)
        return local
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"input {uri!r} does not exist")
    remote = list_files(fs, base)
    for rel, item in remote.items():
        if not _fresh(local / rel, item):
            download(fs, item, local / rel)
    for rel, path in _local_files(local).items() if local.is_dir() else []:
        if rel not in remote:
            path.unlink()
    return local


def fetch_inputs(specs: Iterable[str], cache: Path) -> list[str]:
    """Input specs with every storage URI replaced by its local copy under `cache`; others unchanged."""
    return [str(fetch_input(s, cache)) if is_remote(s) else s for s in specs]


def _marker(top: str) -> str:
    """The file whose presence marks a folder under `top` complete."""
    return MARKERS.get(top, MANIFEST)


def complete_dirs(local_root: Path) -> list[str]:
    """`<stage>/<key>` folders of a local run root that hold their completion marker."""
    found = []
    for top in sorted(p for p in local_root.iterdir() if p.is_dir()):
        if top.name in LOCAL_ONLY or top.name.startswith("."):
            continue
        found += [f"{top.name}/{d.name}" for d in sorted(top.iterdir()) if (d / _marker(top.name)).is_file()]
    return found


def push_dir(fs: pafs.FileSystem, local: Path, remote: str, marker: str) -> bool:
    """Upload a complete local folder unless the remote copy matches it, the marker last; True if it did.

    A remote copy matches when its marker has the same bytes and every file has the local size and is not
    older than the local one: a truncated or missing file, or a missing marker, is uploaded again.
    """
    files = _local_files(local)
    there = list_files(fs, remote)

    def current(rel: str) -> bool:
        info = there.get(rel)
        stat = files[rel].stat()
        # Compared in whole seconds: object stores keep upload times to the second.
        newer = (info.mtime_ns or 0) // 10**9 >= stat.st_mtime_ns // 10**9 if info else False
        return info is not None and info.size == stat.st_size and newer

    stale = [rel for rel in files if rel != marker and not current(rel)]
    body = files[marker].read_bytes()
    if not stale and marker in there and _read(fs, there[marker].path) == body:
        return False
    if marker in there:
        # Readers stop trusting the remote folder while it changes.
        fs.delete_file(there[marker].path)
    for rel in stale:
        upload(fs, files[rel], _join(remote, rel))
    upload(fs, files[marker], _join(remote, marker))
    return True


def push_root(fs: pafs.FileSystem, base: str, local_root: Path) -> list[str]:
    """Upload every complete stage folder of a local run root that the remote root lacks or has damaged."""
    return [
        rel
        for rel in complete_dirs(local_root)
        if push_dir(fs, local_root / rel, _join(base, rel), _marker(rel.split("/")[0]))
    ]


def pull_dir(fs: pafs.FileSystem, remote: str, local: Path, marker: str) -> bool:
    """Download a complete remote folder unless the local copy matches, the marker last; True if it did."""
    there = list_files(fs, remote)
    if marker not in there:
        raise ShardError(f"{remote} has no {marker}: the remote stage is not complete")
    body = _read(fs, there[marker].path)
    if (local / marker).is_file() and (local / marker).read_bytes() == body:
        return False  # the same stage, complete here already (a local marker is written last too)
    # A local reader must not trust the folder while its files change.
    (local / marker).unlink(missing_ok=True)
    stale = [rel for rel in there if rel != marker and not _fresh(local / rel, there[rel])]
    for rel in stale:
        download(fs, there[rel], local / rel)
    _check_sizes(local, json.loads(body) if marker == MANIFEST else {})
    download(fs, there[marker], local / marker)
    return True


def _check_sizes(local: Path, manifest: dict) -> None:
    """Refuse a downloaded stage whose shards do not have the sizes its manifest records."""
    for entry in manifest.get("shards", []):
        path = local / entry["path"]
        if "bytes" in entry and (not path.is_file() or path.stat().st_size != entry["bytes"]):
            raise ShardError(f"remote stage {local}: {entry['path']} does not have {entry['bytes']} bytes")


def _complete_keys(fs: pafs.FileSystem, base: str, stage: str) -> dict[str, pafs.FileInfo]:
    """The remote `<stage>/<key>` folders that hold their marker, with the marker's file info."""
    marker = _marker(stage)
    return {
        rel.split("/")[0]: info
        for rel, info in list_files(fs, _join(base, stage)).items()
        if rel.count("/") == 1 and rel.endswith(f"/{marker}")
    }


def pull_newest(fs: pafs.FileSystem, base: str, local_root: Path, stage: str) -> Path | None:
    """Download the newest complete remote folder of `stage` (by marker time); None when there is none."""
    keys = _complete_keys(fs, base, stage)
    if not keys:
        return None
    key = max(keys, key=lambda k: (keys[k].mtime_ns or 0, k))
    pull_dir(fs, _join(base, f"{stage}/{key}"), local_root / stage / key, _marker(stage))
    return local_root / stage / key


def pull_every(fs: pafs.FileSystem, base: str, local_root: Path, stage: str) -> list[Path]:
    """Download every complete remote folder of `stage`."""
    keys = sorted(_complete_keys(fs, base, stage))
    for key in keys:
        pull_dir(fs, _join(base, f"{stage}/{key}"), local_root / stage / key, _marker(stage))
    return [local_root / stage / k for k in keys]


def mirror_dir(uri: str) -> Path:
    """The local working copy of a URI run root: one folder per URI under `$CRUCIBLE_MIRROR`."""
    # Default ~/.cache/crucible/mirror. Dask workers on other machines need it on a shared filesystem.
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    base = os.environ.get("CRUCIBLE_MIRROR") or str(Path(cache) / "crucible" / "mirror")
    return Path(base) / short_hash(uri.rstrip("/"))


@dataclass
class Workspace:
    """The local folder a stage works in, and the URI run root it mirrors (None for a local run root)."""

    root: str
    remote: str | None = None
    fs: pafs.FileSystem | None = field(default=None, repr=False)
    base: str = ""

    def local(self, path: str | None) -> str | None:
        """A stage folder given as a URI under the run root, downloaded and mapped to the mirror."""
        if path is None or self.remote is None or not is_remote(path):
            return path
        prefix = self.remote.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not under the run root {self.remote}: give a stage of this run")
        rel = path[len(prefix) :].strip("/")
        pull_dir(self.fs, _join(self.base, rel), Path(self.root) / rel, _marker(rel.split("/")[0]))
        return str(Path(self.root) / rel)


@contextmanager
def workspace(
    run_root: str, upstream: str | None = None, newest: Iterable[str] = (), every: Iterable[str] = ()
) -> Iterator[Workspace]:
    """Work on `run_root` itself, or on the local mirror of a URI run root, uploaded when the block succeeds.

    Before the block, the mirror gets what the stage reads: the newest complete folder of the first of
    `newest` that the remote has (unless `upstream` names the stage to read: `Workspace.local` fetches
    that one), and every folder of each `every` stage.
    """
    if not is_remote(run_root):
        yield Workspace(root=run_root)
        return
    fs, base = filesystem(run_root)
    local = mirror_dir(run_root)
    local.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root=str(local), remote=run_root, fs=fs, base=base)
    if upstream is None:
        next((d for stage in newest if (d := pull_newest(fs, base, local, stage))), None)
    for stage in every:
        pull_every(fs, base, local, stage)
    yield ws
    push_root(fs, base, local)
