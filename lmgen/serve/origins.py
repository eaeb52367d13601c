"""Which web pages may call ``lmgen serve``: the Host and Origin rules against DNS rebinding and
cross-site requests.

A server on 127.0.0.1 is still reachable from any web page its user opens: a page can send
requests to it (cross-site, with an ``Origin`` header), and a page whose domain its attacker
re-points at 127.0.0.1 (DNS rebinding) reads the answers too, since the browser then sees the
same origin. Its requests carry the attacker's name in ``Host``, so a server bound to loopback
answers only a loopback ``Host``; and a request from a page (one with an ``Origin``) is
answered only for a loopback page or one the operator listed (``--cors-origins``).
"""

from __future__ import annotations

import ipaddress

from lmgen.errors import InputError

LOCAL_SCHEMES = ("http", "https")


def is_loopback(name: str) -> bool:
    """``localhost``, or an address of the loopback network (127.0.0.0/8, ::1), brackets allowed."""
    name = name.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(authority: str) -> str:
    """The name part of a ``Host`` header or an origin's authority (``[::1]:8000`` → ``::1``)."""
    authority = authority.strip()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if ":" in authority else authority


def host_allowed(host_header: str | None, bound: str) -> bool:
    """A server bound to loopback answers only requests that name a loopback host (a browser that
    was pointed at it by a rebound DNS name sends that name). Bound elsewhere, any name is fine:
    the operator chose to be reachable by other names. A request without Host (HTTP/1.0) is no
    browser's."""
    if host_header is None or not is_loopback(bound):
        return True
    return is_loopback(host_name(host_header))


def normalized(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str, listed: tuple[str, ...]) -> bool:
    """A page on this machine (``http://localhost:*``, ``http://127.0.0.1:*``, ``http://[::1]:*``),
    one listed, or any with ``*`` listed. ``null`` (a sandboxed page, a file) is none of them."""
    origin = normalized(origin)
    if "*" in listed or origin in {normalized(o) for o in listed}:
        return True
    scheme, _, authority = origin.partition("://")
    return scheme in LOCAL_SCHEMES and bool(authority) and is_loopback(host_name(authority))


def cors_origins(text: str | None) -> tuple[str, ...]:
    """``--cors-origins``: a comma-separated list of origins (``scheme://host[:port]``), or ``*``;
    anything else is an InputError (a path after the host would never match a browser's Origin)."""
    origins = tuple(normalized(part) for part in (text or "").split(",") if part.strip())
    for origin in origins:
        scheme, _, authority = origin.partition("://")
        if origin != "*" and (not scheme or not authority or "/" in authority):
            raise InputError(f"cors-origins: {origin!r} is not an origin (scheme://host[:port]) or *")
    return origins
