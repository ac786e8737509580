"""HTTP ingest, the pure part: request body -> per-item verdicts -> Kafka envelopes and answer.

Checks made here are the stream's own (``validate_event`` and the meter's pricing, what
``tokenmeter produce`` runs), with the same reason codes, so a rejection here is what the
dead-letter queue would have said. What only the stream can decide stays there: duplicates
(per tenant partition, by ``event_id``), lateness, and budgets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.core.events import MAX_BATCH_EVENTS, MAX_MESSAGE_BYTES
from pipeline.core.meter import Meter

# the validator's JSON rules (no NaN/Infinity, no duplicate keys) for whole request bodies,
# which may be larger than one Kafka message and so cannot go through decode_message
from pipeline.core.validate import _no_duplicate_keys, _reject_constant, check_unicode
from pipeline.errors import ValidationFailed

MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_REQUEST_ITEMS = 10_000
JSON = "application/json"
NDJSON = "application/x-ndjson"
MEDIA_TYPES = (JSON, NDJSON)


@dataclass(frozen=True, slots=True)
class Refused:
    """The whole request is refused: nothing was published."""

    status: int
    reason_code: str
    detail: str

    def as_json(self) -> dict[str, Any]:
        """The answer body."""
        return {"error": self.detail, "reason_code": self.reason_code}


@dataclass(frozen=True, slots=True)
class BadItem:
    """An item that could not even be decoded (one NDJSON line)."""

    reason_code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """One item's fate: accepted (with its tenant and encoded value) or rejected."""

    index: int
    event_id: str | None = None
    tenant_id: str | None = None
    value: bytes | None = None  # the item as published (JSON), when accepted
    reason_code: str | None = None
    detail: str | None = None

    @property
    def accepted(self) -> bool:
        """True when the item goes to Kafka."""
        return self.reason_code is None

    def as_json(self) -> dict[str, Any]:
        """The item's entry in the answer."""
        if self.accepted:
            return {"index": self.index, "event_id": self.event_id, "status": "accepted"}
        out: dict[str, Any] = {"index": self.index, "status": "rejected",
                               "reason_code": self.reason_code, "detail": self.detail}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        return out


def _loads(text: str | bytes) -> Any:
    obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    check_unicode(text, obj)
    return obj


def _too_many(n: int) -> Refused:
    return Refused(413, "too_large", f"request has {n} items; the limit is {MAX_REQUEST_ITEMS} "
                   "per request: split it")


def parse_body(body: bytes, media_type: str) -> list[Any] | Refused:
    """The request's items (decoded objects, or BadItem for an undecodable NDJSON line)."""
    if len(body) > MAX_REQUEST_BYTES:
        return Refused(413, "too_large", f"request body is {len(body)} bytes; the limit is "
                       f"{MAX_REQUEST_BYTES}: split it")
    if media_type not in MEDIA_TYPES:
        return Refused(415, "schema", f"Content-Type must be {JSON} or {NDJSON}")
    if media_type == NDJSON:
        lines = [ln for ln in body.split(b"\n") if ln.strip()]
        if len(lines) > MAX_REQUEST_ITEMS:
            return _too_many(len(lines))
        items: list[Any] = []
        for line in lines:
            try:
                obj = _loads(line)
            except RecursionError:
                items.append(BadItem("invalid_json", "JSON nested too deeply"))
                continue
            except (UnicodeDecodeError, ValueError) as exc:
                items.append(BadItem("invalid_json", f"not valid UTF-8 JSON: {exc}"[:300]))
                continue
            items.append(BadItem("schema", "an NDJSON line must be one event object, not an "
                                 "array") if isinstance(obj, list) else obj)
        if not items:
            return Refused(400, "schema", "no events in the request body")
        return items
    try:
        decoded = _loads(body)
    except RecursionError:
        return Refused(400, "invalid_json", "JSON nested too deeply")
    except (UnicodeDecodeError, ValueError) as exc:
        return Refused(400, "invalid_json", f"body is not valid UTF-8 JSON: {exc}"[:300])
    if not isinstance(decoded, list):
        return [decoded]
    if not decoded:
        return Refused(400, "schema", "the array is empty: send at least one event")
    if len(decoded) > MAX_REQUEST_ITEMS:
        return _too_many(len(decoded))
    return decoded


