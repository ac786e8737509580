"""Protection of the HTTP API: Host allow-list, browser-request rules, bearer token.

A page the operator opens in a browser must not be able to drive or read the worker API:
- DNS rebinding sends the attacker's name as ``Host``: only loopback names, the configured
  web host and ``TOKENMETER_ALLOWED_HOSTS`` are served (403 otherwise).
- Cross-site "simple requests" (forms, ``text/plain`` fetches) need no CORS preflight: every
  mutating request must say ``Content-Type: application/json`` (415 otherwise), which a
  browser sends cross-origin only after a preflight this API never grants. ``POST
  /api/events`` also takes ``application/x-ndjson``: not CORS-safelisted either, so a
  browser preflights it just the same.
- A browser marks where a request comes from: an ``Origin`` that is not this server, or
  ``Sec-Fetch-Site: cross-site``/``same-site``, is refused (403). The dashboard's own calls
  are same-origin; the CLI, the SDK and curl send neither header.

``/health`` and ``/metrics`` skip these checks: Kubernetes probes and Prometheus address a
pod by its IP, which no allow-list can know; they carry no tenant data and change nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import ConfigError
from pipeline.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD_BINDS = {"0.0.0.0", "::", ""}  # noqa: S104 - names of "every interface", not hosts
# the dashboard's page, script, style and Chart.js: no data in them; the data they fetch
# comes from /api routes, which need the token
PAGE_PATHS = {"/", "/static/app.js", "/static/style.css", "/static/vendor/chart.umd.min.js"}
PROBE_PATHS = {"/health", "/metrics"}
OPEN_PATHS = PROBE_PATHS | PAGE_PATHS  # probes and the page; no tenant data
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
FOREIGN_SITES = {"cross-site", "same-site"}
JSON_TYPES = frozenset({"application/json"})
# routes that also take NDJSON bodies (HTTP ingest): path -> media types accepted
BODY_TYPES = {"/api/events": JSON_TYPES | {"application/x-ndjson"}}

Refusal = tuple[int, str]


def check_bind(settings: Settings) -> None:
    """Refuse to serve beyond loopback without TOKENMETER_API_TOKEN."""
    if settings.web_host not in LOOPBACK and settings.api_token is None:
        raise ConfigError(
            f"web host {settings.web_host} is reachable from other machines; set "
            "TOKENMETER_API_TOKEN (every /api route then needs 'Authorization: Bearer ...') "
            "or bind TOKENMETER_WEB_HOST=127.0.0.1"
        )


def token_ok(header: str | None, expected: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), expected.encode())


def host_name(host: str) -> str | None:
    """The name part of a ``Host`` header (``[::1]:6066`` -> ``::1``); None when malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        name, sep, rest = host[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name or None
    name, sep, port = host.partition(":")
    if sep and not port.isdigit():
        return None
    if not name or any(c in name for c in "/@ \t\\"):
        return None
    return name.rstrip(".")


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """Host names this worker answers to: loopback, its web host, TOKENMETER_ALLOWED_HOSTS."""
    names = set(LOOPBACK) | set(settings.allowed_host_names)
    if settings.web_host.lower() not in WILDCARD_BINDS:
        names.add(settings.web_host.strip("[]").lower())
    return frozenset(names)


def may_see_details(headers: Mapping[str, str], settings: Settings) -> bool:
    """True when a probe path may show details: an allowed Host, and the token when set."""
    if host_name(headers.get("Host", "")) not in allowed_hosts(settings):
        return False
    return settings.api_token is None or token_ok(headers.get("Authorization"),
                                                  settings.api_token.get_secret_value())


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def refusal(method: str, path: str, headers: Mapping[str, str],
            allowed: frozenset[str]) -> Refusal | None:
    """Why a request must be refused (status, message), or None when it may go on."""
    if path in PROBE_PATHS:
        return None
    raw_host = headers.get("Host", "")
    if host_name(raw_host) not in allowed:
        return 403, (f"Host {raw_host!r} is not served here (DNS rebinding guard); reach the "
                     "API by 127.0.0.1 or localhost, or add the name to "
                     "TOKENMETER_ALLOWED_HOSTS (comma-separated)")
    types = BODY_TYPES.get(path, JSON_TYPES)
    if method.upper() in MUTATING and _media_type(headers.get("Content-Type")) not in types:
        wanted = " or ".join(f"'Content-Type: {t}'" for t in sorted(types))
        return 415, (f"{method.upper()} needs {wanted} (got "
                     f"{headers.get('Content-Type') or 'none'!r}); send the body as JSON")
    if method.upper() in ("GET", "HEAD") and path in PAGE_PATHS:
        return None  # a link from another site may open the dashboard page
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or parts.netloc != raw_host.strip().lower():
            return 403, (f"cross-origin request from {origin!r} refused; the API serves its "
                         "own dashboard and non-browser clients (CLI, SDK, curl) only")
    site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if site in FOREIGN_SITES:
        return 403, (f"request from another site (Sec-Fetch-Site: {site}) refused; open the "
                     "dashboard from this worker's own address")
    return None


def middlewares(settings: Settings) -> list[Any]:
    """aiohttp middlewares guarding every route (Host, content type, origin; the token when
    set): the worker's and the standalone ingest process's."""
    from aiohttp import web

    allowed = allowed_hosts(settings)

    @web.middleware
    async def guard(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        refused = refusal(request.method, request.path, request.headers, allowed)
        if refused is not None:
            status, message = refused
            return web.json_response({"error": message}, status=status)
        return await handler(request)

    if settings.api_token is None:
        return [guard]
    expected = settings.api_token.get_secret_value()

    @web.middleware
    async def require_token(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        if request.path in OPEN_PATHS or token_ok(request.headers.get("Authorization"),
                                                  expected):
            return await handler(request)
        return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})

    return [guard, require_token]


def install(app: Any, settings: Settings) -> None:
    """Guard every route (Host, content type, origin), and require the token when set."""
    app.web.web_app.middlewares.extend(middlewares(settings))
