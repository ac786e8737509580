"""Property test over every route of a real worker's HTTP API (token set).

Random methods, path parameters, query strings, bodies, content types, Host / Origin headers
and credentials: the API never answers 500, always answers within a bounded time, and a
request without the right token never changes budgets, the ledger or the exports directory.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.catalog import load_catalog
from pipeline.core.scoring import load_policy
from pipeline.embedded.broker import EmbeddedBroker
from pipeline.runtime.ops import OPS
from pipeline.settings import load_settings
from pipeline.store.client import Store
from pipeline.web.auth import OPEN_PATHS
from tests.helpers import NOW, ApiWorker, free_port, produce, subprocess_env

pytestmark = pytest.mark.integration
TOKEN = "fuzz-" + "t0k3n" * 4
TENANT = "tenant-00003"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def registered_routes(store: Store) -> list[tuple[str, str]]:
    """(method, path pattern) of every view the worker registers, read from a built app."""
    from pipeline.stream.app import build_app

    s = load_settings(web_port=free_port(), api_token=TOKEN)
    app = build_app(s, store, load_catalog(), load_policy()).app
    out = {(r.method, r.resource.canonical) for r in app.web.web_app.router.routes()
           if r.resource is not None and r.method != "HEAD"}
    return sorted(out)


@pytest.fixture(scope="module")
def routes(chdb_root: Store) -> list[tuple[str, str]]:
    found = registered_routes(chdb_root)
    paths = {p for _, p in found}
    # the routes this test must cover: fail loudly if registration changes under it
    assert {"/api/query", "/api/budgets/{budget_id}", "/api/ops/{name}",
            "/api/decision", "/api/forecast", "/health"} <= paths, paths
    return found


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ApiWorker]:
    """A worker with TOKENMETER_API_TOKEN set, a budget and a few stored events."""
    tmp = tmp_path_factory.mktemp("fuzz")
    prefix = f"fz{uuid.uuid4().hex[:8]}-"
    s = load_settings(kafka_bootstrap=broker.bootstrap, data_dir=str(tmp / "data"),
                      web_port=free_port(), topic_prefix=prefix, app_id=f"tm-{prefix}",
                      partitions=2, api_token=TOKEN)
    w = ApiWorker(s, {**subprocess_env(s), "TOKENMETER_API_TOKEN": TOKEN})
    try:
        w.wait_ready()
        events = [{"event_id": f"fz-{i}", "timestamp": (NOW - timedelta(minutes=i)).isoformat(),
                   "tenant_id": TENANT, "provider": "openai", "model": "gpt-4o-mini",
                   "input_tokens": 100 * (i + 1), "output_tokens": 10} for i in range(5)]
        asyncio.run(produce(s, [(TENANT.encode(), json.dumps(e).encode()) for e in events]))
        status, answer = w.json("PUT", "/api/budgets/seed",
                                {"tenant_id": TENANT, "limit": "100", "period": "month"})
        assert status == 200, answer
        deadline = time.monotonic() + 60
        while w.sql("SELECT count() FROM tokenmeter.usage_events FINAL")[0][0] < 5:
            assert time.monotonic() < deadline, "events not stored"
            time.sleep(0.2)
        yield w
    finally:
        w.stop()


def state(w: ApiWorker) -> tuple[Any, ...]:
    """Everything an unauthenticated caller must not be able to change."""
    ledger = w.sql("SELECT count(), toString(sum(total_cost)) FROM tokenmeter.usage_events "
                   "FINAL")
    audit = w.sql("SELECT count() FROM tokenmeter.reprice_audit")
    exports = w.settings.data_dir / "exports"
    files = sorted(p.name for p in exports.rglob("*")) if exports.exists() else []
    return json.dumps(w.budgets(), sort_keys=True), ledger, audit, files


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
dates = st.sampled_from(["2000-01-01", "2100-01-01", NOW.date().isoformat(), "0001-01-01",
                         "9999-12-31", "2026-13-45", "", "yesterday", "1e9"]) | text
BODY_VALUES: dict[str, Any] = {
    "sql": st.sampled_from(["SELECT 1", "DROP TABLE tokenmeter.usage_events",
                            "SELECT * FROM `file`('/etc/passwd')",
                            "INSERT INTO tokenmeter.budgets VALUES (1)"]) | text,
    "from": dates, "to": dates,
    "file": st.sampled_from(["f.csv", "x.parquet", "../up.csv", "/tmp/abs.csv", "a/b/c.csv",
                             "f.txt", "\x00.csv", "."]) | text,
    "format": st.sampled_from(["csv", "parquet", "xml"]) | text,
    "dry_run": st.booleans() | text,
    "tenant_id": st.sampled_from([TENANT, ""]) | text,
    "tenant": st.sampled_from([TENANT, ""]) | text,
    "period": st.sampled_from(["day", "week", "month", "year"]) | text,
    "limit": st.sampled_from(["1e-30", "0", "-1", "1e40", "NaN", "100"]) | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True) | text,
    "thresholds": st.lists(st.integers(-5, 500) | text, max_size=4),
    "metric": st.sampled_from(["cost", "tokens", "value_units"]) | text,
    "budget_id": st.sampled_from(["seed", "nope"]) | text,
    "reason": text,
}
json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3)
                        | st.dictionaries(text, c, max_size=3), max_leaves=8)
known_body = st.fixed_dictionaries({}, optional={k: v for k, v in BODY_VALUES.items()})
QUERY_KEYS = ["window", "at", "tenant_id", "limit", "model", "estimated_input_tokens",
              "estimated_output_tokens", "value_tier", "project_id", "feature"]
query_values = st.sampled_from(["hour", "day", "month", NOW.isoformat(), "-1", "1e99", TENANT,
                                "gpt-4o-mini", "99999999999999999999"]) | text


@st.composite
def requests(draw: st.DrawFn, routes: list[tuple[str, str]]) -> dict[str, Any]:
    method, pattern = draw(st.sampled_from(routes))
    method = draw(st.just(method) | st.sampled_from(METHODS))

    def fill(m: re.Match[str]) -> str:
        name = m.group(1).split(":")[0]
        choices = {"name": st.sampled_from(sorted(OPS)) | text,
                   "budget_id": st.sampled_from(["seed", "other"]) | text,
                   "tenant_id": st.sampled_from([TENANT]) | text}
        value = draw(choices.get(name, text).filter(bool))
        return quote(value, safe="")

    path = re.sub(r"\{([^}]+)\}", fill, pattern)
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS) | text, query_values, max_size=4))
    if query:
        path += "?" + urlencode(query)
    body = draw(st.none() | known_body | json_any
                | st.binary(max_size=64).map(lambda b: ("raw", b)))
    if draw(st.booleans()):  # half the requests are well-formed: they reach the handlers
        return {"method": method, "path": path, "body": body, "auth": "token", "host": "ok",
                "content_type": "application/json", "origin": None, "site": None}
    return {
        "method": method, "path": path, "body": body,
        "content_type": draw(st.sampled_from([
            "application/json", "application/json; charset=utf-8", "text/plain",
            "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])),
        "auth": draw(st.sampled_from(["token", "none", "wrong"])),
        "host": draw(st.sampled_from(["ok", "ok", "ok", "evil.example", "localhost"])),
        "origin": draw(st.sampled_from([None, None, "http://evil.example", "same", "null"])),
        "site": draw(st.sampled_from([None, None, "cross-site", "same-origin", "none"])),
    }


def send(w: ApiWorker, r: dict[str, Any]) -> tuple[int, bytes]:
    port = w.settings.web_port
    headers: dict[str, str] = {}
    host = {"ok": f"127.0.0.1:{port}", "localhost": f"localhost:{port}"}.get(r["host"],
                                                                             r["host"])
    headers["Host"] = host
    if r["content_type"] is not None:
        headers["Content-Type"] = r["content_type"]
    if r["auth"] == "token":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif r["auth"] == "wrong":
        headers["Authorization"] = "Bearer wrong"
    if r["origin"] is not None:
        headers["Origin"] = f"http://{host}" if r["origin"] == "same" else r["origin"]
    if r["site"] is not None:
        headers["Sec-Fetch-Site"] = r["site"]
    body = r["body"]
    raw = body[1] if isinstance(body, tuple) else (
        None if body is None else json.dumps(body).encode())
    status, _, data = w.call(r["method"], r["path"], raw=raw, headers=headers, json_type=False,
                             auth=False, timeout=20)  # a hang fails as a timeout
    return status, data


def test_every_route_survives_random_requests(worker: ApiWorker,
                                              routes: list[tuple[str, str]]) -> None:
    before = state(worker)

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(r=requests(routes))
    def check(r: dict[str, Any]) -> None:
        nonlocal before
        status, data = send(worker, r)
        path = r["path"].split("?")[0]
        assert status < 500 or (status == 503 and path in OPEN_PATHS), (r, status, data[:300])
        if r["auth"] != "token" and path not in OPEN_PATHS:
            assert status in (401, 403, 415), (r, status, data[:300])
        after = state(worker)
        if r["auth"] != "token":
            assert after == before, r
        before = after

    check()
