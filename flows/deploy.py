"""`crucible deploy`: register prefect.yaml's deployments with the running server, parameters from configs.

prefect.yaml stays a plain Prefect project file: its build steps call `config_parameters` (below) on a
YAML config, and each deployment takes its parameters from that step's output, so `prefect deploy --all`
and `crucible deploy` register the same thing, and a deployment runs what `crucible run <config>` runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from flows.config import apply_overrides, load_config
from flows.server import ServerError, ensure_work_pool, is_healthy, prefect_command

# The config sections that are a stage flow's `config` parameter.
SECTIONS = ("ingest", "curate", "dedup", "tokenize", "train")


class DeployError(RuntimeError):
    """Deployments could not be registered; the message is the one-line reason."""


def config_parameters(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Prefect build step: a YAML config's values for `{{ <step id>.config }}`, `.run_root`, `.ingest`, ..."""
    cfg = load_config(config, overrides)  # fails the deploy on a bad config, with pydantic's message
    # The file's own values, not the validated dump: the deployment reads like the YAML, the UI form shows
    # the rest as defaults, and derived values (train.train.min_lr = lr / 10) follow a changed lr.
    data = apply_overrides(
        yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}, list(overrides or [])
    )
    sections = {name: data.get(name) or {} for name in SECTIONS}
    return {"config": data, "run_root": cfg.run_root, "inputs": list(cfg.inputs), **sections}


def api_settings(env: Mapping[str, str] = os.environ) -> tuple[str | None, str | None]:
    """PREFECT_API_URL and PREFECT_API_AUTH_STRING from the environment, else from the active profile."""
    from prefect.settings import get_current_settings

    settings = get_current_settings().api
    url = env.get("PREFECT_API_URL") or settings.url
    auth = env.get("PREFECT_API_AUTH_STRING") or (
        settings.auth_string.get_secret_value() if settings.auth_string else None
    )
    return url, auth


def declared(prefect_file: Path) -> list[dict[str, Any]]:
    """The deployments a prefect.yaml declares (name, entrypoint, work pool, schedules)."""
    data = yaml.safe_load(prefect_file.read_text(encoding="utf-8")) or {}
    return list(data.get("deployments") or [])


def flow_name(entrypoint: str) -> str:
    """The Prefect flow name behind an entrypoint `flows/x.py:fn` (what `prefect deployment run` calls it)."""
    import importlib

    path, func = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func).name


def selection(entries: list[dict[str, Any]], names: list[str]) -> list[str]:
    """`prefect deploy` arguments for `flow/deployment` names (it matches function names, not flow names)."""
    if not names:
        return ["--all"]
    known = {f"{flow_name(e['entrypoint'])}/{e['name']}": e for e in entries}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DeployError(f"not in prefect.yaml: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [
        arg for n in names for arg in ("-n", f"{known[n]['entrypoint'].split(':')[1]}/{known[n]['name']}")
    ]


def check_server(api_url: str | None, auth: str | None, pools: set[str]) -> str:
    """The API URL, once the server answers, accepts our credentials and has the pools (created if not)."""
    if not api_url:
        raise DeployError(
            "PREFECT_API_URL is not set: start `crucible server` and export the PREFECT_API_URL it prints "
            "(without it Prefect would start a temporary server and the deployments would be lost)"
        )
    if not is_healthy(api_url):
        raise DeployError(f"no Prefect server answers at {api_url} (is `crucible server` running?)")
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        for pool in sorted(pools):
            ensure_work_pool(api_url, pool, auth)
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 401:
            raise DeployError(
                f"{api_url} refused the credentials: set PREFECT_API_AUTH_STRING to the server's auth string"
            ) from exc
        raise
    except ServerError as exc:
        raise DeployError(str(exc)) from exc
    return api_url


def run_prefect_deploy(home: Path, prefect_file: Path, args: list[str], env: dict[str, str]) -> str:
    """`prefect deploy ARGS` (`--all`, or `-n fn/name ...`) from the project folder; return its output."""
    cmd = prefect_command("--no-prompt", "deploy", "--prefect-file", str(prefect_file), *args)
    proc = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    if proc.returncode:
        sys.stderr.write(output)
        last = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "no output")
        raise DeployError(f"prefect deploy exited with code {proc.returncode}: {last}")
    return output


def registered(api_url: str, auth: str | None, names: set[str]) -> list[dict[str, Any]]:
    """The server's view of the deployments with these names: flow/name, id, pool, schedules."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with SyncPrefectClient(api_url, auth_string=auth) as client:
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=sorted(names)))
        )
        flows = {d.flow_id: client.read_flow(d.flow_id).name for d in deployments}
    rows = [
        {
            "name": f"{flows[d.flow_id]}/{d.name}",
            "id": str(d.id),
            "work_pool": d.work_pool_name,
            "schedules": [s.schedule.model_dump(mode="json", exclude_none=True) for s in d.schedules],
        }
        for d in deployments
    ]
    return sorted(rows, key=lambda r: r["name"])


def deploy(home: Path, names: list[str] | None = None, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Register prefect.yaml's deployments (all, or those named) with the server at PREFECT_API_URL."""
    prefect_file = home / "prefect.yaml"
    if not prefect_file.is_file():
        raise DeployError(f"no prefect.yaml in {home}: run from the project folder or pass --home")
    entries = declared(prefect_file)
    args = selection(entries, list(names or []))
    api_url, auth = api_settings(env)
    api_url = check_server(api_url, auth, {e["work_pool"]["name"] for e in entries if e.get("work_pool")})
    # CRUCIBLE_HOME is substituted into the pull step now, so any worker on this machine runs the flows
    # from this folder, whatever its own environment says.
    child = {**env, "PREFECT_API_URL": api_url, "CRUCIBLE_HOME": str(home)}
    if auth:
        child["PREFECT_API_AUTH_STRING"] = auth
    run_prefect_deploy(home, prefect_file, args, child)
    rows = registered(api_url, auth, {e["name"] for e in entries})
    return {"api_url": api_url, "deployments": [r for r in rows if not names or r["name"] in names]}
