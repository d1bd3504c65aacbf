"""`crucible server` and `crucible deploy`: a real Prefect server and process worker, deployments from
prefect.yaml, ad-hoc runs with overrides, a schedule the server's scheduler turns into a run, clean stops."""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from flows.cli import main
from flows.config import PipelineConfig, load_config
from flows.deploy import DeployError, config_parameters, deploy
from flows.pipeline import watched_inputs, with_overrides
from flows.server import (
    MARKER,
    ServerError,
    ServerPlan,
    check_port_free,
    client_env,
    dial_host,
    server_env,
    sqlite_url,
    worker_env,
)

ROOT = Path(__file__).parents[1]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- pure parts ---------------------------------------------------------------------------------------


def test_environments_keep_state_under_the_project(tmp_path: Path) -> None:
    plan = ServerPlan(home=tmp_path, port=4321)
    shell = {
        "PREFECT_API_URL": "http://elsewhere/api",
        "PATH": "/bin",
        "PREFECT_SERVER_API_AUTH_STRING": "a:b",
    }
    env = server_env(plan, shell, "m1")
    assert env["PREFECT_HOME"] == str(tmp_path / ".crucible" / "prefect")
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == sqlite_url(plan.state)
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1" and env["PREFECT_SERVER_API_PORT"] == "4321"
    assert "PREFECT_API_URL" not in env and env[MARKER] == "m1"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    pg = "postgresql+asyncpg://u:secret@db/prefect"
    assert (
        server_env(plan, {"PREFECT_API_DATABASE_CONNECTION_URL": pg}, "m")[
            "PREFECT_API_DATABASE_CONNECTION_URL"
        ]
        == pg
    )
    worker = worker_env(plan, shell, "m1")
    assert worker["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    assert worker["CRUCIBLE_HOME"] == str(tmp_path) and worker[MARKER] == "m1"
    assert worker["PREFECT_API_AUTH_STRING"] == "a:b"
    assert client_env(plan, {**shell, "PREFECT_API_AUTH_STRING": "c:d"})["PREFECT_API_AUTH_STRING"] == "c:d"
    assert dial_host("0.0.0.0") == "127.0.0.1" and dial_host("::1") == "[::1]"
    assert ServerPlan(tmp_path, host="0.0.0.0").ui_url == "http://127.0.0.1:4200"


def test_port_in_use_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServerError, match="in use"):
            check_port_free("127.0.0.1", port)
        code = main(["server", "--port", str(port), "--state-dir", str(tmp_path / "state")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("crucible server: error: ServerError: port") and "--port" in err[0]
    assert not (tmp_path / "state").exists()


HINT = "(is `crucible server` running?)"


def test_deploy_needs_a_reachable_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(DeployError, match="PREFECT_API_URL is not set"):
            deploy(ROOT, env={})
        dead = f"http://127.0.0.1:{free_port()}/api"
        monkeypatch.setenv("PREFECT_API_URL", dead)
        assert main(["deploy", "--home", str(ROOT)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"crucible deploy: error: DeployError: no Prefect server answers at {dead} " + HINT]


def test_prefect_yaml_parameters_come_from_the_configs() -> None:
    """Every deployment's templated parameters are its config's values and validate against its flow."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.templating import apply_values

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    outputs = {}
    for step in spec["build"]:
        [(fqn, inputs)] = step.items()
        assert fqn == "flows.deploy.config_parameters"
        outputs[inputs["id"]] = config_parameters(str(ROOT / inputs["config"]))
    names = set()
    for entry in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / entry["entrypoint"]))
        names.add(f"{flow.name}/{entry['name']}")
        params = apply_values(entry["parameters"], outputs)
        assert "{{" not in json.dumps(params), entry
        flow.validate_parameters(params)
        assert entry["work_pool"]["name"] == "crucible-process"
        assert bool(entry.get("schedules")) == (flow.name == "incremental"), entry["name"]
    assert {"pipeline/demo", "pipeline/small", "incremental/nightly", "train/small"} <= names
    assert {f"{s}/demo" for s in ("ingest", "curate", "dedup", "tokenize", "train")} <= names
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert outputs["demo"]["run_root"] == demo.run_root and outputs["demo"]["inputs"] == demo.inputs
    assert PipelineConfig.model_validate(outputs["demo"]["config"]) == demo
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert outputs["demo"]["config"] == raw and outputs["demo"]["curate"] == raw["curate"]
    assert outputs["demo"]["dedup"] == {}  # not in the file: the flow's defaults


def test_small_config_is_the_base_model_on_one_gpu_in_bf16() -> None:
    from model.config import param_count

    cfg = load_config(ROOT / "configs" / "small.yaml")
    model = cfg.train.model_for(cfg.tokenize.tokenizer.vocab_size)
    assert cfg.train.preset == "base" and 100e6 < param_count(model) < 130e6
    assert cfg.train.train.dtype == "bfloat16" and cfg.train.device == "cuda"
    assert cfg.train.train.grad_accum_steps(model.block_size) == 32


def test_overrides_and_watched_inputs(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    changed = with_overrides(cfg, ["run_root=/tmp/x", "train.train.max_steps=70"])
    assert changed.run_root == "/tmp/x" and changed.train.train.max_steps == 70
    assert changed.curate == cfg.curate and with_overrides(cfg, None) is cfg
    with pytest.raises(ValueError, match="max_steps"):
        with_overrides(cfg, ["train.train.max_steps=-1"])
    (tmp_path / "inbox").mkdir()
    inputs = [str(tmp_path / "inbox"), str(tmp_path / "nope"), "https://e.org/a", "s3://bucket/inbox/"]
    present, missing = watched_inputs(inputs)
    assert present == [inputs[0], *inputs[2:]] and missing == [str(tmp_path / "nope")]


# ---- a real server and worker -------------------------------------------------------------------------


class Live:
    """A `crucible server` subprocess on a free port with its own state folder."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.auth = env.get("PREFECT_SERVER_API_AUTH_STRING")
        self.tmp, self.port = tmp, free_port()
        self.state, self.log = tmp / "state", tmp / "server.log"
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        cmd = [
            sys.executable,
            "-m",
            "flows.cli",
            "server",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state),
        ]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.deployed: dict[str, Any] | None = None

    def output(self) -> str:
        """Everything the server, worker and flow runs printed so far."""
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the banner is printed (server healthy, pool present, worker started)."""
        deadline = time.monotonic() + timeout
        while "Crucible server ready" not in self.output():
            assert self.proc.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.2)

    def client(self) -> Any:
        """A sync Prefect client for this server."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url, auth_string=self.auth)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send a signal and wait for `crucible server` to exit; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def child_env() -> dict[str, str]:
    """The caller's environment with a fast scheduler and worker, no foreign Prefect server or database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
    }
    env.update(
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="1",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_UI_ENABLED="false",
    )
    env.pop("CRUCIBLE_HOME", None)
    return env


@contextlib.contextmanager
def running_server(tmp: Path, **extra: str) -> Iterator[Live]:
    """Start `crucible server`; on the way out stop it, and kill whatever it left (which the tests forbid)."""
    live = Live(tmp, {**child_env(), **extra})
    try:
        yield live
    finally:
        tree = []
        with contextlib.suppress(psutil.Error):
            tree = psutil.Process(live.proc.pid).children(recursive=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            live.stop(signal.SIGTERM, timeout=60)
        if live.proc.poll() is None:
            live.proc.kill()
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server and worker for the slow tests, deployed from prefect.yaml by `crucible deploy`."""
    with running_server(tmp_path_factory.mktemp("live")) as server:
        server.wait_ready()
        env = {**child_env(), "PREFECT_API_URL": server.api_url}
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "deploy"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        server.deployed = json.loads(done.stdout[done.stdout.index("{") :])
        yield server


def wait_final(client: Any, run_id: Any, timeout: float = 180.0) -> Any:
    """The flow run once it reaches a final state."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"flow run still {run.state_name} after {timeout}s"
        time.sleep(1.0)


def zen() -> str:
    """The Zen of Python (kept rot13-encoded by the `this` module, which prints it on import)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def inbox(tmp: Path) -> Path:
    """A watched folder with two plain-text files: prose the default filters keep, and a note they drop."""
    folder = tmp / "inbox"
    folder.mkdir()
    (folder / "zen.txt").write_text(zen(), encoding="utf-8")
    (folder / "note.txt").write_text("A short note that curation will drop.\n", encoding="utf-8")
    return folder


@pytest.mark.slow
def test_deploy_then_run_with_parameter_overrides(live: Live, tmp_path: Path) -> None:
    declared = {d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert live.deployed is not None and live.deployed["api_url"] == live.api_url
    names = {d["name"] for d in live.deployed["deployments"]}
    assert {"pipeline/demo", "ingest/demo", "incremental/nightly", "train/small"} <= names
    assert {n.split("/")[1] for n in names} == declared
    with live.client() as client:
        pipeline = client.read_deployment_by_name("pipeline/demo")
        # The UI's run form is drawn from this schema: the config fields carry their attribute docstrings.
        fields = pipeline.parameter_openapi_schema["definitions"]["PipelineConfig"]["properties"]
        assert fields["run_root"]["description"].startswith("Folder that holds")
        assert pipeline.parameters["config"] == config_parameters(str(ROOT / "configs/demo.yaml"))["config"]
        assert pipeline.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]
        ingest = client.read_deployment_by_name("ingest/demo")
        folder, run_root = inbox(tmp_path), tmp_path / "runs"
        overrides = {"inputs": [str(folder)], "run_root": str(run_root), "config": {"file_timeout_s": 33}}
        run = client.create_flow_run_from_deployment(ingest.id, parameters=overrides)
        run = wait_final(client, run.id)
    assert run.state.is_completed(), (run.state, live.output()[-3000:])
    [manifest_path] = run_root.glob("ingest/*/_manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["inputs"] == [str(folder)] and manifest["config"]["file_timeout_s"] == 33
    assert manifest["counts"]["documents"] == 2


@pytest.mark.slow
def test_the_scheduler_starts_the_nightly_flow(live: Live, tmp_path: Path) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule

    with live.client() as client:
        nightly = client.read_deployment_by_name("incremental/nightly")
        [cron] = nightly.schedules
        assert cron.schedule.cron == "0 2 * * *" and cron.active

        def auto_runs() -> list[Any]:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id]))
            )
            return [r for r in runs if r.auto_scheduled]

        # The server's scheduler fills the cron schedule with upcoming 02:00 UTC runs on its own.
        deadline = time.monotonic() + 60
        while not any(r.created_by and r.created_by.id == cron.id for r in auto_runs()):
            assert time.monotonic() < deadline, "the scheduler created no run for the nightly cron schedule"
            time.sleep(1)
        # A second schedule due in a few seconds, pointed at a temp run root by its own parameters.
        folder, run_root = inbox(tmp_path), tmp_path / "nightly"
        soon = IntervalSchedule(
            interval=timedelta(hours=1), anchor_date=datetime.now(UTC) + timedelta(seconds=12)
        )
        params = {"overrides": [f"run_root={run_root}", f"inputs=['{folder}']"]}
        [extra] = client.create_deployment_schedules(nightly.id, [(soon, True)], parameters=params)
        deadline = time.monotonic() + 60
        while not (mine := [r for r in auto_runs() if r.created_by and r.created_by.id == extra.id]):
            assert time.monotonic() < deadline, "the scheduler created no run for the interval schedule"
            time.sleep(1)
        first = min(mine, key=lambda r: r.expected_start_time)
        assert first.created_by.type == "SCHEDULE"
        run = wait_final(client, first.id)
    assert run.state.is_completed(), (run.state, live.output()[-3000:])
    [manifest] = run_root.glob("dedup/*/_manifest.json")
    counts = json.loads(manifest.read_text())["counts"]
    assert counts["documents_in"] == 1 and counts["documents"] == 1


