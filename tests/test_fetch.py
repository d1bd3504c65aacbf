"""URL fetching against a real local HTTP server: politeness, limits, retries, redirects, robots, SSRF."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from storage.schemas import Document, Drop, doc_id
from tasks import netguard
from tasks.fetch import FetchConfig, address_refusal, fetch_urls, read_url_list
from tasks.web import HtmlConfig

HTML = (
    "<!doctype html><html><head><title>Good page</title></head><body><article>"
    + "<p>The river carried silt down from the hills, and the farmers on its banks were glad of it. "
    "Every spring the water rose and every summer it fell back, leaving a dark layer behind.</p>"
    * 4
    + "</article></body></html>"
).encode()
TEXT = "Plain words in a plain file.\nSecond line of the file."
HTML_CFG = HtmlConfig()


class Site:
    """What the test server saw: hits per path, request start times, concurrency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.starts: list[tuple[str, float]] = []
        self.hosts: list[str] = []
        self.active = 0
        self.max_active = 0
        self.robots_status = 200

    def enter(self, path: str, host: str) -> None:
        """Record a request arriving."""
        with self.lock:
            self.hits[path] += 1
            self.starts.append((path, time.monotonic()))
            self.hosts.append(host)
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def leave(self) -> None:
        """Record a request finishing."""
        with self.lock:
            self.active -= 1

    def times(self, path: str) -> list[float]:
        """Start times of the requests to one path (query included)."""
        return [t for p, t in self.starts if p == path]


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one Site."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

        def send(self, status: int, body: bytes = b"", ctype: str = "text/html", **headers: str) -> None:
            """Send a complete response."""
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            """Route by path; clients that hang up early are expected here."""
            site.enter(self.path, self.headers.get("Host", ""))
            try:
                self.route(urlsplit(self.path).path, parse_qs(urlsplit(self.path).query))
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                site.leave()

        def route(self, path: str, query: dict[str, list[str]]) -> None:
            """The behaviours under test."""
            n = site.hits[self.path]
            if path == "/robots.txt":
                self.send(site.robots_status, b"User-agent: *\nDisallow: /private\n", "text/plain")
            elif path in ("/good", "/private/page"):
                self.send(200, HTML, "text/html; charset=utf-8")
            elif path == "/slow":
                time.sleep(0.3)
                self.send(200, HTML)
            elif path == "/missing":
                self.send(404, b"nope")
            elif path == "/error":
                self.send(500, b"broken")
            elif path == "/down":
                self.send(503, b"down")
            elif path == "/flaky":
                self.send(503, b"busy") if n == 1 else self.send(200, HTML)
            elif path == "/busy":
                self.send(429, b"slow down", Retry_After="1") if n == 1 else self.send(200, HTML)
            elif path == "/busy-long":
                self.send(429, b"slow down", Retry_After="3600")
            elif path.startswith("/r/"):
                left = int(path[3:])
                self.send(302, Location=f"/r/{left - 1}" if left > 1 else "/good")
            elif path == "/loop":
                self.send(302, Location="/loop")
            elif path == "/redirect-to":
                self.send(302, Location=query["u"][0])
            elif path == "/huge":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()  # no Content-Length: the size is only known by reading
                for _ in range(64):
                    self.wfile.write(b"<p>" + b"x" * 32_000 + b"</p>")
            elif path == "/huge-declared":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.write(b"<html>")
            elif path == "/gzip-bomb":  # 2 KB on the wire, 2 MB once decompressed
                self.send(200, gzip.compress(b"<p>" + b"a" * 2_000_000), Content_Encoding="gzip")
            elif path == "/hang":
                time.sleep(3)
                self.send(200, HTML)
            elif path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(100):  # one byte every 50 ms: never idle long enough for the read timeout
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif path == "/text":
                self.send(200, TEXT.encode(), "text/plain; charset=utf-8")
            elif path == "/pdf":
                self.send(200, b"%PDF-1.4 fake", "application/pdf")
            else:
                self.send(404)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Site]]:
    """A threaded HTTP server on 127.0.0.1 (port 0); yields its base URL and what it saw."""
    site = Site()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    httpd.daemon_threads = True
    httpd.block_on_close = False  # /hang handlers may still be sleeping at teardown
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", site
    httpd.shutdown()
    httpd.server_close()


def cfg(**overrides: Any) -> FetchConfig:
    """A fast test config that may reach loopback."""
    base: dict[str, Any] = {
        "allow_private_addresses": True,
        "per_host_delay_s": 0.0,
        "per_host_concurrency": 4,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "deadline_s": 5.0,
        "backoff_base_s": 0.05,
    }
    return FetchConfig(**(base | overrides))


