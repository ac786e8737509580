"""Where an event belongs: its tenant's partition, whatever key the producer used.

Dedup, live windows and budgets are kept per partition, so an ``event_id`` must always
reach the same partition. Producers that key by something else (no key, a key with stray
whitespace, a changed partition count) put events on other partitions; the worker moves
them to their tenant's partition through the events topic before dedup (Faust's
repartitioning, with the partition chosen by us) and meters only what belongs where it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.core.meter import Meter
from pipeline.core.validate import decode_message


@dataclass(frozen=True, slots=True)
class Move:
    """Items to re-send to ``partition``, as one envelope keyed by a tenant of theirs."""

    partition: int
    key: str
    value: bytes
    events: int


@dataclass(slots=True)
class Placement:
    """A message split into what stays (``keep``, or None) and what moves elsewhere."""

    keep: bytes | None
    moves: list[Move] = field(default_factory=list)


def place(meter: Meter, raw: bytes, here: int, partition_of: Callable[[str], int],
          now: datetime) -> Placement:
    """Split a message by the partition of each item's (validated) tenant.

    Items that fail validation stay here, so their dead letters name this message.
    """
    items = decode_message(raw)
    if not isinstance(items, list):
        return Placement(keep=raw)
    texts = [_encode(item) for item in items]
    if any(t is None for t in texts):
        # an item JSON cannot carry faithfully (a float such as 1e999 decodes to inf) would
        # spoil a re-sent envelope: the message stays whole and is metered here
        return Placement(keep=raw)
    keep: list[str] = []
    away: dict[int, tuple[str, list[str]]] = {}
    for item, text in zip(items, texts, strict=True):
        assert text is not None
        try:
            tenant: str | None = meter.meter_object(item, now=now).tenant_id
        except MemoryError:
            raise
        except Exception:  # ValidationFailed, or a defect (internal_error when metered)
            tenant = None  # stays, so its dead letter names this message
        target = here if tenant is None else partition_of(tenant)
        if target == here:
            keep.append(text)
        else:
            assert tenant is not None
            away.setdefault(target, (tenant, []))[1].append(text)
    moves = [Move(part, key, _envelope(group), len(group))
             for part, (key, group) in sorted(away.items())]
    if not moves:
        return Placement(keep=raw)
    return Placement(keep=_envelope(keep) if keep else None, moves=moves)


def _encode(item: object) -> str | None:
    try:
        return json.dumps(item, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return None


def _envelope(texts: list[str]) -> bytes:
    return ("[" + ",".join(texts) + "]").encode()
