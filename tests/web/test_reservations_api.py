"""The reservation routes on a stand-in Faust app, over a real Processor on in-memory doubles.

Only the worker that owns a tenant's partition answers a reservation: another worker
forwards it there, or answers 503 (retry) when the owner is unknown, unreachable, or a
forwarded request lands on a non-owner; a client's X-Tokenmeter-Forwarded header never makes
a non-owner hold room (#18 review 8d). Both token estimates are required (review 7). A
DELETE with ``after_events`` keeps the hold for the block's events still in flight
(review 8c).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from aiohttp import ClientConnectionError
from multidict import CIMultiDict
from yarl import URL

from pipeline.core.budgets import Budget
from pipeline.core.catalog import load_catalog
from pipeline.core.reservations import HoldBook
from pipeline.stream.holds import HoldWatcher
from pipeline.stream.live import LiveState
from pipeline.stream.processor import Processor, RawMessage
from pipeline.testing import InMemoryLedger, ListPublisher, SettableClock
from pipeline.web.reservations_api import FORWARDED, register_reservation_views
from tests.helpers import METER, NOW

pytestmark = pytest.mark.clock  # a day budget at the pinned instant

HERE = "127.0.0.1:6066"
ROOM = ("b-acme", "", "")
BODY = {"tenant_id": "acme", "model": "gpt-4o", "estimated_input_tokens": 100_000,
        "estimated_output_tokens": 0}  # $0.25


class Answer(NamedTuple):
    status: int
    body: Any
    headers: dict[str, str]


class Web:
    """Faust's web: what View.json and View.bytes hand their value to."""

    def json(self, value: Any, *, status: int = 200, headers: Any = None,
             **_: Any) -> Answer:
        return Answer(status, value, dict(headers or {}))

    def bytes(self, value: bytes, *, status: int = 200, **_: Any) -> Answer:
        return Answer(status, json.loads(value), {})


class Owner:
    """The other worker: answers what it is sent (or cannot be reached)."""

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable
        self.sent: list[dict[str, Any]] = []

    @asynccontextmanager
    async def request(self, **kw: Any) -> AsyncIterator[Any]:
        if not self.reachable:
            raise ClientConnectionError("connection refused")
        self.sent.append(kw)
        answer = json.dumps({"decision": "allow", "from": "owner"}).encode()

        async def read() -> bytes:
            return answer
        yield SimpleNamespace(status=200, content_type="application/json", read=read)


class Rig:
    """The routes of one worker that owns tenant acme (partition 0) but not beta (1)."""

    def __init__(self, dest: str | None = "10.0.0.2:6066", owner: Owner | None = None) -> None:
        ledger = InMemoryLedger()
        live = LiveState(grace=timedelta(hours=1), horizon=timedelta(days=7), max_ids=10_000)
        live.get(0)
        self.holds = HoldBook()
        self.proc = Processor(METER, ledger, ledger, live, ListPublisher(),
                              clock=SettableClock(NOW), publish_breach=ListPublisher(),
                              watchers=[HoldWatcher(self.holds)],
                              partition_of=lambda t: 0 if t == "acme" else 1)
        settings = SimpleNamespace(reservation_ttl_s=120.0, reservation_max_ttl_s=3600.0)
        runtime = SimpleNamespace(processor=self.proc, catalog=load_catalog(),
                                  clock=lambda: NOW, settings=settings, events_topic="events")
        self.owner = owner or Owner()
        self.dest = dest
        self.pages: dict[str, Any] = {}
        app = SimpleNamespace(page=self.page, http_client=self.owner,
                              router=SimpleNamespace(external_topic_key_store=self.route))
        register_reservation_views(app, runtime, self.holds)
        for tenant in ("acme", "beta"):
            asyncio.run(self.proc.budget_changed(f"b-{tenant}", Budget.model_validate(
                {"budget_id": f"b-{tenant}", "tenant_id": tenant, "limit": "1",
                 "period": "day", "mode": "hard"})))

    def page(self, path: str) -> Any:
        def register(view: Any) -> Any:
            self.pages[path] = view(SimpleNamespace(), Web())
            return view
        return register

    def route(self, topic: Any, key: str) -> Any:
        if self.dest is None:
            raise KeyError(key)  # Faust: the assignment is not known yet
        host, _, port = self.dest.partition(":")
        return SimpleNamespace(host=host, port=port)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        raw = json.dumps(body).encode() if body is not None else b""
        url = URL(f"http://{HERE}{path}")

        async def read() -> bytes:
            return raw
        request = SimpleNamespace(method=method, url=url, query=url.query, read=read,
                                  headers=CIMultiDict({"Host": HERE} | (headers or {})))
        if method == "POST":
            answer: Answer = asyncio.run(self.pages["/api/reservations"].post(request))
        else:
            rid = path.split("?")[0].rsplit("/", 1)[1]
            answer = asyncio.run(self.pages["/api/reservations/{reservation_id}"].delete(
                request, rid))
        return answer

    def count(self, i: int, tokens: int, rid: str) -> None:
        e = {"event_id": f"e{i}", "timestamp": NOW.isoformat(), "tenant_id": "acme",
             "provider": "openai", "model": "gpt-4o", "input_tokens": tokens,
             "output_tokens": 0, "reservation_id": rid}
        asyncio.run(self.proc.process([RawMessage(json.dumps(e).encode(), "usage-events",
                                                  0, i)]))