def drop(record: Document | Drop) -> Drop:
    """The record, asserted to be a Drop."""
    assert isinstance(record, Drop), f"expected a Drop, got a Document from {record.uri}"
    return record


def test_read_url_list_skips_comments_blanks_and_repeats(tmp_path: Path) -> None:
    path = tmp_path / "list.urls"
    path.write_text(
        "\ufeff# seed list\n\nhttps://a.example/x\n  https://b.example/y#frag  \n"
        "https://a.example/x\nhttps://c.example/z   # trailing note\n#https://d.example/\n",
        encoding="utf-8",
    )
    assert read_url_list(path) == ["https://a.example/x", "https://b.example/y#frag", "https://c.example/z"]


def test_good_page_becomes_a_url_document(server: tuple[str, Site]) -> None:
    base, _ = server
    url = f"{base}/good"
    before = datetime.now(UTC)
    [doc] = fetch_urls([url], cfg(), HTML_CFG)
    assert isinstance(doc, Document), doc
    assert doc.source == "url" and doc.uri == url and doc.id == doc_id(url)
    assert doc.title == "Good page" and "river carried silt" in doc.text
    assert before <= doc.fetched_at <= datetime.now(UTC)
    assert doc.meta["final_url"] == url and doc.meta["http_status"] == 200
    assert doc.meta["content_type"] == "text/html; charset=utf-8"
    assert doc.meta["fetch_attempts"] == 1 and doc.meta["redirects"] == 0


def test_text_plain_is_kept_and_other_types_dropped(server: tuple[str, Site]) -> None:
    base, _ = server
    text_doc, pdf = fetch_urls([f"{base}/text", f"{base}/pdf"], cfg(), HTML_CFG)
    assert isinstance(text_doc, Document) and text_doc.text == TEXT
    assert drop(pdf).reason == "url_not_html" and "application/pdf" in pdf.detail
    [refused] = fetch_urls([f"{base}/text"], cfg(accept_plain_text=False), HTML_CFG)
    assert drop(refused).reason == "url_not_html"


def test_invalid_urls_duplicates_and_order(server: tuple[str, Site]) -> None:
    base, site = server
    urls = [
        "ftp://example.com/f",
        f"{base}/good",
        "not a url",
        "http://",
        "javascript:alert(1)",
        f"{base}/good",
    ]
    results = fetch_urls([*urls, 42], cfg(), HTML_CFG)  # type: ignore[list-item]
    assert [r.uri for r in results] == [*urls, "42"]
    assert isinstance(results[1], Document)
    reasons = [drop(r).reason for i, r in enumerate(results) if i != 1]
    assert reasons == ["url_invalid"] * 4 + ["url_duplicate", "url_invalid"]
    assert site.hits["/good"] == 1


def test_robots_txt_is_respected_and_fetched_once(server: tuple[str, Site]) -> None:
    base, site = server
    urls = [f"{base}/private/page", f"{base}/good", f"{base}/text"]
    blocked, good, text = fetch_urls(urls, cfg(), HTML_CFG)
    assert drop(blocked).reason == "url_robots_disallowed" and "/private/page" in blocked.detail
    assert isinstance(good, Document) and isinstance(text, Document)
    assert site.hits["/robots.txt"] == 1 and site.hits["/private/page"] == 0
    [ignored] = fetch_urls([f"{base}/private/page"], cfg(respect_robots=False), HTML_CFG)
    assert isinstance(ignored, Document)


@pytest.mark.parametrize(("status", "allowed"), [(503, False), (404, True)])
def test_robots_txt_errors(server: tuple[str, Site], status: int, allowed: bool) -> None:
    base, site = server
    site.robots_status = status
    [record] = fetch_urls([f"{base}/good"], cfg(max_retries=0), HTML_CFG)
    if allowed:  # RFC 9309: a missing robots.txt allows everything ...
        assert isinstance(record, Document)
    else:  # ... an unreachable one (5xx) means assume complete disallow
        assert drop(record).reason == "url_robots_disallowed" and "unreachable" in record.detail
        assert site.hits["/good"] == 0


def test_refused_connection_is_a_retried_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again on exit, so nothing listens there
    start = time.monotonic()
    [record] = fetch_urls([f"http://127.0.0.1:{port}/x"], cfg(max_retries=1, respect_robots=False), HTML_CFG)
    assert drop(record).reason == "url_connect_error" and "attempts=2" in record.detail
    assert time.monotonic() - start < 2


