"""What users see: a real pipeline run in the Prefect UI, driven by headless Chromium (Debian's package).

One slow test: the Prefect server with its UI (flows/server.py's helpers, free port, temporary state), the
demo pipeline with tiny training run against it by `crucible run`, then a browser walk through the run's
subflows and artifacts in both of Prefect's UIs, with screenshots under the test's tmp_path.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from flows.server import ServerPlan, server_command, server_env, shutdown, wait_for_health, worker_env

ROOT = Path(__file__).parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: no GPU, no QUIC, none of Chromium's own calls home (updates, sync, field trials).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Training shrunk to seconds; warmup and evaluation scaled down with it (warmup may not exceed max_steps).
TINY_TRAINING = [
    "train.train.max_steps=20",
    "train.train.warmup_steps=2",
    "train.train.eval_every=10",
    "train.train.log_every=5",
    "train.train.checkpoint_every=0",
]
STAGES = ("ingest", "curate", "dedup", "tokenize", "train")
TRAIN_KEYS = ("train-summary", "train-loss-curve", "train-checkpoint", "train-outputs")
SUMMARY_KEYS = ("ingest-summary", "curate-summary", "dedup-summary", "tokenize-summary", "dedup-clusters")
STEP_TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"Debian's chromium is not at {CHROMIUM} (`apt-get install -y chromium`; .ci/run does)",
    ),
]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env() -> dict[str, str]:
    """The caller's environment without any Prefect server, database or UI settings of its own."""
    foreign = ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_UI_", "PREFECT_SERVER_UI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
    env.pop("CRUCIBLE_HOME", None)
    return env


@contextlib.contextmanager
def ui_server(tmp: Path) -> Iterator[tuple[ServerPlan, str, Path]]:
    """`prefect server start` with its UI on a free port and temporary state; stop it and its children."""
    plan = ServerPlan(home=ROOT, port=free_port(), state_dir=tmp / "prefect")
    plan.state.mkdir(parents=True)
    marker = uuid.uuid4().hex
    # The server tests switch the UI off to start faster; here it is the point, whatever the shell says.
    env = {**server_env(plan, base_env(), marker), "PREFECT_SERVER_UI_ENABLED": "true"}
    log = tmp / "server.log"
    server = None
    try:
        # A log file rather than the terminal, so `pytest -s` shows the screenshot folder and not the server.
        with log.open("w") as out:
            server = subprocess.Popen(
                server_command(plan),
                env=env,
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_health(plan.api_url, server, timeout=120)
        yield plan, marker, log
    finally:
        shutdown(server, None, marker)


def run_pipeline(plan: ServerPlan, marker: str, run_root: Path) -> tuple[dict[str, Any], str]:
    """`crucible run configs/demo.yaml` with tiny training, as a client of the server: its summary and log."""
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "configs/demo.yaml",
        f"run_root={run_root}",
        *TINY_TRAINING,
    ]
    # The worker's environment: the server's API, Prefect state in the temporary folder (no result cache from
    # earlier runs in ~/.prefect), and the session marker, so shutdown() also ends anything it leaves behind.
    env = worker_env(plan, base_env(), marker)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    (run_root.parent / "pipeline.log").write_text(done.stderr)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout[done.stdout.index("{") :]), done.stderr


def view_url(log: str, flow: str, run_root: Path) -> str:
    """The "View at" link Prefect logs for a flow run: the page a user opens from the terminal."""
    found = re.search(rf"Flow run '{flow} {re.escape(str(run_root))}' - View at (\S+)", log)
    assert found, f"no 'View at' link for the {flow} run in the log"
    return found.group(1)


class Browser:
    """One Chromium page on a fresh profile that reaches only the server, saving numbered screenshots."""

    def __init__(self, context: Any, base: str, shots: Path) -> None:
        self.context, self.base, self.shots = context, base, shots
        self.blocked: list[str] = []
        self.server_errors: list[str] = []
        self.page = context.new_page()
        self.page.set_default_timeout(STEP_TIMEOUT_MS)
        context.route("**/*", self._loopback_only)
        context.on("response", self._record_errors)
        self.count = 0

    def _loopback_only(self, route: Any) -> None:
        """Let requests to the server through; abort the rest (the UI's analytics, anything off-machine)."""
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def _record_errors(self, response: Any) -> None:
        """Note every 5xx answer: the UI hides them behind empty panels."""
        if response.status >= 500:
            self.server_errors.append(f"{response.status} {response.url}")

    def shot(self, name: str) -> Path:
        """A full-page PNG of the current page, numbered in the order taken."""
        self.count += 1
        path = self.shots / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@contextlib.contextmanager
def chromium(tmp: Path, base: str, shots: Path) -> Iterator[Browser]:
    """Debian's Chromium through Playwright (its bundled driver, no downloaded browser) on a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        browser = Browser(context, base, shots)
        try:
            yield browser
        except BaseException:
            with contextlib.suppress(Exception):
                browser.shot("failure")
            raise
        finally:
            context.close()


def check_image(page: Any, svg: bytes) -> None:
    """The page's loss-curve <img> holds our SVG, and the browser decoded it at the SVG's own width."""
    from playwright.sync_api import expect

    img = page.locator('img[src^="data:image/svg+xml"]')
    expect(img).to_be_visible()
    assert base64.b64decode(img.get_attribute("src").split(",", 1)[1]) == svg
    # decode() rejects for an image the browser cannot render; then naturalWidth would be 0.
    width = img.evaluate("img => img.decode().then(() => img.naturalWidth)")
    assert width == int(re.search(rb'width="(\d+)"', svg)[1]) > 0


def open_newest(page: Any, key: str) -> None:
    """From an artifact card to the artifact: in V2 a card opens the key's history, newest entry first."""
    page.get_by_text(key, exact=True).click()
    page.locator("a[href*='/artifacts/artifact/']").first.click()


