"""Find input files, recognise their kind, fingerprint them and plan them into shard-sized groups."""

from __future__ import annotations

import json
import os
import re
import stat
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from storage.layout import short_hash
from storage.schemas import clean_str
from storage.shards import atomic_write, file_fingerprint
from tasks.fetch import read_url_list

URL_RE = re.compile(r"^https?://", re.IGNORECASE)

# Longest suffixes first so "x.warc.gz" is a WARC, not a gzip of unknown kind.
SUFFIX_KINDS: tuple[tuple[str, str], ...] = (
    (".warc.gz", "warc"),
    (".arc.gz", "warc"),
    (".jsonl.gz", "text"),
    (".ndjson.gz", "text"),
    (".txt.gz", "text"),
    (".text.gz", "text"),
    (".md.gz", "text"),
    (".markdown.gz", "text"),
    (".warc", "warc"),
    (".arc", "warc"),
    (".pdf", "pdf"),
    (".html", "html"),
    (".htm", "html"),
    (".xhtml", "html"),
    (".txt", "text"),
    (".text", "text"),
    (".md", "text"),
    (".markdown", "text"),
    (".jsonl", "text"),
    (".ndjson", "text"),
    (".urls", "urls"),
)

# The stage directory's record of every group planned so far, for incremental runs.
PLAN_FILE = "_groups.json"

# Streaming kinds are read record by record; the others are one document per file.
STREAMING_KINDS = frozenset({"warc"})


class InputFile(BaseModel):
    """One input file with its kind and content fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    kind: str
    size: int
    fingerprint: str
    error: str | None = None
    """Why the file cannot be read (not a regular file, a broken link, an I/O error); extraction then
    records it as `input_unreadable` without opening it."""


class InputGroup(BaseModel):
    """Files (or URLs) that become one output shard."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    files: list[InputFile]
    urls: list[str] = []
    key: str

    @property
    def shard_name(self) -> str:
        """The content-addressed shard file name for this group."""
        return f"shard-{self.kind}-{self.key}.parquet"

    @property
    def drops_name(self) -> str:
        """The drops sidecar beside the shard."""
        return f"shard-{self.kind}-{self.key}.drops.parquet"

    @property
    def label(self) -> str:
        """A short human label for run names."""
        if self.urls:
            return f"{len(self.urls)} urls"
        first = Path(self.files[0].path).name
        return first if len(self.files) == 1 else f"{first} +{len(self.files) - 1}"


def kind_of(path: Path) -> str:
    """The ingest kind of a file from its name; `other` when unsupported."""
    name = path.name.lower()
    for suffix, kind in SUFFIX_KINDS:
        if name.endswith(suffix):
            return kind
    return "other"


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files under a directory in a stable order (hidden ones skipped, linked folders followed once), and
    the folders that could not be listed, with why."""
    found: list[Path] = []
    unlisted: list[tuple[Path, str]] = []
    visited: set[tuple[int, int]] = set()

    def failed(err: OSError) -> None:
        unlisted.append((Path(err.filename), f"folder cannot be listed: {err.strerror or err}"))

    for folder, subdirs, names in os.walk(root, onerror=failed, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError as exc:
            failed(exc)
            subdirs[:] = []
            continue
        # A link back to an ancestor would loop forever; each real folder is read once.
        if (st.st_dev, st.st_ino) in visited:
            subdirs[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(Path(folder) / n for n in names if not n.startswith("."))
    return sorted(found), unlisted


def _unreadable(path: Path, error: str) -> InputFile:
    """An input that cannot be read: kept in the plan so it ends as a drop, never silently skipped."""
    kind = kind_of(path)
    # A URL list that cannot be read has no URLs to fetch: it is a file drop like any other.
    return InputFile(
        path=str(path), kind="other" if kind == "urls" else kind, size=0,
        fingerprint=f"unreadable:{error}", error=error,
    )  # fmt: skip


def _input_file(path: Path) -> InputFile:
    """One file with its kind, size and fingerprint; or an unreadable input saying why."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            # Never open a FIFO, socket or device: reading one can block forever or never end.
            return _unreadable(path, f"not a regular file (mode {stat.filemode(st.st_mode)})")
        return InputFile(
            path=str(path), kind=kind_of(path), size=st.st_size, fingerprint=file_fingerprint(path)
        )
    except OSError as exc:
        what = "broken link" if path.is_symlink() and not path.exists() else type(exc).__name__
        return _unreadable(path, f"{what}: {exc.strerror or exc}")