def test_http_errors_are_not_retried_but_503_is(server: tuple[str, Site]) -> None:
    base, site = server
    missing, error, flaky, down = fetch_urls(
        [f"{base}/missing", f"{base}/error", f"{base}/flaky", f"{base}/down"], cfg(max_retries=2), HTML_CFG
    )
    assert drop(missing).reason == "url_http_status" and "HTTP 404" in missing.detail
    assert drop(error).reason == "url_http_status" and "HTTP 500" in error.detail
    assert isinstance(flaky, Document) and flaky.meta["fetch_attempts"] == 2
    assert (
        drop(down).reason == "url_http_status" and "HTTP 503" in down.detail and "attempts=3" in down.detail
    )
    assert (site.hits["/missing"], site.hits["/error"], site.hits["/flaky"], site.hits["/down"]) == (
        1,
        1,
        2,
        3,
    )


def test_retry_after_is_honoured_within_the_cap(server: tuple[str, Site]) -> None:
    base, site = server
    start = time.monotonic()
    busy, too_long = fetch_urls([f"{base}/busy", f"{base}/busy-long"], cfg(max_retry_after_s=5), HTML_CFG)
    assert isinstance(busy, Document) and busy.meta["fetch_attempts"] == 2
    first, second = site.times("/busy")
    assert second - first >= 0.95  # Retry-After: 1, though backoff alone would wait 0.05 s
    assert drop(too_long).reason == "url_http_status" and "HTTP 429" in too_long.detail
    assert site.hits["/busy-long"] == 1  # 3600 s is over the cap: give up rather than hammer
    assert time.monotonic() - start < 3


def test_redirect_chain_and_loop(server: tuple[str, Site]) -> None:
    base, site = server
    chain, loop = fetch_urls([f"{base}/r/3", f"{base}/loop"], cfg(max_redirects=4), HTML_CFG)
    assert isinstance(chain, Document)
    assert chain.uri == f"{base}/r/3" and chain.id == doc_id(f"{base}/r/3")
    assert chain.meta["final_url"] == f"{base}/good" and chain.meta["redirects"] == 3
    assert chain.meta["fetch_attempts"] == 4
    assert drop(loop).reason == "url_too_many_redirects" and "max_redirects=4" in loop.detail
    assert site.hits["/loop"] == 5


def test_bodies_over_the_cap_are_aborted(server: tuple[str, Site]) -> None:
    base, _ = server
    start = time.monotonic()
    urls = [f"{base}/huge", f"{base}/huge-declared", f"{base}/gzip-bomb"]
    huge, declared, bomb = fetch_urls(urls, cfg(max_bytes=100_000), HTML_CFG)
    assert drop(huge).reason == "url_too_large" and "aborted" in huge.detail
    assert drop(bomb).reason == "url_too_large" and "aborted" in bomb.detail  # the cap counts decoded bytes
    assert drop(declared).reason == "url_too_large" and "Content-Length 1000000000" in declared.detail
    assert time.monotonic() - start < 3


def test_hanging_server_times_out_and_is_retried(server: tuple[str, Site]) -> None:
    base, site = server
    start = time.monotonic()
    [hang] = fetch_urls([f"{base}/hang"], cfg(read_timeout_s=0.3, max_retries=1), HTML_CFG)
    elapsed = time.monotonic() - start
    assert drop(hang).reason == "url_timeout" and "read_timeout_s=0.3" in hang.detail
    assert "attempts=2" in hang.detail and site.hits["/hang"] == 2
    assert 0.6 <= elapsed < 2.0


def test_trickling_server_is_cut_off_by_the_deadline(server: tuple[str, Site]) -> None:
    base, _ = server
    start = time.monotonic()
    [slow] = fetch_urls([f"{base}/trickle"], cfg(read_timeout_s=0.5, deadline_s=0.8, max_retries=0), HTML_CFG)
    elapsed = time.monotonic() - start
    assert drop(slow).reason == "url_timeout" and "deadline_s=0.8" in slow.detail
    assert 0.75 <= elapsed < 2.0  # the trickle would last 5 s and never trips the read timeout


