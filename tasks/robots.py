"""robots.txt for the URL fetcher: loaded once per origin and parsed (RFC 9309 via the standard library)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.robotparser import RobotFileParser

import httpx

from tasks.netguard import PrivateAddressError

# RFC 9309: parse at least 500 KiB of robots.txt and follow at least five redirects.
ROBOTS_MAX_BYTES = 512 * 1024
ROBOTS_MAX_REDIRECTS = 5


class Reply(Protocol):
    """The parts of an HTTP response that robots.txt loading reads."""

    @property
    def status(self) -> int:
        """The HTTP status code."""
        ...

    @property
    def body(self) -> bytes:
        """The body (read for 2xx only)."""
        ...

    @property
    def redirect(self) -> str | None:
        """The Location of a redirect response, or None when it is not one."""
        ...


# The fetcher supplies the network side, so this module needs neither its config nor its request code.
Get = Callable[[httpx.URL, int], Awaitable[Reply]]
"""One GET of a robots.txt URL whose body is truncated (not refused) past the given byte count."""
Follow = Callable[[httpx.URL, str], httpx.URL | None]
"""The URL a redirect's Location leads to from a base URL, or None when it may not be followed."""


def robots_rules(status: int, body: bytes) -> RobotFileParser:
    """Rules for a robots.txt answer: 2xx is parsed, other 4xx allow all, 429/5xx disallow all."""
    rules = RobotFileParser()
    if 200 <= status < 300:
        rules.parse(body.decode("utf-8", "replace").splitlines())
    elif 400 <= status < 500 and status != 429:
        rules.allow_all = True  # "unavailable": RFC 9309 lets crawlers fetch anything
    else:
        rules.disallow_all = True  # "unreachable": RFC 9309 requires assuming complete disallow
    return rules


async def load_robots(url: httpx.URL, get: Get, follow: Follow) -> RobotFileParser:
    """Fetch and parse robots.txt for a URL's origin, following a few redirects."""
    target = url.copy_with(path="/robots.txt", query=None, fragment=None)
    for hop in range(ROBOTS_MAX_REDIRECTS + 1):
        try:
            resp = await get(target, ROBOTS_MAX_BYTES)
        except PrivateAddressError:
            if hop == 0:
                raise  # the site itself is private: reported as url_private_address
            return robots_rules(404, b"")  # a redirect we may not follow: robots.txt unavailable
        if resp.redirect is None:
            return robots_rules(resp.status, resp.body)
        followed = follow(target, resp.redirect)
        if followed is None:
            break
        target = followed
    return robots_rules(404, b"")  # too many or unusable redirects: unavailable, per RFC 9309


class RobotsCache:
    """robots.txt rules per origin (scheme://host:port), each loaded once however many requests wait."""

    def __init__(self, get: Get, follow: Follow) -> None:
        self._get = get
        self._follow = follow
        self._loads: dict[str, asyncio.Task[RobotFileParser]] = {}

    async def refusal(self, url: httpx.URL, user_agent: str) -> str | None:
        """Why robots.txt forbids `user_agent` to fetch `url`, or None when it allows it."""
        origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        if origin not in self._loads:
            # A shared task, so concurrent first requests to one origin trigger a single robots.txt fetch.
            self._loads[origin] = asyncio.ensure_future(load_robots(url, self._get, self._follow))
        rules = await self._loads[origin]
        if rules.can_fetch(user_agent, str(url)):
            return None
        why = " (robots.txt unreachable: disallow all)" if rules.disallow_all else ""
        return f"{origin}/robots.txt disallows {url.raw_path.decode()}{why}"
