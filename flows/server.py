"""`crucible server`: a local Prefect server and a process worker, started together and stopped together.

The server keeps its state (SQLite database, profiles) under `<project>/.crucible/prefect/`; the worker
polls the `crucible-process` work pool and runs deployments from the project folder (`CRUCIBLE_HOME`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
POOL = "crucible-process"
STATE_DIR = Path(".crucible") / "prefect"
# Every process the server, the worker and the worker's flow runs start inherits this variable, so shutdown
# finds them all, even flow runs that the worker started in their own session and that outlive it.
MARKER = "CRUCIBLE_SERVER_SESSION"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ServerError(RuntimeError):
    """The server or worker could not be started or kept running; the message is the one-line reason."""


class Interrupted(Exception):
    """A stop signal arrived (Ctrl-C, SIGTERM, SIGHUP)."""


@dataclass(frozen=True)
class ServerPlan:
    """Where the server listens, where its state lives, and which project folder the worker runs."""

    home: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    pool: str = POOL
    state_dir: Path | None = None

    @property
    def state(self) -> Path:
        """PREFECT_HOME of the server and worker: `state_dir`, by default `<home>/.crucible/prefect`."""
        return self.state_dir or self.home / STATE_DIR

    @property
    def ui_url(self) -> str:
        """The UI's address as a local browser or client dials it."""
        return f"http://{dial_host(self.host)}:{self.port}"

    @property
    def api_url(self) -> str:
        """The value for PREFECT_API_URL."""
        return f"{self.ui_url}/api"


def project_home(home: str | None = None, env: Mapping[str, str] = os.environ) -> Path:
    """The project folder: `--home`, else $CRUCIBLE_HOME, else the current directory."""
    return Path(home or env.get("CRUCIBLE_HOME") or os.getcwd()).expanduser().resolve()


def dial_host(host: str) -> str:
    """The host a local client connects to: loopback for a wildcard bind, brackets around IPv6."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def sqlite_url(state: Path) -> str:
    """The SQLite database URL under the state folder."""
    return f"sqlite+aiosqlite:///{state / 'prefect.db'}"


def database_url(plan: ServerPlan, env: Mapping[str, str]) -> str:
    """The database the server will use: PREFECT_API_DATABASE_CONNECTION_URL if set, else SQLite."""
    return env.get("PREFECT_API_DATABASE_CONNECTION_URL") or sqlite_url(plan.state)


def redact(url: str) -> str:
    """A database URL with its password hidden, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def server_env(plan: ServerPlan, env: Mapping[str, str], marker: str) -> dict[str, str]:
    """The server's environment: state under the project, SQLite unless a database is given, offline."""
    # A PREFECT_API_URL in the caller's shell describes some client's view; the UI would adopt it.
    out = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    out.update(
        PREFECT_HOME=str(plan.state),
        PREFECT_SERVER_API_HOST=plan.host,
        PREFECT_SERVER_API_PORT=str(plan.port),
        PREFECT_API_DATABASE_CONNECTION_URL=database_url(plan, env),
        **{MARKER: marker},
    )
    telemetry_off(out)
    return out


def telemetry_off(env: MutableMapping[str, str]) -> None:
    """Keep a Prefect server started with `env` offline unless `env` asks for telemetry explicitly."""
    # Prefect's default sends anonymous usage events to Prefect's servers; offline that fails and logs an
    # ERROR at every start.
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def client_env(plan: ServerPlan, env: Mapping[str, str]) -> dict[str, str]:
    """A client's environment for this server: its API URL, the basic-auth string, the project folder."""
    out = {**env, "PREFECT_API_URL": plan.api_url, "CRUCIBLE_HOME": str(plan.home)}
    if env.get("PREFECT_SERVER_API_AUTH_STRING") and not env.get("PREFECT_API_AUTH_STRING"):
        out["PREFECT_API_AUTH_STRING"] = env["PREFECT_SERVER_API_AUTH_STRING"]
    return out


def worker_env(plan: ServerPlan, env: Mapping[str, str], marker: str) -> dict[str, str]:
    """The worker's environment: a client of the server whose flow runs keep their state under the project."""
    return {**client_env(plan, env), "PREFECT_HOME": str(plan.state), MARKER: marker}


def prefect_command(*args: str) -> list[str]:
    """The Prefect CLI of this interpreter (not whatever `prefect` is first on PATH)."""
    return [sys.executable, "-m", "prefect", *args]


def server_command(plan: ServerPlan) -> list[str]:
    """`prefect server start` on the plan's host and port."""
    return prefect_command("server", "start", "--host", plan.host, "--port", str(plan.port))


def worker_command(plan: ServerPlan) -> list[str]:
    """`prefect worker start` polling the plan's process pool."""
    return prefect_command(
        "worker", "start", "--pool", plan.pool, "--type", "process", "--install-policy", "never"
    )