def test_requests_to_one_host_are_spaced_by_the_delay(server: tuple[str, Site]) -> None:
    base, site = server
    urls = [f"{base}/good?i={i}" for i in range(4)]
    results = fetch_urls(urls, cfg(per_host_delay_s=0.25, max_concurrency=8), HTML_CFG)
    assert all(isinstance(r, Document) for r in results)
    starts = sorted(t for _, t in site.starts)
    assert len(starts) == 5  # robots.txt + 4 pages, all behind the same gate
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.2, gaps  # without the gate they are milliseconds apart


@pytest.mark.parametrize(("total", "per_host", "expected"), [(3, 10, 3), (10, 2, 2)])
def test_concurrency_is_bounded(server: tuple[str, Site], total: int, per_host: int, expected: int) -> None:
    base, site = server
    urls = [f"{base}/slow?i={i}" for i in range(8)]
    conf = cfg(max_concurrency=total, per_host_concurrency=per_host, respect_robots=False)
    results = fetch_urls(urls, conf, HTML_CFG)
    assert all(isinstance(r, Document) for r in results)
    assert site.max_active == expected  # reached, so the bound (not luck) is what held it there


def test_callable_from_inside_a_running_event_loop(server: tuple[str, Site]) -> None:
    base, _ = server

    async def caller() -> list[Document | Drop]:
        return fetch_urls([f"{base}/good"], cfg(), HTML_CFG)

    [doc] = asyncio.run(caller())
    assert isinstance(doc, Document)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-global"),
        ("::1", "loopback"),
        ("fd00::1", "unique-local"),
        ("fe80::1%eth0", "link-local"),
        ("::ffff:127.0.0.1", "IPv4-embedded loopback"),
        ("::ffff:10.0.0.1", "IPv4-embedded private"),
        ("2002:7f00:1::", "IPv4-embedded loopback"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_refusal(address: str, kind: str | None) -> None:
    assert address_refusal(address) == kind


def test_non_public_addresses_are_refused_by_default(server: tuple[str, Site]) -> None:
    base, site = server
    port = base.rsplit(":", 1)[1]
    urls = [
        f"http://127.0.0.1:{port}/good",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::1]:{port}/good",
        f"http://[::ffff:127.0.0.1]:{port}/good",
        f"http://localhost:{port}/good",  # a name: refused after resolution, when connecting
    ]
    start = time.monotonic()
    results = fetch_urls(urls, FetchConfig(connect_timeout_s=5), HTML_CFG)
    assert [drop(r).reason for r in results] == ["url_private_address"] * len(urls)
    assert "loopback" in results[-1].detail
    assert time.monotonic() - start < 2  # refused before connecting, so 10.0.0.1 never got to time out
    assert sum(site.hits.values()) == 0


def test_connects_to_the_checked_address_not_a_second_lookup(
    server: tuple[str, Site], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, site = server
    port = base.rsplit(":", 1)[1]

    async def fake_resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "site.test" else ["127.0.0.2"]

    monkeypatch.setattr(netguard, "_resolve", fake_resolve)
    # site.test exists only in our resolver, so a document proves httpx dialled the IP we checked.
    [doc] = fetch_urls([f"http://site.test:{port}/good"], cfg(), HTML_CFG)
    assert isinstance(doc, Document) and site.hosts[-1] == f"site.test:{port}"
    [refused] = fetch_urls([f"http://site.test:{port}/good"], cfg(allow_private_addresses=False), HTML_CFG)
    assert drop(refused).reason == "url_private_address" and "127.0.0.1 (loopback)" in refused.detail


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/good", "http://evil.test:{port}/good"])
def test_redirect_hops_are_checked_too(
    server: tuple[str, Site], monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    base, site = server
    port = base.rsplit(":", 1)[1]
    real_refusal = netguard.address_refusal

    async def fake_resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.2"] if host == "evil.test" else [host]

    def only_127_0_0_2(address: str) -> str | None:
        # Pretend 127.0.0.1 (the test server) is public, so only the redirect target is non-public.
        return None if address == "127.0.0.1" else real_refusal(address)

    # Both guard checks (literal IPs in URLs, resolved addresses when connecting) look these up in netguard.
    monkeypatch.setattr(netguard, "_resolve", fake_resolve)
    monkeypatch.setattr(netguard, "address_refusal", only_127_0_0_2)
    url = f"{base}/redirect-to?u={target.format(port=port)}"
    [refused] = fetch_urls([url], cfg(allow_private_addresses=False), HTML_CFG)
    assert drop(refused).reason == "url_private_address" and "127.0.0.2" in refused.detail
    assert site.hits[urlsplit(url).path + "?" + urlsplit(url).query] == 1 and site.hits["/good"] == 0