def _id_of(obj: Any) -> str | None:
    eid = obj.get("event_id") if isinstance(obj, dict) else None
    return eid[:256] if isinstance(eid, str) else None


def check_items(items: Sequence[Any], meter: Meter, *, now: datetime) -> list[Verdict]:
    """Validate and price every item as the stream would; encode the accepted ones."""
    out = []
    for i, obj in enumerate(items):
        if isinstance(obj, BadItem):
            out.append(Verdict(i, reason_code=obj.reason_code, detail=obj.detail))
            continue
        try:
            priced = meter.meter_object(obj, now=now)
        except ValidationFailed as exc:
            out.append(Verdict(i, _id_of(obj), reason_code=exc.reason_code,
                               detail=exc.detail[:1000]))
            continue
        except MemoryError:
            raise
        except Exception as exc:  # a defect on one item: that item refused, not the request
            out.append(Verdict(i, _id_of(obj), reason_code="internal_error",
                               detail=f"{type(exc).__name__}: {exc}"[:1000]))
            continue
        value = json.dumps(obj).encode()  # ASCII: a lone surrogate escape stays valid
        if len(value) > MAX_MESSAGE_BYTES:
            # the stream refuses any message over this size, so one item alone over it
            # would be dead-lettered whole: refuse it here, where the client hears it
            out.append(Verdict(i, priced.event_id, reason_code="too_large",
                               detail=f"event is {len(value)} bytes as JSON; the limit is "
                               f"{MAX_MESSAGE_BYTES}"))
            continue
        out.append(Verdict(i, priced.event_id, priced.tenant_id, value))
    return out


def envelopes(verdicts: Iterable[Verdict]) -> list[tuple[bytes, bytes]]:
    """(tenant key, value) Kafka messages: the accepted items as per-tenant arrays, each of at
    most MAX_BATCH_EVENTS items and MAX_MESSAGE_BYTES bytes (the stream's envelope limits)."""
    by_tenant: dict[str, list[bytes]] = {}
    for v in verdicts:
        if v.accepted and v.tenant_id is not None and v.value is not None:
            by_tenant.setdefault(v.tenant_id, []).append(v.value)
    out: list[tuple[bytes, bytes]] = []
    for tenant, values in by_tenant.items():
        key = tenant.encode()
        group: list[bytes] = []
        size = 2  # the brackets
        for value in values:
            if group and (len(group) >= MAX_BATCH_EVENTS
                          or size + 1 + len(value) > MAX_MESSAGE_BYTES):
                out.append((key, b"[" + b",".join(group) + b"]"))
                group, size = [], 2
            group.append(value)
            size += len(value) + (1 if len(group) > 1 else 0)
        out.append((key, b"[" + b",".join(group) + b"]"))
    return out


def answer(verdicts: Sequence[Verdict]) -> tuple[int, dict[str, Any]]:
    """HTTP status and body: 200 all accepted, 207 some rejected, 400 all rejected.

    207 (not 400) when some were accepted: those are in Kafka, and the entries say which
    to fix; resending everything is harmless too (the stream dedups by event_id).
    """
    accepted = sum(1 for v in verdicts if v.accepted)
    rejected = len(verdicts) - accepted
    status = 200 if not rejected else (207 if accepted else 400)
    return status, {"results": [v.as_json() for v in verdicts], "accepted": accepted,
                    "rejected": rejected}


@dataclass
class Gate:
    """Bounded in-flight ingest work: requests and bytes (the request's declared size)."""

    max_requests: int = 32
    max_bytes: int = 8 * MAX_REQUEST_BYTES
    requests: int = 0
    bytes: int = 0

    def admit(self, size: int) -> bool:
        """Take room for one request of ``size`` bytes; False when full (answer 429)."""
        if self.requests >= self.max_requests or (
                self.requests and self.bytes + size > self.max_bytes):
            return False
        self.requests += 1
        self.bytes += size
        return True

    def release(self, size: int) -> None:
        """Give the room of an admitted request back."""
        self.requests -= 1
        self.bytes -= size