def check_port_free(host: str, port: int) -> None:
    """Raise ServerError unless `host:port` can be bound now."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServerError(f"invalid host {host!r}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # The same option uvicorn sets, so a port in TIME_WAIT after a restart counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise ServerError(
                f"port {port} on {host} is in use ({exc.strerror}); stop what holds it or pass --port"
            ) from exc


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """Whether `<api_url>/health` answers true (it needs no credentials even with basic auth)."""
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json() is True


def wait_for_health(api_url: str, proc: subprocess.Popen[Any], timeout: float = 180.0) -> float:
    """Poll the health endpoint until it answers; fail early if the server process dies. Return seconds."""
    start = time.monotonic()
    while not is_healthy(api_url):
        if proc.poll() is not None:
            raise ServerError(f"the Prefect server exited with code {proc.returncode}; its log is above")
        if time.monotonic() - start > timeout:
            raise ServerError(f"the Prefect server did not answer {api_url}/health within {timeout:.0f}s")
        time.sleep(0.25)
    return time.monotonic() - start


def ensure_work_pool(api_url: str, name: str, auth: str | None = None) -> bool:
    """Create the process work pool `name` unless it exists; return whether it was created."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with SyncPrefectClient(api_url, auth_string=auth) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            pass
        else:
            if pool.type != ProcessWorker.type:
                raise ServerError(f"work pool {name!r} exists with type {pool.type!r}, not 'process'")
            return False
        template = ProcessWorker.get_default_base_job_template()
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
        except ObjectAlreadyExists:
            return False
    return True


def start_process(cmd: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.Popen[Any]:
    """Start a child in its own session, so a terminal's Ctrl-C reaches only us and we stop it in order."""
    return subprocess.Popen(cmd, env=dict(env), cwd=cwd, start_new_session=True)


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live process whose environment carries this server session's marker."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def terminate(procs: list[psutil.Process], grace: float) -> None:
    """SIGTERM the processes, wait up to `grace` seconds, SIGKILL whatever is left."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


def stop_child(proc: subprocess.Popen[Any] | None, grace: float) -> None:
    """SIGTERM a direct child and reap it; SIGKILL it after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def shutdown(
    server: subprocess.Popen[Any] | None,
    worker: subprocess.Popen[Any] | None,
    marker: str,
    grace: float = 10.0,
) -> None:
    """Stop the flow runs, then the worker, then the server, then anything left that any of them started."""
    # Flow runs first, while the server can record them as Crashed. Only the worker's direct children (the
    # flow-run engines): their own helpers exit with them, and a helper killed under a running task would
    # look like a crashed input file. A worker told to stop first would claim the runs' states itself and
    # then leave them Running.
    if worker is not None:
        with contextlib.suppress(psutil.Error):
            terminate(psutil.Process(worker.pid).children(), grace)
    stop_child(worker, grace)
    keep = {server.pid} if server is not None else set()
    terminate([p for p in marked_processes(marker) if p.pid not in keep], grace)
    stop_child(server, grace)
    terminate(marked_processes(marker), grace)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted` while inside; restore the old handlers after."""

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ignore_stop_signals() -> None:
    """Ignore further stop signals: shutdown is already under way and bounded in time."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def is_loopback(host: str) -> bool:
    """Whether the server binds only to this machine."""
    return host in ("localhost", "::1") or host.startswith("127.")


def banner(plan: ServerPlan, env: Mapping[str, str], created: bool, auth: bool) -> str:
    """What a user needs after startup: the URLs and the line that points clients at this server."""
    lines = [
        "",
        "Crucible server ready",
        f"  UI:        {plan.ui_url}",
        f"  API:       {plan.api_url}",
        f"  database:  {redact(database_url(plan, env))}",
        f"  work pool: {plan.pool} ({'created' if created else 'exists'}), "
        f"worker runs deployments from {plan.home}",
        "Point clients at it (in each shell that runs crucible or prefect):",
        f"  export PREFECT_API_URL={plan.api_url}",
    ]
    if auth:
        lines.append("  export PREFECT_API_AUTH_STRING='<user>:<password>'   # the server's auth string")
    if not is_loopback(plan.host) and not env.get("PREFECT_UI_API_URL"):
        # The UI's browser code calls the API at http://<bind host>:<port>/api unless told otherwise.
        lines += [
            f"  Browsers elsewhere need PREFECT_UI_API_URL=http://<this machine>:{plan.port}/api at start,",
            "  and without basic auth anyone who reaches the port controls the server.",
        ]
    lines += ["Then `crucible deploy` registers the deployments. Ctrl-C stops the server and the worker.", ""]
    return "\n".join(lines)


def watch(children: Mapping[str, subprocess.Popen[Any]], poll: float = 0.5) -> None:
    """Block while every child runs; raise ServerError when one exits on its own."""
    while True:
        for name, proc in children.items():
            if proc.poll() is not None:
                raise ServerError(f"the Prefect {name} exited with code {proc.returncode}; its log is above")
        time.sleep(poll)


def serve(
    plan: ServerPlan, env: Mapping[str, str] = os.environ, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the server and a worker until a stop signal; stop both and everything they started."""
    check_port_free(plan.host, plan.port)
    plan.state.mkdir(parents=True, exist_ok=True)
    marker = uuid.uuid4().hex
    auth = client_env(plan, env).get("PREFECT_API_AUTH_STRING")
    server = worker = None
    stopped_by = None
    with stop_signals_raise():
        try:
            server = start_process(server_command(plan), server_env(plan, env, marker), plan.home)
            seconds = wait_for_health(plan.api_url, server)
            created = ensure_work_pool(plan.api_url, plan.pool, auth)
            worker = start_process(worker_command(plan), worker_env(plan, env, marker), plan.home)
            echo(banner(plan, env, created, bool(auth)))
            echo(f"(server healthy after {seconds:.1f}s)")
            watch({"server": server, "worker": worker})
        except Interrupted as stop:
            stopped_by = str(stop)
        finally:
            ignore_stop_signals()
            shutdown(server, worker, marker)
    return {"ui_url": plan.ui_url, "api_url": plan.api_url, "stopped_by": stopped_by}