def test_the_owner_holds_and_releases_after_the_events_in_flight() -> None:
    rig = Rig()
    got = rig.call("POST", "/api/reservations?tenant_id=acme", BODY)
    assert got.status == 200 and got.body["decision"] == "allow", got
    rid = got.body["reservation_id"]
    assert rig.holds.held(ROOM) == Decimal(got.body["remaining"][0]["hold"]) == Decimal("0.25")
    # the SDK left its block after 2 calls; neither event is counted yet
    waiting = rig.call("DELETE", f"/api/reservations/{rid}?tenant_id=acme&after_events=2")
    assert waiting == Answer(202, {"releasing": rid, "events_counted": 0,
                                   "after_events": 2}, {})
    rig.count(1, 40_000, rid)  # $0.10 of it spent, the rest still held for the second call
    assert rig.holds.held(ROOM) == Decimal("0.15")
    rig.count(2, 40_000, rid)
    assert rig.holds.holds == {}
    assert rig.call("DELETE", f"/api/reservations/{rid}?tenant_id=acme").status == 404
    other = rig.call("POST", "/api/reservations?tenant_id=acme", BODY).body["reservation_id"]
    assert rig.call("DELETE", f"/api/reservations/{other}?tenant_id=acme") == Answer(
        200, {"released": other}, {})
    bad = rig.call("DELETE", f"/api/reservations/{other}?tenant_id=acme&after_events=-1")
    assert bad.status == 400 and "after_events must be a whole number" in bad.body["error"]


@pytest.mark.parametrize("missing", ["estimated_input_tokens", "estimated_output_tokens"])
def test_a_reservation_names_both_estimates(missing: str) -> None:
    rig = Rig()
    body = {k: v for k, v in BODY.items() if k != missing}
    got = rig.call("POST", "/api/reservations?tenant_id=acme", body)
    assert got.status == 400 and f"missing parameter {missing}" in got.body["error"]
    assert rig.holds.holds == {}


@pytest.mark.parametrize("dest, headers, why", [
    ("10.0.0.2:6066", {FORWARDED: "1"}, "a client's forwarding header"),
    (None, {}, "the assignment is not known yet"),
    ("", {}, "the owner has no address"),
    (HERE, {}, "the router names this worker"),
])
def test_a_non_owner_never_holds_room(dest: str | None, headers: dict[str, str],
                                      why: str) -> None:
    rig = Rig(dest=dest)
    got = rig.call("POST", "/api/reservations?tenant_id=beta", BODY | {"tenant_id": "beta"},
                   headers)
    assert got.status == 503, (why, got)
    assert "does not own tenant 'beta'" in got.body["error"] and got.headers["Retry-After"]
    assert rig.holds.holds == {} and rig.owner.sent == [], why
    gone = rig.call("DELETE", "/api/reservations/r1?tenant_id=beta", headers=headers)
    assert gone.status == 503, why


def test_a_non_owner_forwards_to_the_owner_or_answers_503() -> None:
    rig = Rig()
    got = rig.call("POST", "/api/reservations?tenant_id=beta", BODY | {"tenant_id": "beta"})
    assert got == Answer(200, {"decision": "allow", "from": "owner"}, {})
    (sent,) = rig.owner.sent
    assert sent["headers"][FORWARDED] == "1" and str(sent["url"]).startswith(
        "http://10.0.0.2:6066/api/reservations") and rig.holds.holds == {}
    down = Rig(owner=Owner(reachable=False))
    got = down.call("POST", "/api/reservations?tenant_id=beta", BODY | {"tenant_id": "beta"})
    assert got.status == 503 and down.holds.holds == {}
    # at the owner the header changes nothing
    mine = rig.call("POST", "/api/reservations?tenant_id=acme", BODY, {FORWARDED: "1"})
    assert mine.status == 200 and mine.body["reservation_id"] in rig.holds.holds
