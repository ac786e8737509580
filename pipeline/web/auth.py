"""Bearer-token protection of the HTTP API (required when bound beyond loopback)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.errors import ConfigError
from pipeline.settings import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# the dashboard's page, script, style and Chart.js: no data in them; the data they fetch
# comes from /api routes, which need the token
PAGE_PATHS = {"/", "/static/app.js", "/static/style.css", "/static/vendor/chart.umd.min.js"}
OPEN_PATHS = {"/health", "/metrics"} | PAGE_PATHS  # probes and the page; no tenant data


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


def install(app: Any, settings: Settings) -> None:
    """Require the bearer token on every route but the probes, when a token is set."""
    if settings.api_token is None:
        return
    from aiohttp import web

    expected = settings.api_token.get_secret_value()

    @web.middleware
    async def require_token(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        if request.path in OPEN_PATHS or token_ok(request.headers.get("Authorization"),
                                                  expected):
            return await handler(request)
        return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})

    app.web.web_app.middlewares.append(require_token)