def _crashed(database: Path, run_id: Any) -> str:
    """The state type the server's SQLite database holds for a flow run."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        [(state,)] = db.execute("select state_type from flow_run where id = ?", (str(run_id),)).fetchall()
    return state


@pytest.mark.slow
def test_ctrl_c_stops_server_worker_and_flow_runs(live: Live, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) mid-run: no process survives, the port is free, the run is recorded as Crashed."""
    with live.client() as client:
        ingest = client.read_deployment_by_name("ingest/demo")
        run = client.create_flow_run_from_deployment(ingest.id, parameters={"run_root": str(tmp_path / "r")})
        deadline = time.monotonic() + 90
        while client.read_flow_run(run.id).state_name != "Running":
            assert time.monotonic() < deadline, live.output()[-3000:]
            time.sleep(0.5)
    time.sleep(2)  # into the stage: extraction workers are up
    tree = psutil.Process(live.proc.pid).children(recursive=True)
    assert len(tree) >= 3, tree  # server, worker, the flow run's engine (and its helpers)
    started = time.monotonic()
    assert live.stop(signal.SIGINT) == 0
    took = time.monotonic() - started
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]
    check_port_free("127.0.0.1", live.port)
    assert '"stopped_by": "SIGINT"' in live.output()
    assert _crashed(live.state / "prefect.db", run.id) == "CRASHED"
    assert took < 45


