"""Find input files, recognise their kind, fingerprint them and plan them into shard-sized groups."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from storage.layout import short_hash
from storage.shards import file_fingerprint
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

# Streaming kinds are read record by record; the others are one document per file.
STREAMING_KINDS = frozenset({"warc"})


class InputFile(BaseModel):
    """One input file with its kind and content fingerprint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    kind: str
    size: int
    fingerprint: str


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


def _walk(root: Path) -> list[Path]:
    """Regular files under a directory in a stable order, skipping hidden files and folders."""
    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if p.is_file() and not any(part.startswith(".") for part in rel):
            found.append(p)
    return found


def discover(specs: Iterable[str]) -> tuple[list[InputFile], list[str]]:
    """Expand paths (files or folders) into fingerprinted input files, and collect URLs (inline or listed)."""
    files: dict[str, InputFile] = {}
    urls: list[str] = []
    for spec in specs:
        if URL_RE.match(spec):
            urls.append(spec)
            continue
        path = Path(spec).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"input {spec!r} does not exist")
        for p in _walk(path) if path.is_dir() else [path]:
            resolved = str(p.resolve())
            if kind_of(p) == "urls":
                # A URL list is expanded here so its URLs are grouped and fetched like inline ones.
                urls.extend(read_url_list(p))
            elif resolved not in files:
                files[resolved] = InputFile(
                    path=resolved, kind=kind_of(p), size=p.stat().st_size, fingerprint=file_fingerprint(p)
                )
    return sorted(files.values(), key=lambda f: f.path), list(dict.fromkeys(urls))


def plan_groups(
    files: list[InputFile], urls: list[str], max_files: int, max_bytes: int, urls_per_group: int
) -> list[InputGroup]:
    """Split inputs into groups of one kind, bounded in files and bytes; WARCs and URL lists alone."""
    groups: list[InputGroup] = []
    by_kind: dict[str, list[InputFile]] = {}
    for f in files:
        by_kind.setdefault(f.kind, []).append(f)
    for kind, members in sorted(by_kind.items()):
        if kind in STREAMING_KINDS:
            groups.extend(_group(kind, [f]) for f in members)
            continue
        batch: list[InputFile] = []
        for f in members:
            if batch and (len(batch) >= max_files or sum(b.size for b in batch) + f.size > max_bytes):
                groups.append(_group(kind, batch))
                batch = []
            batch.append(f)
        if batch:
            groups.append(_group(kind, batch))
    for start in range(0, len(urls), urls_per_group):
        chunk = urls[start : start + urls_per_group]
        groups.append(InputGroup(kind="urls", files=[], urls=chunk, key=short_hash(["urls", chunk])))
    return groups


def _group(kind: str, files: list[InputFile]) -> InputGroup:
    """A group whose key hashes its kind and every member's path and content."""
    key = short_hash([kind, [(f.path, f.fingerprint) for f in files]])
    return InputGroup(kind=kind, files=files, key=key)