# A path whose name holds bytes that are not UTF-8 (Python carries them as lone surrogates) cannot travel
# in JSON, so not as a Prefect flow parameter: it is passed percent-encoded behind this prefix instead.
FS_BYTES = "fsbytes:"


def portable_spec(spec: str) -> str:
    """An input spec that survives JSON: unchanged, unless the path holds undecodable bytes."""
    if clean_str(spec) == spec:
        return spec
    return FS_BYTES + urllib.parse.quote(os.fsencode(spec), safe="/")


def local_spec(spec: str) -> str:
    """The local path of a portable spec (the inverse of portable_spec)."""
    if not spec.startswith(FS_BYTES):
        return spec
    return os.fsdecode(urllib.parse.unquote_to_bytes(spec.removeprefix(FS_BYTES)))


def discover(specs: Iterable[str]) -> tuple[list[InputFile], list[str]]:
    """Expand paths (files or folders) into fingerprinted input files, and collect URLs (inline or listed).

    Every file found ends in the plan: one that cannot be read (a FIFO, a broken link, a file that vanished
    or cannot be opened, a folder that cannot be listed) is kept with its error, to be recorded as a drop.
    """
    files: dict[str, InputFile] = {}
    urls: list[str] = []
    for spec in specs:
        if URL_RE.match(spec):
            urls.append(spec)
            continue
        path = Path(local_spec(spec)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"input {spec!r} does not exist")
        found, unlisted = _walk(path) if path.is_dir() else ([path], [])
        for folder, error in unlisted:
            files.setdefault(str(folder.absolute()), _unreadable(folder.absolute(), error))
        for p in found:
            resolved = _resolved(p)
            if resolved in files:
                continue
            if kind_of(p) != "urls":
                files[resolved] = _input_file(Path(resolved))
                continue
            # A URL list is expanded here so its URLs are grouped and fetched like inline ones.
            listed, error = _url_list(p)
            urls.extend(listed)
            if error:
                files[resolved] = _unreadable(Path(resolved), error)
    return sorted(files.values(), key=lambda f: f.path), list(dict.fromkeys(urls))


def _url_list(path: Path) -> tuple[list[str], str]:
    """The URLs a list file holds, or none and why it cannot be read (it then becomes an unreadable input)."""
    if not path.is_file():
        return [], "not a regular file"
    try:
        return read_url_list(path), ""
    except OSError as exc:
        return [], f"URL list cannot be read: {type(exc).__name__}: {exc.strerror or exc}"


def _resolved(path: Path) -> str:
    """The absolute path with links resolved where they can be (a broken or looping link stays as is)."""
    try:
        return str(path.resolve(strict=True))
    except (OSError, RuntimeError):
        return str(path.absolute())


def _cut_after(name: str, mean: int) -> bool:
    """Whether a content-defined group boundary follows this path or URL: true for about one in `mean`."""
    return mean <= 1 or int(short_hash(["cut", name], 8), 16) % mean == 0


