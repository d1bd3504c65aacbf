"""The ingest flow on a real Prefect server: outputs, caching, byte-identical reruns, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import task_runs, task_states
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.task_runners import ThreadPoolTaskRunner

from flows.ingest import ingest_flow, run_ingest
from flows.inspect_run import unaccounted_inputs
from storage.layout import manifest_shards, read_manifest
from storage.schemas import DOCUMENT_SCHEMA, DROP_SCHEMA
from storage.shards import read_shard
from tasks.demo_corpus import build_demo_corpus
from tasks.ingest import IngestConfig, ingest_group_task


def _run(
    inputs: list[str], run_root: Path, cfg: IngestConfig | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Run the ingest flow; return its summary and the state names of its task runs."""
    flow = ingest_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    state = flow(inputs=inputs, run_root=str(run_root), config=cfg or IngestConfig(), return_state=True)
    return state.result(), task_states(state.state_details.flow_run_id)


def _snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file in a directory."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.iterdir())
    }


def _all_rows(stage: Path) -> tuple[list[dict], list[dict]]:
    """Every document and drop row of a complete stage."""
    docs = [r for p in manifest_shards(stage) for r in read_shard(p, DOCUMENT_SCHEMA).to_pylist()]
    drops = [
        r for p in manifest_shards(stage, key="drops_path") for r in read_shard(p, DROP_SCHEMA).to_pylist()
    ]
    return docs, drops


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline demo corpus, built once."""
    return build_demo_corpus(tmp_path_factory.mktemp("corpus"))


def test_demo_ingest_rerun_is_cached_and_byte_identical(
    prefect_api: str, demo_corpus: Path, tmp_path: Path
) -> None:
    first, states = _run([str(demo_corpus)], tmp_path)
    assert set(states) == {"Completed"} and len(states) >= 4  # at least one group per kind
    stage = Path(first["stage_dir"])
    per_source = first["per_source"]
    assert per_source["pdf"] == 1 and per_source["html"] == 1
    assert per_source["warc"] >= 60 and per_source["text"] >= 80
    assert first["drop_reasons"].get("warc_http_status") == 1
    assert first["drop_reasons"].get("warc_not_html") == 1
    assert first["drop_reasons"].get("warc_revisit_duplicate") == 1
    docs, drops = _all_rows(stage)
    assert len(docs) == first["documents"] and len(drops) == first["drops"]
    assert len({d["id"] for d in docs}) == len(docs)
    pdf = next(d for d in docs if d["source"] == "pdf")
    assert pdf["title"] == "The Python Language Reference"
    assert "The Python Language Reference" not in pdf["text"]  # the running header is gone
    before = _snapshot(stage)

    second, states = _run([str(demo_corpus)], tmp_path)
    assert set(states) == {"Cached"} and len(states) == len(read_manifest(stage)["shards"])
    assert second == first
    assert _snapshot(stage) == before  # nothing rewritten, not even the manifest


def test_deleted_shard_is_recomputed_identically(prefect_api: str, demo_corpus: Path, tmp_path: Path) -> None:
    first, _ = _run([str(demo_corpus / "text")], tmp_path)
    stage = Path(first["stage_dir"])
    shard = manifest_shards(stage)[0]
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    shard.unlink()
    second, states = _run([str(demo_corpus / "text")], tmp_path)
    assert "Completed" in states  # the cache entry pointed at a missing file, so it ran again
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == digest
    assert second["documents"] == first["documents"]


def test_unsupported_and_oversized_files_are_recorded(prefect_api: str, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "notes.docx").write_bytes(b"PK\x03\x04 not really")
    (inputs / "big.html").write_text("<html><body>" + "<p>word</p>" * 5000 + "</body></html>")
    (inputs / ".hidden.txt").write_text("never read")
    # Found but unreadable: never opened (a FIFO would block its reader), recorded with why.
    os.mkfifo(inputs / "pipe.txt")
    (inputs / "gone.pdf").symlink_to(tmp_path / "missing.pdf")
    cfg = IngestConfig(max_file_bytes=1000)
    summary, _ = _run([str(inputs)], tmp_path / "run", cfg)
    assert summary["documents"] == 0
    assert summary["drop_reasons"] == {"file_too_large": 1, "input_unreadable": 2, "unsupported_file_type": 1}
    _, drops = _all_rows(Path(summary["stage_dir"]))
    details = {Path(d["uri"]).name: d["detail"] for d in drops if d["drop_reason"] == "input_unreadable"}
    assert details["pipe.txt"].startswith("not a regular file") and details["gone.pdf"].startswith("broken")


@pytest.mark.slow
def test_every_shared_pdf_and_warc_is_processed(prefect_api: str, shared_data: Path, tmp_path: Path) -> None:
    pdfs = sorted((shared_data / "pdf").rglob("*.pdf"))
    cfg = IngestConfig.model_validate({"pdf": {"passwords": ["openpassword"]}})
    summary, states = _run([str(shared_data / "pdf"), str(shared_data / "warc")], tmp_path, cfg)
    assert set(states) == {"Completed"}
    docs, drops = _all_rows(Path(summary["stage_dir"]))
    pdf_uris = {d["uri"] for d in docs if d["source"] == "pdf"} | {
        d["uri"] for d in drops if d["source"] == "pdf"
    }
    assert pdf_uris == {p.resolve().as_uri() for p in pdfs}  # every PDF ends as a document or a reason
    reason = {Path(d["uri"]).name: d["drop_reason"] for d in drops if d["source"] == "pdf"}
    assert reason["invalid.pdf"] == "pdf_unreadable"
    assert reason["ccitt.pdf"] == "pdf_no_text_layer"
    assert "libreoffice-writer-password.pdf" not in reason  # opened with the configured password
    warc = Counter(d["drop_reason"] for d in drops if d["source"] == "warc")
    assert warc["warc_malformed"] >= 3 and warc["warc_revisit_duplicate"] >= 1 and warc["warc_not_html"] >= 1
    assert summary["per_source"]["warc"] >= 70
    # Every input is named by some row: the WARC holding only request records included.
    walked = [*(shared_data / "pdf").rglob("*"), *(shared_data / "warc").rglob("*")]
    files = {p.resolve().as_uri() for p in walked if p.is_file() and not p.name.startswith(".")}
    named = {r["input_uri"] for r in [*docs, *drops]}
    assert files <= named and None not in named
    assert unaccounted_inputs(Path(summary["stage_dir"])) == {"inputs": len(files), "unaccounted": []}


def _cli(args: list[str], api: str) -> subprocess.CompletedProcess[str]:
    """Run the crucible CLI in a subprocess against the test server."""
    # The progress bar is drawn on a terminal; forced on here so the test sees it.
    env = {**os.environ, "PREFECT_API_URL": api, "CRUCIBLE_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "flows.cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parents[1]
    )


def test_cli_ingest_inspect_and_errors(prefect_api: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("---\ntitle: Alpha\n---\n# Alpha\n\nSome *real* text about alpha particles.\n")
    (src / "b.bin").write_bytes(b"\x00\x01")
    done = _cli(["ingest", str(src), "--run-root", str(tmp_path / "run"), "workers=1"], prefect_api)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["documents"] == 1 and summary["drop_reasons"] == {"unsupported_file_type": 1}
    assert re.search(r"^ingest: input groups \[#{30}\] 2/2 \d+s$", done.stderr, re.M), done.stderr[-2000:]
    # The stage's flow run is tagged with its stage; its task runs are not (see flows/stage_tags.py).
    with get_client(sync_client=True) as client:
        name = FlowRunFilterName(any_=[f"ingest {tmp_path / 'run'}"])
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=name))
    assert set(run.tags) == {"crucible", "ingest"}
    assert [r.tags for r in task_runs(run.id)] == [[], []]
    shown = _cli(
        ["inspect", str(tmp_path / "run"), "--reason", "unsupported_file_type", "--docs", "1"], prefect_api
    )
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["examples"][0]["uri"].endswith("b.bin") and report["documents"][0]["title"] == "Alpha"
    failed = _cli(["ingest", str(tmp_path / "nope"), "--run-root", str(tmp_path / "run")], prefect_api)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("crucible ingest: error:")]
    assert errors == [
        f"crucible ingest: error: FileNotFoundError: input {str(tmp_path / 'nope')!r} does not exist"
    ]


def test_inspect_unaccounted_lists_inputs_without_rows(prefect_api: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("A short note about the alpine lakes of the region and their water.")
    (src / "b.docx").write_bytes(b"PK\x03\x04 not really")
    (src / "c.jsonl").write_text('{"text": "First record about glaciers."}\nnot json\n')
    summary, _ = _run([str(src)], tmp_path / "run")
    assert summary["documents"] == 2 and summary["drops"] == 2
    shown = _cli(["inspect", str(tmp_path / "run"), "--unaccounted"], prefect_api)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["unaccounted"] == [] and json.loads(shown.stdout)["inputs"] == 3
    # Lose c.jsonl's rows (its document and its drop): the check names it and exits non-zero.
    stage = Path(summary["stage_dir"])
    lost = (src / "c.jsonl").resolve().as_uri()
    removed = 0
    for entry in read_manifest(stage)["shards"]:  # type: ignore[index]
        for name, schema in ((entry["path"], DOCUMENT_SCHEMA), (entry["drops_path"], DROP_SCHEMA)):
            table = read_shard(stage / name, schema)
            kept = table.filter(pc.not_equal(table["input_uri"], lost))
            removed += table.num_rows - kept.num_rows
            pq.write_table(kept.replace_schema_metadata(schema.metadata), stage / name)
    assert removed == 2
    shown = _cli(["inspect", str(tmp_path / "run"), "--unaccounted"], prefect_api)
    assert shown.returncode == 3 and json.loads(shown.stdout)["unaccounted"] == [lost]


def test_undecodable_file_and_folder_names(prefect_api: str, tmp_path: Path) -> None:
    # Names with bytes that are not UTF-8 reach Python as lone surrogates, which JSON (Prefect's flow
    # parameters, task-run events) cannot carry: the folder is passed percent-encoded, the run name cleaned.
    folder = os.path.join(os.fsencode(tmp_path), b"in\xff")
    os.mkdir(folder)
    for name in (b"bad\xfe name.txt", b"ok.txt"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"A short note about the alpine lakes of the region and their cold water.")
    summary = run_ingest([os.fsdecode(folder)], str(tmp_path / "run"), IngestConfig(), workers=1)
    assert summary["documents"] == 2 and summary["drops"] == 0
    stage = Path(summary["stage_dir"])
    assert unaccounted_inputs(stage)["unaccounted"] == []
    (run,) = _flow_runs(f"ingest {tmp_path / 'run'}")
    assert [r.state.name for r in task_runs(run.id)] == ["Completed"]


def _flow_runs(name: str) -> list[Any]:
    """Flow runs of the session's server with this name."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def test_only_transient_faults_are_retried(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deterministic error would fail the same way again; an I/O fault may not.
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("A short note about the alpine lakes of the region and their water.")
    real, calls = ingest_group_task.fn, []

    def failing(exc: Exception) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            calls.append(type(exc))
            if calls.count(type(exc)) == 1:
                raise exc
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(ingest_group_task, "fn", failing(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        _run([str(src)], tmp_path / "run1")
    assert calls == [ValueError]
    monkeypatch.setattr(ingest_group_task, "fn", failing(OSError("a full disk")))
    summary, states = _run([str(src)], tmp_path / "run2")
    assert calls == [ValueError, OSError, OSError] and summary["documents"] == 1 and states == ["Completed"]


@pytest.fixture
def local_site(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving one article page; yields its base URL."""
    import functools
    import http.server
    import threading

    site = tmp_path / "site"
    site.mkdir()
    body = "".join(
        f"<p>Paragraph {i} of a real article about alpine lakes and their cold clear water.</p>"
        for i in range(8)
    )
    (site / "article.html").write_text(
        f"<html><head><title>Alpine lakes</title></head><body><article>{body}</article></body></html>"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_list_goes_through_fetch_and_html(prefect_api: str, local_site: str, tmp_path: Path) -> None:
    urls = tmp_path / "seeds.urls"
    urls.write_text(f"# seeds\n{local_site}/article.html\n{local_site}/missing.html\n")
    cfg = IngestConfig.model_validate({"fetch": {"allow_private_addresses": True, "per_host_delay_s": 0}})
    summary, _ = _run([str(urls)], tmp_path / "run", cfg)
    assert summary["per_source"] == {"url": 1} and summary["drop_reasons"] == {"url_http_status": 1}
    docs, _ = _all_rows(Path(summary["stage_dir"]))
    assert docs[0]["title"] == "Alpine lakes" and "Paragraph 7 of a real article" in docs[0]["text"]
    # The default refuses loopback: a pipeline must not become an SSRF tool.
    summary, _ = _run([str(urls)], tmp_path / "run2")
    assert summary["documents"] == 0 and summary["drop_reasons"] == {"url_private_address": 2}
