"""Stage directories keyed by config + upstream + code version, and their manifests."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

from storage.refs import ShardRef
from storage.schemas import SCHEMA_VERSION
from storage.shards import ShardError, atomic_write

MANIFEST = "_manifest.json"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def short_hash(obj: Any, n: int = 16) -> str:
    """A short hex digest of any JSON-able value."""
    # surrogatepass: a file name with undecodable bytes hashes to its own key instead of raising.
    data = canonical_json(obj).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()[:n]


def sidecar_name(shard_name: str, kind: str) -> str:
    """`shard-x.parquet` -> `shard-x.<kind>.parquet`: a file about a shard, beside it."""
    return f"{shard_name.removesuffix('.parquet')}.{kind}.parquet"


def code_version(*modules: str) -> str:
    """Hash the source of the named modules, so changing stage code changes the stage key."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"schema={SCHEMA_VERSION}".encode())
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"cannot hash the source of module {name!r}")
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, config: dict[str, Any], upstream: str | None, code: str) -> str:
    """The directory key of a stage: its config, its upstream key and its code version."""
    return short_hash({"stage": stage, "config": config, "upstream": upstream, "code": code})


def stage_dir(run_root: Path | str, stage: str, key: str) -> Path:
    """`<run_root>/<stage>/<key>`."""
    return Path(run_root) / stage / key


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write `_manifest.json` atomically; it is written last and marks the stage complete."""
    path = Path(directory) / MANIFEST
    body = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(body, encoding="utf-8"))
    return path


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The stage's manifest, or None when the stage never completed."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def manifest_shards(directory: Path, key: str = "path") -> list[Path]:
    """The shard paths a complete stage lists, checked to exist with the recorded size."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise ShardError(f"{directory} has no {MANIFEST}: the stage did not complete")
    paths = []
    for entry in manifest["shards"]:
        path = directory / entry[key]
        if not path.exists():
            raise ShardError(f"{path} is listed in the manifest but missing")
        if key == "path" and path.stat().st_size != entry["bytes"]:
            raise ShardError(f"{path} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
        paths.append(path)
    return paths


def find_stage_dirs(run_root: Path | str, stage: str) -> list[Path]:
    """Complete stage directories under a run root, newest manifest first."""
    base = Path(run_root) / stage
    dirs = [d for d in base.glob("*") if (d / MANIFEST).exists()] if base.is_dir() else []
    return sorted(dirs, key=lambda d: (d / MANIFEST).stat().st_mtime, reverse=True)


def stage_manifest(
    stage: str, key: str, code: str, upstream: str | None, config: dict[str, Any], refs: list[ShardRef]
) -> dict[str, Any]:
    """The manifest every stage writes: identity, config, shards, counts per source and per reason."""
    per_source: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    quirks: Counter[str] = Counter()
    for ref in refs:
        per_source.update(ref.per_source)
        reasons.update(ref.drop_reasons)
        quirks.update(ref.quirks)
    return {
        "stage": stage,
        "key": key,
        "schema_version": SCHEMA_VERSION,
        "code_version": code,
        "upstream": upstream,
        "config": config,
        "shards": [ref.model_dump() for ref in sorted(refs, key=lambda r: r.path)],
        "counts": {
            "documents": sum(r.rows for r in refs),
            "drops": sum(r.drops for r in refs),
            "per_source": dict(sorted(per_source.items())),
            "drop_reasons": dict(sorted(reasons.items())),
            "quirks": dict(sorted(quirks.items())),
        },
    }