def walk_default_ui(b: Browser, run_root: Path, out: dict[str, Any]) -> None:
    """The UI a fresh browser gets at the server's address (Prefect 3.8: V2), from the runs list down."""
    from playwright.sync_api import expect

    expect.set_options(timeout=STEP_TIMEOUT_MS)
    page, name = b.page, lambda stage: f"{stage} {run_root}"
    page.goto(b.base + "/")
    expect(page).to_have_url(re.compile(r"/v2/"))
    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_placeholder(re.compile("Search")).first.fill(name("pipeline"))
    expect(page.get_by_role("link", name=name("ingest"), exact=True)).to_have_count(0)
    b.shot("runs-list-search")
    page.get_by_role("link", name=name("pipeline"), exact=True).click()

    page.get_by_role("tab", name="Subflow Runs").click()
    for stage in STAGES:
        expect(page.get_by_role("link", name=name(stage), exact=True)).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible()
    b.shot("pipeline-subflows")

    page.get_by_role("link", name=name("train"), exact=True).click()
    page.get_by_role("tab", name="Artifacts").click()
    for key in TRAIN_KEYS:
        expect(page.get_by_text(key, exact=True)).to_be_visible()
    b.shot("train-artifacts")

    svg = (Path(out["train"]["stage_dir"]) / "loss_curve.svg").read_bytes()
    open_newest(page, "train-loss-curve")
    check_image(page, svg)
    b.shot("loss-curve")

    # Back through the history (the SPA keeps it; a reload of its bundle costs seconds on a busy machine).
    page.go_back()
    page.go_back()
    open_newest(page, "train-summary")
    expect(page.get_by_role("heading", name="Train", exact=True)).to_be_visible()
    samples = [f"Sample {i + 1}" for i in range(len(out["train"]["samples"]))]
    for text in (*samples, out["train"]["checkpoint"]):
        expect(page.get_by_text(text, exact=True)).to_be_visible()
    b.shot("train-summary")

    # V2 renders a link artifact's text but drops a file:// href (its Markdown renderer allows web links).
    page.go_back()
    page.go_back()
    open_newest(page, "train-checkpoint")
    expect(page.get_by_role("main").get_by_text(out["train"]["checkpoint"], exact=True)).to_be_visible()

    # The Artifacts page (no sidebar entry in V2): every stage's summary, and the dedup clusters table.
    page.goto(b.base + "/v2/artifacts")
    for key in (*SUMMARY_KEYS, *TRAIN_KEYS):
        expect(page.get_by_text(key, exact=True)).to_be_visible()
    b.shot("artifacts-page")
    open_newest(page, "dedup-clusters")
    expect(page.get_by_role("link", name=name("dedup"), exact=True)).to_be_visible()
    for column in ("kept", "title", "removed"):
        expect(page.get_by_role("columnheader", name=column, exact=True)).to_be_visible()
    # The demo's mirror copies: each kept page (docs.python.org or the mirror) lost one copy.
    expect(page.get_by_role("cell", name="mirror.example.org/python/reference/").first).to_be_visible()
    assert page.get_by_role("row").count() >= 2
    b.shot("dedup-clusters")


def walk_linked_ui(b: Browser, log: str, run_root: Path, out: dict[str, Any]) -> None:
    """The page the terminal's "View at" link opens (Prefect's V1 UI): the train run's curve and links."""
    from playwright.sync_api import expect

    expect.set_options(timeout=STEP_TIMEOUT_MS)
    page = b.page
    page.goto(view_url(log, "train", run_root))
    expect(page.get_by_text(f"train {run_root}", exact=True).first).to_be_visible()
    # V1's tabs are plain list items, not ARIA tabs.
    page.locator("li.p-tab", has_text="Artifacts").click()
    for key in TRAIN_KEYS:
        expect(page.get_by_text(key, exact=True)).to_be_visible()
    page.get_by_text("train-loss-curve", exact=True).click()
    svg = (Path(out["train"]["stage_dir"]) / "loss_curve.svg").read_bytes()
    check_image(page, svg)
    b.shot("linked-ui-loss-curve")

    # V1 does not restore the tab from the URL.
    page.go_back()
    page.locator("li.p-tab", has_text="Artifacts").click()
    page.get_by_text("train-checkpoint", exact=True).click()
    uri = Path(out["train"]["checkpoint"]).resolve().as_uri()
    expect(page.locator(f'a[href="{uri}"]')).to_be_visible()


def test_pipeline_run_and_artifacts_in_the_ui(tmp_path: Path) -> None:
    """The run, its five subflows and their artifacts render: the summary's samples, the curve, the table."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    run_root = tmp_path / "runs"
    started = time.monotonic()
    with ui_server(tmp_path) as (plan, marker, server_log):
        up = time.monotonic()
        try:
            out, log = run_pipeline(plan, marker, run_root)
            ran = time.monotonic()
            assert out["train"]["step"] == 20 and out["train"]["samples"]
            with chromium(tmp_path, plan.ui_url, shots) as browser:
                walk_default_ui(browser, run_root, out)
                walk_linked_ui(browser, log, run_root, out)
        except BaseException:
            print(server_log.read_text(errors="replace")[-4000:])
            raise
        finally:
            print(f"\nscreenshots: {shots}")
    print(f"server {up - started:.0f}s, pipeline {ran - up:.0f}s, browser {time.monotonic() - ran:.0f}s")
    if browser.blocked:
        print("blocked off-machine requests:", *sorted(set(browser.blocked)), sep="\n  ")
    assert not browser.server_errors, browser.server_errors
    pngs = sorted(shots.glob("*.png"))
    assert len(pngs) == 8 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
