"""The persistent dedup index: every earlier run's kept documents (hash, length, band keys, text location).

Layout: `<dir>/index.json` lists the parts and the MinHash settings they were made with; each part
`part-<base>.parquet` holds the documents one dedup run kept, named by that run's base key (config +
upstream + code, without the index), so re-committing a run replaces its own part in place instead of
adding a copy. Each part also records the run root it came from.

A run dedups against other run roots' documents only: within one run root every dedup stage is a
complete snapshot of all the documents that run root ever ingested (ingest is cumulative), so the run
root's own earlier parts are superseded, not history (deduping against them would remove every
document a re-run with new settings or new code sees again). Of each other run root it takes the newest
part committed before the run's own first commit, so repeating a run sees the same history (same stage
key, cache hits) even after later runs committed. Updates take an exclusive `flock` on `<dir>/.lock`
and rewrite `index.json` atomically, so runs on one machine (or on a shared filesystem that honours
locks) can commit side by side.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage.layout import canonical_json, short_hash
from storage.schemas import INDEX_SCHEMA
from storage.shards import SchemaError, atomic_write, file_fingerprint, read_shard, write_shard
from tasks.dedup_config import DedupConfig
from tasks.dedup_sigs import signature_view

INDEX_FILE = "index.json"
INDEX_VERSION = 1


class DedupIndexError(RuntimeError):
    """The index cannot be used with these settings or one of its parts is damaged."""


def index_dir(cfg: DedupConfig, run_root: str | Path) -> Path:
    """The configured index folder, or one per MinHash setting under the run root."""
    if cfg.index.path:
        return Path(cfg.index.path)
    return Path(run_root) / "dedup-index" / short_hash(signature_view(cfg))


def _read(directory: Path) -> dict[str, Any]:
    """The index listing, or an empty one for a new index."""
    path = directory / INDEX_FILE
    if not path.exists():
        return {"version": INDEX_VERSION, "settings": None, "parts": []}
    return json.loads(path.read_text(encoding="utf-8"))


def _check_settings(listing: dict[str, Any], cfg: DedupConfig, directory: Path) -> None:
    """Refuse an index built with other MinHash settings (its band keys would never match)."""
    want = json.loads(canonical_json(signature_view(cfg)))
    if listing["settings"] not in (None, want):
        raise DedupIndexError(
            f"dedup index {directory} was built with {listing['settings']}, this run uses {want}: "
            "point dedup.index.path elsewhere or use the same minhash settings"
        )


def _root_of(part: dict[str, Any]) -> str:
    """The run root a part came from (parts listed before run roots were recorded: its stage's parent)."""
    return part.get("run_root") or str(Path(part["stage"]).parents[1])


def snapshot(directory: Path, cfg: DedupConfig, exclude_base: str, run_root: str) -> list[dict[str, Any]]:
    """The parts a run dedups against: of every other run root, its newest part committed before this
    run's own first commit (all of them, if none)."""
    listing = _read(directory)
    _check_settings(listing, cfg, directory)
    bases = [p["base"] for p in listing["parts"]]
    earlier = listing["parts"][: bases.index(exclude_base)] if exclude_base in bases else listing["parts"]
    mine = str(Path(run_root).resolve())
    newest = {_root_of(p): p for p in earlier if _root_of(p) != mine}  # later parts overwrite earlier
    return [p for p in earlier if newest.get(_root_of(p)) is p]


def load_parts(directory: Path, parts: list[dict[str, Any]]) -> pa.Table:
    """Read the snapshot's parts, checking each against the fingerprint the listing recorded."""
    tables = [INDEX_SCHEMA.empty_table()]
    for part in parts:
        path = directory / part["name"]
        if not path.exists() or file_fingerprint(path) != part["fingerprint"]:
            raise DedupIndexError(f"dedup index part {path} is missing or changed since it was committed")
        tables.append(read_shard(path, INDEX_SCHEMA))
    return pa.concat_tables(tables).replace_schema_metadata(INDEX_SCHEMA.metadata)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the index's exclusive lock."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def part_name(base: str) -> str:
    """The file of one dedup run's part, named by its base key."""
    return f"part-{base}.parquet"


def commit(
    directory: Path, cfg: DedupConfig, base: str, table: pa.Table, stage: str, run_root: str
) -> dict[str, Any]:
    """Write (or replace) this run's part and list it; returns the listing entry."""
    if table.schema.remove_metadata() != INDEX_SCHEMA.remove_metadata():
        raise SchemaError("index part does not match the dedup-index schema")
    name = part_name(base)
    with _locked(directory):
        listing = _read(directory)
        _check_settings(listing, cfg, directory)
        write_shard(directory / name, table, INDEX_SCHEMA)
        entry = {
            "name": name,
            "base": base,
            "stage": stage,
            "run_root": str(Path(run_root).resolve()),
            "rows": table.num_rows,
            "fingerprint": file_fingerprint(directory / name),
        }
        # A re-commit keeps its place in the history; a new run goes last.
        parts = [entry if p["base"] == base else p for p in listing["parts"]]
        parts += [] if any(p["base"] == base for p in listing["parts"]) else [entry]
        listing = {"version": INDEX_VERSION, "settings": signature_view(cfg), "parts": parts}
        data = canonical_json(listing).encode()
        atomic_write(directory / INDEX_FILE, lambda tmp: tmp.write_bytes(data))
    return entry
