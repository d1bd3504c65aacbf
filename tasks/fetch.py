"""Fetch URL lists over HTTP(S) politely and safely, and turn the pages into Documents."""

from __future__ import annotations

import asyncio
import email.utils
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from storage.schemas import Document, Drop, new_document
from tasks.netguard import PrivateAddressError, address_refusal, guarded_transport, literal_refusal
from tasks.robots import RobotsCache
from tasks.web import HtmlConfig, decode_html, extract_html

# address_refusal and PrivateAddressError stay importable from here, where callers first found them.
__all__ = ["FetchConfig", "PrivateAddressError", "address_refusal", "fetch_urls", "read_url_list"]

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# A URL has no raw spaces, so "#" at line start or after whitespace opens a comment; fragments stay.
_COMMENT = re.compile(r"(^|\s)#.*$")


class FetchConfig(BaseModel):
    """How URL lists are fetched: concurrency, politeness, limits, retries and safety."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    user_agent: str = "CrucibleBot/0.1 (corpus builder; respects robots.txt)"
    """User-Agent header sent with every request; its first word (before '/') is matched in robots.txt."""
    max_concurrency: int = Field(default=16, ge=1)
    """At most this many requests (and page extractions) in flight at once, over all hosts."""
    per_host_concurrency: int = Field(default=1, ge=1)
    """At most this many requests in flight to one host at once."""
    per_host_delay_s: float = Field(default=1.0, ge=0.0)
    """Minimum seconds between the starts of two requests to the same host (politeness)."""
    connect_timeout_s: float = Field(default=10.0, gt=0.0)
    """Seconds allowed to resolve a host and open a connection."""
    read_timeout_s: float = Field(default=30.0, gt=0.0)
    """Seconds allowed without receiving a single byte before the request is abandoned."""
    deadline_s: float = Field(default=60.0, gt=0.0)
    """Hard limit on one request, headers and body included; cuts off servers that trickle bytes forever."""
    max_bytes: int = Field(default=10_000_000, gt=0)
    """Bodies larger than this (after decompression) are aborted mid-download and dropped as url_too_large."""
    max_retries: int = Field(default=2, ge=0)
    """Extra attempts for transient failures only: connect errors, timeouts, 429/502/503/504."""
    backoff_base_s: float = Field(default=1.0, ge=0.0)
    """First retry waits this long; each further retry doubles it (deterministic, capped by backoff_max_s)."""
    backoff_max_s: float = Field(default=30.0, ge=0.0)
    """Longest wait between two attempts from exponential backoff."""
    max_retry_after_s: float = Field(default=60.0, ge=0.0)
    """A Retry-After up to this many seconds is honoured; a longer one ends the retries at once."""
    max_redirects: int = Field(default=5, ge=0)
    """Redirects followed per URL; one more is dropped as url_too_many_redirects."""
    respect_robots: bool = True
    """Obey robots.txt (fetched once per scheme://host:port); turn off only for sites you own."""
    accept_plain_text: bool = True
    """Keep text/plain responses as documents (decoded, unextracted); otherwise they are url_not_html."""
    allow_private_addresses: bool = False
    """Allow loopback, private, link-local and other non-public addresses (turns the SSRF guard off)."""


def _drop(uri: str, reason: str, detail: str) -> Drop:
    """A Drop of a listed URL."""
    return Drop(uri=uri, source="url", reason=reason, detail=detail)


def read_url_list(path: Path) -> list[str]:
    """URLs listed one per line: blank lines and `#` comments skipped, order kept, exact repeats dropped."""
    lines = (_COMMENT.sub("", line).strip() for line in path.read_text("utf-8-sig", "replace").splitlines())
    return list(dict.fromkeys(line for line in lines if line))


# --- requests: URL checks, politeness, concurrency and retries ---


class _Fail(Exception):
    """A fetch outcome that becomes a Drop with this reason and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _client(cfg: FetchConfig) -> httpx.AsyncClient:
    """An httpx client whose every connection, redirect hops included, passes the SSRF guard."""
    transport = guarded_transport(cfg.max_concurrency, cfg.allow_private_addresses)
    timeout = httpx.Timeout(cfg.read_timeout_s, connect=cfg.connect_timeout_s, pool=cfg.deadline_s)
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        headers={"User-Agent": cfg.user_agent},
        follow_redirects=False,  # followed by hand so every hop is checked, counted and robots-tested
        trust_env=False,  # environment proxies would be mounted in front of the guarded transport
    )


def _parse(raw: str, cfg: FetchConfig, context: str = "") -> httpx.URL:
    """An absolute http(s) URL, refusing literal non-public IPs without touching the network."""
    try:
        url = httpx.URL(raw.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise _Fail("url_invalid", f"{context}cannot parse {raw!r}: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise _Fail("url_invalid", f"{context}{raw!r}: scheme {url.scheme or 'missing'!r} is not http(s)")
    if not url.host:
        raise _Fail("url_invalid", f"{context}{raw!r} has no host")
    if not cfg.allow_private_addresses and (why := literal_refusal(url.host)):
        # Host names are checked later, after resolution, when connecting.
        raise _Fail("url_private_address", f"{context}{url.host} is a {why} address")
    return url


@dataclass
class _HostGate:
    """Per-host concurrency slots and start-time spacing."""

    slots: asyncio.Semaphore
    delay: float
    next_start: float = 0.0

    async def wait_turn(self) -> None:
        """Sleep until this request may start; the slot is reserved first so waiters space out."""
        now = asyncio.get_running_loop().time()
        start = max(now, self.next_start)
        self.next_start = start + self.delay
        await asyncio.sleep(start - now)

    def defer(self, seconds: float) -> None:
        """Push this host's next request at least `seconds` into the future (Retry-After)."""
        self.next_start = max(self.next_start, asyncio.get_running_loop().time() + seconds)


@dataclass
class _State:
    """Everything shared by the fetches of one fetch_urls call."""

    cfg: FetchConfig
    html_cfg: HtmlConfig
    client: httpx.AsyncClient
    net: asyncio.Semaphore
    gates: dict[str, _HostGate] = field(default_factory=dict)
    robots: RobotsCache = field(init=False)

    def __post_init__(self) -> None:
        # robots.txt goes through this state's own requests, so it shares their gates, slots and retries.
        self.robots = RobotsCache(partial(_get_robots, self), partial(_follow, self.cfg))

    def gate(self, host: str) -> _HostGate:
        """The gate for one host, created on first use."""
        if host not in self.gates:
            self.gates[host] = _HostGate(
                asyncio.Semaphore(self.cfg.per_host_concurrency), self.cfg.per_host_delay_s
            )
        return self.gates[host]


@dataclass(frozen=True)
class _Response:
    """One HTTP exchange: the body is read only for 2xx; `record` is set when a page was extracted."""

    url: httpx.URL
    status: int
    reason: str
    headers: httpx.Headers
    body: bytes
    at: datetime
    record: Document | Drop | None = None

    @property
    def redirect(self) -> str | None:
        """The Location of a redirect response, or None when it is not one (or names no target)."""
        location = self.headers.get("location")
        return location if self.status in _REDIRECT_STATUSES and location else None


_Finish = Callable[[_Response, int], Document | Drop]


async def _read_body(resp: httpx.Response, max_bytes: int, truncate: bool) -> bytes:
    """The decoded body, aborting (or truncating, for robots.txt) once it passes max_bytes."""
    declared = resp.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > max_bytes:
        raise _Fail("url_too_large", f"Content-Length {declared} > max_bytes={max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            if truncate:
                chunks.append(chunk[: len(chunk) - (size - max_bytes)])
                break
            raise _Fail("url_too_large", f"body passed max_bytes={max_bytes}; download aborted")
        chunks.append(chunk)
    return b"".join(chunks)


async def _exchange(state: _State, url: httpx.URL, max_bytes: int, truncate: bool) -> _Response:
    """One GET under the deadline; the body is read only for 2xx responses."""
    async with (
        asyncio.timeout(state.cfg.deadline_s),
        state.client.stream("GET", url) as resp,
    ):
        at = datetime.now(UTC)  # when the response arrived: the document's fetched_at
        ok = 200 <= resp.status_code < 300
        body = await _read_body(resp, max_bytes, truncate) if ok else b""
        return _Response(url, resp.status_code, resp.reason_phrase, resp.headers, body, at)


async def _request(
    state: _State, url: httpx.URL, max_bytes: int, truncate: bool, finish: _Finish | None, attempt: int
) -> _Response:
    """One polite request: a host slot, a global slot, the host's turn; extraction keeps the global slot."""
    gate = state.gate(url.host)
    # Host slot first, so requests queued behind a slow host never sit on global slots other hosts could use.
    async with gate.slots:
        await state.net.acquire()
        try:
            await gate.wait_turn()
            resp = await _exchange(state, url, max_bytes, truncate)
        except BaseException:
            state.net.release()
            raise
    try:
        # Extracting under the global slot bounds memory to max_concurrency bodies; a thread keeps the
        # event loop (and so every other request's timers) running meanwhile.
        if finish is not None and 200 <= resp.status < 300:
            resp = replace(resp, record=await asyncio.to_thread(finish, resp, attempt))
    finally:
        state.net.release()
    return resp


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date), or None."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _transport_failure(exc: Exception, cfg: FetchConfig, url: httpx.URL) -> _Fail:
    """The Drop reason for a timeout or a broken connection."""
    if isinstance(exc, TimeoutError):
        return _Fail("url_timeout", f"no complete response from {url} within deadline_s={cfg.deadline_s}")
    if isinstance(exc, httpx.ConnectTimeout):
        return _Fail(
            "url_timeout", f"connect to {url.host} timed out (connect_timeout_s={cfg.connect_timeout_s})"
        )
    if isinstance(exc, httpx.TimeoutException):
        return _Fail("url_timeout", f"{url} sent nothing for read_timeout_s={cfg.read_timeout_s}")
    return _Fail("url_connect_error", f"{type(exc).__name__} from {url}: {exc}")


async def _get(
    state: _State, url: httpx.URL, max_bytes: int, truncate: bool = False, finish: _Finish | None = None
) -> tuple[_Response, int]:
    """GET with retries on transient failures only; returns the last response and the attempts made."""
    cfg = state.cfg
    attempt = 0
    while True:
        attempt += 1
        wait = 0.0
        try:
            resp = await _request(state, url, max_bytes, truncate, finish, attempt)
        except (httpx.TimeoutException, TimeoutError, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            failure = _transport_failure(exc, cfg, url)
            if attempt > cfg.max_retries:
                raise _Fail(failure.reason, f"{failure.detail} (attempts={attempt})") from None
        else:
            if resp.status not in _RETRY_STATUSES or attempt > cfg.max_retries:
                return resp, attempt
            wait = _retry_after(resp.headers) or 0.0
            if wait > cfg.max_retry_after_s:
                return resp, attempt  # waiting less than asked would be impolite and likely fail again
            state.gate(url.host).defer(wait)  # later requests to this host wait too
        backoff = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (attempt - 1))
        await asyncio.sleep(max(backoff, wait))


# --- robots.txt: the network side of tasks.robots ---


async def _get_robots(state: _State, url: httpx.URL, max_bytes: int) -> _Response:
    """GET a robots.txt (truncated past max_bytes, retried as usual); failures are labelled robots.txt."""
    try:
        resp, _ = await _get(state, url, max_bytes, truncate=True)
    except _Fail as fail:
        raise _Fail(fail.reason, f"robots.txt: {fail.detail}") from None
    return resp


def _follow(cfg: FetchConfig, base: httpx.URL, location: str) -> httpx.URL | None:
    """Where a robots.txt redirect leads, or None when the target is unusable or refused."""
    try:
        return _parse(str(base.join(location)), cfg)
    except (_Fail, httpx.InvalidURL):
        return None


async def _check_robots(state: _State, url: httpx.URL) -> None:
    """Raise url_robots_disallowed unless robots.txt (loaded once per origin) allows this URL."""
    if state.cfg.respect_robots and (why := await state.robots.refusal(url, state.cfg.user_agent)):
        raise _Fail("url_robots_disallowed", why)


# --- pages to records ---


def _looks_like_html(body: bytes) -> bool:
    """Sniff HTML in an untyped body by its opening tags."""
    head = body[:1024].lstrip().lower()
    return head.startswith(b"<!doctype html") or b"<html" in head


def _to_record(
    resp: _Response, attempts: int, *, uri: str, cfg: FetchConfig, html_cfg: HtmlConfig, meta: dict[str, Any]
) -> Document | Drop:
    """Turn a 2xx response into a Document (HTML extracted, text/plain kept) or a Drop."""
    ctype = resp.headers.get("content-type", "")
    mime = ctype.split(";", 1)[0].strip().lower()
    meta = {
        **meta,
        "final_url": str(resp.url),
        "http_status": resp.status,
        "content_type": ctype or None,
        "fetch_attempts": meta["fetch_attempts"] + attempts,
    }
    sniffable = mime in ("", "application/octet-stream")
    if mime in _HTML_TYPES or (sniffable and _looks_like_html(resp.body)):
        return extract_html(
            resp.body,
            uri=uri,
            cfg=html_cfg,
            source="url",
            fetched_at=resp.at,
            content_type=ctype or None,
            meta=meta,
        )
    if mime == "text/plain" and cfg.accept_plain_text:
        text, encoding = decode_html(resp.body, ctype)
        text = text.replace("\r\n", "\n").strip()
        if not text:
            return _drop(uri, "url_empty", f"{resp.url} returned an empty text body")
        return new_document(
            text, source="url", uri=uri, fetched_at=resp.at, meta={**meta, "encoding": encoding}
        )
    return _drop(uri, "url_not_html", f"content type {ctype or 'missing'!r} from {resp.url}")


async def _fetch_one(state: _State, listed: str) -> Document | Drop:
    """Fetch one listed URL through robots, retries and redirects; failures raise _Fail."""
    cfg = state.cfg
    url = _parse(listed, cfg)
    attempts = 0
    for hops in range(cfg.max_redirects + 1):
        await _check_robots(state, url)
        meta = {"fetch_attempts": attempts, "redirects": hops}
        finish = partial(_to_record, uri=listed, cfg=cfg, html_cfg=state.html_cfg, meta=meta)
        resp, tries = await _get(state, url, cfg.max_bytes, finish=finish)
        attempts += tries
        if resp.record is not None:
            return resp.record
        location = resp.redirect
        if location is None:
            detail = f"HTTP {resp.status} {resp.reason} from {url} (attempts={attempts})"
            raise _Fail("url_http_status", detail)
        if hops == cfg.max_redirects:
            raise _Fail("url_too_many_redirects", f"more than max_redirects={cfg.max_redirects}; last {url}")
        url = _parse(str(url.join(location)), cfg, context=f"redirect from {url}: ")
    raise AssertionError("unreachable: the loop returns or raises")


async def _settle(state: _State, listed: str) -> Document | Drop:
    """Fetch one URL and turn every failure into a Drop (nothing raises past here)."""
    try:
        return await _fetch_one(state, listed)
    except _Fail as fail:
        return _drop(listed, fail.reason, fail.detail)
    except PrivateAddressError as exc:
        return _drop(listed, "url_private_address", str(exc))
    except httpx.InvalidURL as exc:
        return _drop(listed, "url_invalid", str(exc))
    except Exception as exc:  # a bug or an exotic failure must cost one URL, not the batch
        return _drop(listed, "url_fetch_error", f"{type(exc).__name__}: {exc}")


async def _fetch_all(urls: list[Any], cfg: FetchConfig, html_cfg: HtmlConfig) -> list[Document | Drop]:
    """Fetch every URL concurrently; repeats and non-strings become Drops without a request."""
    first: dict[str, int] = {}
    results: list[Document | Drop | None] = [None] * len(urls)
    for i, url in enumerate(urls):
        if not isinstance(url, str):
            results[i] = _drop(str(url), "url_invalid", f"not a string: {url!r}")
        elif url in first:
            results[i] = _drop(url, "url_duplicate", f"same URL as input #{first[url]}; fetched once")
        else:
            first[url] = i
    async with _client(cfg) as client:
        state = _State(cfg, html_cfg, client, asyncio.Semaphore(cfg.max_concurrency))
        fetched = await asyncio.gather(*(_settle(state, url) for url in first))
    for i, record in zip(first.values(), fetched, strict=True):
        results[i] = record
    return [r for r in results if r is not None]


def fetch_urls(urls: Sequence[str], cfg: FetchConfig, html_cfg: HtmlConfig) -> list[Document | Drop]:
    """Fetch URLs into Documents or Drops, one per input URL in input order (runs its own event loop)."""
    items = list(urls)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_loop = False
    else:
        in_loop = True
    try:
        if not in_loop:
            return asyncio.run(_fetch_all(items, cfg, html_cfg))
        # Called from inside a running loop (an async task): run ours on a fresh thread rather than fail.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, _fetch_all(items, cfg, html_cfg)).result()
    except Exception as exc:  # per-URL failures are already Drops; this is the batch itself failing
        detail = f"batch failed: {type(exc).__name__}: {exc}"
        return [_drop(str(u), "url_fetch_error", detail) for u in items]
