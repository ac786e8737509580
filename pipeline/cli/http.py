"""A small HTTP client for the worker API (used by the CLI)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from pipeline.errors import QueryRefused, StoreError
from pipeline.settings import Settings


def _send(url: str, settings: Settings, data: bytes | None, method: str
          ) -> tuple[bytes, dict[str, str]]:
    # JSON content type on every call: the API refuses mutating requests without it (415)
    headers = {"Content-Type": "application/json"}
    if settings.api_token is not None:
        headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - our own API
            return resp.read(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        if exc.code == 400:
            raise QueryRefused(str(message)) from None
        raise StoreError(f"worker API {url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise StoreError(
            f"cannot reach the worker API at {url} ({exc}); is the worker running? "
            "(TOKENMETER_WEB_HOST / TOKENMETER_WEB_PORT)"
        ) from None


def _request(url: str, settings: Settings, data: bytes | None, method: str) -> Any:
    return json.loads(_send(url, settings, data, method)[0])


def post_json(url: str, body: Any, settings: Settings) -> Any:
    """POST JSON to the worker API and return the decoded answer."""
    return _request(url, settings, json.dumps(body).encode(), "POST")


def get_json(url: str, settings: Settings) -> Any:
    """GET JSON from the worker API."""
    return _request(url, settings, None, "GET")


def post_for_bytes(url: str, body: Any, settings: Settings) -> tuple[bytes, dict[str, str]]:
    """POST JSON to the worker API; return the raw answer and its headers, names lower-case."""
    return _send(url, settings, json.dumps(body).encode(), "POST")
