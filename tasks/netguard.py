"""SSRF guard for the URL fetcher: every connection goes to an address that was resolved and checked here."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import httpcore
import httpx

_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")


class PrivateAddressError(Exception):
    """A host resolved to an address the fetcher must not connect to."""


def address_refusal(address: str) -> str | None:
    """Why an IP address must not be fetched from (e.g. "loopback"), or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 inside IPv6 (::ffff:a.b.c.d, 6to4, NAT64) reaches the IPv4 host it names: judge that host.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and (why := address_refusal(str(embedded))):
            return f"IPv4-embedded {why}"
        if embedded is not None and ip not in _SIXTOFOUR:
            return (
                None  # Python calls ::ffff:0:0/96 and 64:ff9b::/96 reserved; a public IPv4 inside is public
            )
        if ip in _UNIQUE_LOCAL:
            return "unique-local"
    for kind in ("loopback", "link_local", "site_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}", False):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-global"


def literal_refusal(host: str) -> str | None:
    """Why a URL's host, if it is a literal IP, must not be fetched from; None for public IPs and names."""
    try:
        return address_refusal(host)
    except ValueError:
        return None  # a host name: checked after resolution, when connecting


async def _resolve(host: str, port: int) -> list[str]:
    """The addresses a host name resolves to, in resolver order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host once, refuses non-public addresses, then connects to the checked IP itself."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        """Open a TCP connection to a checked address of `host` (TLS still verifies `host` itself)."""
        try:
            async with asyncio.timeout(timeout):
                addresses = await _resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took over {timeout}s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not self._allow_private:
            for ip in addresses:
                if why := address_refusal(ip):
                    raise PrivateAddressError(f"{host} resolves to {ip} ({why})")
        error: Exception = httpcore.ConnectError(f"{host} resolved to no addresses")
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(ip, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop (httpcore's own connect retries are off, but the API needs it)."""
        await self._inner.sleep(seconds)


def guarded_transport(max_connections: int, allow_private: bool) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection passes the SSRF guard, pooling up to max_connections."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    # trust_env=False: an HTTP(S)_PROXY from the environment would resolve hosts beyond our guard.
    transport = httpx.AsyncHTTPTransport(trust_env=False, limits=limits)
    # httpx has no public hook for httpcore's network backend, so swap in a pool built with ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),  # trusts SSL_CERT_FILE/SSL_CERT_DIR, like httpx
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        network_backend=_GuardedBackend(allow_private),
    )
    return transport