@pytest.mark.slow
def test_sigterm_during_startup_leaves_nothing(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        deadline = time.monotonic() + 30
        while not (tree := psutil.Process(server.proc.pid).children(recursive=True)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1)
        assert server.stop(signal.SIGTERM) == 0
        assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert '"stopped_by": "SIGTERM"' in server.output()
        check_port_free("127.0.0.1", server.port)


@pytest.mark.slow
def test_basic_auth(tmp_path: Path) -> None:
    """With PREFECT_SERVER_API_AUTH_STRING the API refuses strangers; the worker and deploy use the string."""
    import httpx

    with running_server(tmp_path, PREFECT_SERVER_API_AUTH_STRING="admin:s3cret") as server:
        server.wait_ready()
        flows = f"{server.api_url}/flows/filter"
        assert httpx.post(flows, json={}).status_code == 401
        assert httpx.post(flows, json={}, auth=("admin", "s3cret")).status_code == 200
        with server.client() as client:
            deadline = time.monotonic() + 60
            while not client.read_workers_for_work_pool("crucible-process"):
                assert time.monotonic() < deadline, "the worker never reached the server"
                time.sleep(0.5)
        env = {**child_env(), "PREFECT_API_URL": server.api_url}
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "deploy"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 1
        assert "refused the credentials: set PREFECT_API_AUTH_STRING" in done.stderr.strip().splitlines()[-1]