def _chunks(
    items: list[str], max_items: int, sizes: list[int] | None = None, max_size: int = 0
) -> list[list[int]]:
    """Indices of `items` cut into runs bounded in count (and size), with content-defined boundaries.

    A boundary falls after an item whose name hashes to one of `max_items // 2` values, so it depends on the
    item itself, not on its position: adding or removing inputs changes only the groups around them and
    the rest keep their content-addressed shards (cutting every `max_items` would shift every later group).
    The bounds still cut where a run would grow too large.
    """
    mean = max(1, max_items // 2)
    runs: list[list[int]] = []
    run: list[int] = []
    size = 0
    for i, name in enumerate(items):
        grow = sizes[i] if sizes else 0
        if run and (len(run) >= max_items or (sizes is not None and size + grow > max_size)):
            runs.append(run)
            run, size = [], 0
        run.append(i)
        size += grow
        if _cut_after(name, mean):
            runs.append(run)
            run, size = [], 0
    if run:
        runs.append(run)
    return runs


def _reuse(
    previous: Iterable[InputGroup], files: list[InputFile], urls: list[str]
) -> tuple[list[InputGroup], list[InputFile], list[str]]:
    """Earlier groups whose members are all still inputs, unchanged; and the inputs left over."""
    free_files, free_urls = {f.path: f for f in files}, dict.fromkeys(urls)
    kept: list[InputGroup] = []
    for group in sorted(previous, key=lambda g: g.key):
        members = [free_files.get(f.path) for f in group.files]
        if members != group.files or not all(u in free_urls for u in group.urls):
            continue  # a member changed, went away or is taken: the group dissolves and is re-planned
        kept.append(group)
        for f in group.files:
            del free_files[f.path]
        for u in group.urls:
            del free_urls[u]
    return kept, [f for f in files if f.path in free_files], [u for u in urls if u in free_urls]


def plan_groups(
    files: list[InputFile],
    urls: list[str],
    max_files: int,
    max_bytes: int,
    urls_per_group: int,
    previous: Iterable[InputGroup] = (),
) -> list[InputGroup]:
    """Split inputs into groups of one kind, bounded in files and bytes; WARCs and URL lists alone.

    Groups planned by an earlier run (`previous`) are kept whole while their members are unchanged, so an
    incremental run puts only new inputs into new groups and every earlier shard stays a cache hit.
    """
    kept, files, urls = _reuse(previous, files, urls)
    groups: list[InputGroup] = []
    by_kind: dict[str, list[InputFile]] = {}
    for f in files:
        by_kind.setdefault(f.kind, []).append(f)
    for kind, members in sorted(by_kind.items()):
        if kind in STREAMING_KINDS:
            groups.extend(_group(kind, [f]) for f in members)
            continue
        runs = _chunks([f.path for f in members], max_files, [f.size for f in members], max_bytes)
        groups.extend(_group(kind, [members[i] for i in run]) for run in runs)
    for run in _chunks(urls, urls_per_group):
        chunk = [urls[i] for i in run]
        groups.append(InputGroup(kind="urls", files=[], urls=chunk, key=short_hash(["urls", chunk])))
    # Sorted by kind, then by first input, so the plan reads in a stable order whatever the history.
    return sorted([*kept, *groups], key=lambda g: (g.kind == "urls", g.kind, _first(g)))


def _first(group: InputGroup) -> str:
    """The group's first file path or URL."""
    return group.files[0].path if group.files else group.urls[0]


def _group(kind: str, files: list[InputFile]) -> InputGroup:
    """A group whose key hashes its kind and every member's path and content."""
    key = short_hash([kind, [(f.path, f.fingerprint) for f in files]])
    return InputGroup(kind=kind, files=files, key=key)


def load_plan(stage_dir: Path) -> list[InputGroup]:
    """The groups earlier runs planned into this stage directory (none when there is no record)."""
    path = Path(stage_dir) / PLAN_FILE
    if not path.is_file():
        return []
    return [InputGroup.model_validate(g) for g in json.loads(path.read_text(encoding="utf-8"))]


def save_plan(stage_dir: Path, previous: list[InputGroup], groups: list[InputGroup]) -> None:
    """Record these groups and the earlier ones whose shards still exist (rewritten only on change)."""
    out = Path(stage_dir)
    merged = {g.key: g for g in previous if (out / g.shard_name).exists()} | {g.key: g for g in groups}
    data = json.dumps([merged[k].model_dump() for k in sorted(merged)], indent=1) + "\n"
    path = out / PLAN_FILE
    if not path.is_file() or path.read_text(encoding="utf-8") != data:
        atomic_write(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))
