"""A `crucible` command stopped by SIGTERM takes its temporary Prefect server down with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def test_sigterm_stops_the_temporary_server(tmp_path: Path) -> None:
    foreign = ("PREFECT_API", "PREFECT_SERVER_ANALYTICS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "ingest", "builtin:python-docs", "--run-root", str(tmp_path)],
            cwd=ROOT,
            env={**env, "PREFECT_HOME": str(tmp_path / "prefect")},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 120
    while "Beginning flow run" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    servers = [
        p for p in psutil.Process(proc.pid).children(recursive=True) if "uvicorn" in " ".join(p.cmdline())
    ]
    assert servers, "no temporary server child found"
    # Offline, the server's telemetry would log an ERROR at every start: crucible turns it off.
    assert all(p.environ().get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false" for p in servers)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    _, alive = psutil.wait_procs(servers, timeout=30)
    assert not alive, f"temporary server left running: {[p.pid for p in alive]}"
