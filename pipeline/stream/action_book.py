"""The active automated actions of every budget, shared by all workers through ClickHouse.

Any worker may consume a breach (the breach topic is read by the consumer group), but every
worker answers decisions: so an action turned on (or lifted) is written to
``budget_actions`` first and then kept in memory, and each worker reloads the table every
``actions_refresh_s`` (a restart reloads it at once). The latest row of a
(budget_id, kind, key) wins (ReplacingMergeTree(updated_at)); a reset or clear writes an
inactive row that remembers the breach it lifted, so a replay of that same breach does not
turn the action on again (a new breach does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from pipeline.core.actions import ANOMALY_EXPIRY, ActiveAction, on_breach
from pipeline.core.budgets import Budget, BudgetBreach
from pipeline.store.client import Store

log = logging.getLogger(__name__)

ACTION_COLUMNS = ("budget_id", "kind", "key", "tenant_id", "action", "pool", "since", "until",
                  "breach_id", "active", "reason", "updated_at")
_SELECT = ("budget_id, tenant_id, kind, action, pool, key, since, until, breach_id")


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def action_row(a: ActiveAction, active: bool, reason: str, now: datetime) -> list[Any]:
    """One budget_actions row, in ACTION_COLUMNS order."""
    return [a.budget_id, a.kind, a.key, a.tenant_id, a.action, a.pool, a.since, a.until,
            a.breach_id, active, reason, now]


def _from_row(r: tuple[Any, ...]) -> ActiveAction:
    return ActiveAction(budget_id=r[0], tenant_id=r[1], kind=r[2], action=r[3], pool=r[4],
                        key=r[5], since=_utc(r[6]),
                        until=None if r[7] is None else _utc(r[7]), breach_id=r[8])


class ActionBook:
    """Active actions in memory, written through to ``budget_actions``."""

    def __init__(self, store: Store, anomaly_expiry: Any = ANOMALY_EXPIRY) -> None:
        self.store = store
        self.anomaly_expiry = anomaly_expiry
        self.actions: dict[tuple[str, str, str], ActiveAction] = {}
        self.refreshed_at: datetime | None = None
        # writes and reloads take turns: a reload read before a write must not undo it
        self._lock = asyncio.Lock()

    def active(self, now: datetime, tenant_id: str | None = None,
               budget_id: str | None = None) -> list[ActiveAction]:
        """The live actions (of one tenant or budget), sorted by budget, kind and key."""
        return sorted((a for a in self.actions.values() if a.live(now)
                       and (tenant_id is None or a.tenant_id == tenant_id)
                       and (budget_id is None or a.budget_id == budget_id)),
                      key=lambda a: a.ident)

    async def _write(self, rows: list[list[Any]]) -> None:
        await asyncio.to_thread(self.store.insert, "budget_actions", rows, ACTION_COLUMNS)

    async def _latest(self, ident: tuple[str, str, str]) -> tuple[bool, str] | None:
        db = self.store.database
        rows = await asyncio.to_thread(
            self.store.rows,
            f"SELECT active, breach_id FROM {db}.budget_actions FINAL WHERE budget_id = "
            "%(b)s AND kind = %(k)s AND key = %(key)s",
            {"b": ident[0], "k": ident[1], "key": ident[2]})
        return (bool(rows[0][0]), str(rows[0][1])) if rows else None

    async def on_breach(self, budget: Budget, breach: BudgetBreach,
                        now: datetime) -> ActiveAction | None:
        """Turn on the action a breach names (None: none, or this breach was lifted)."""
        action = on_breach(budget, breach, now, self.anomaly_expiry)
        if action is None:
            return None
        async with self._lock:
            latest = await self._latest(action.ident)
            if latest is not None and not latest[0] and latest[1] == breach.breach_id:
                return None  # reset or cleared already: a replay must not turn it on again
            held = self.actions.get(action.ident)
            if held is not None and held.live(now):
                # the same condition goes on: it has been active since its first breach
                action = replace(action, since=min(held.since, action.since))
            await self._write([action_row(action, True, "breach", now)])
            self.actions[action.ident] = action
        log.warning("budget %s: action %s active (%s breach %s%s)", action.budget_id,
                    action.label(), action.kind, action.breach_id,
                    f", key {action.key}" if action.key else "")
        return action

    async def _lift(self, found: Iterable[ActiveAction], reason: str,
                    now: datetime) -> list[ActiveAction]:
        lifted = list(found)
        if lifted:
            await self._write([action_row(a, False, reason, now) for a in lifted])
            for a in lifted:
                self.actions.pop(a.ident, None)
        return lifted

    async def clear(self, budget_id: str, kind: str, now: datetime,
                    key: str | None = None) -> list[ActiveAction]:
        """The condition is over (the velocity watch calls this when a rate is back to
        normal): lift the budget's actions of that kind (of one key, or all keys)."""
        async with self._lock:
            await self._reload(now)
            return await self._lift(
                [a for a in self.actions.values() if a.budget_id == budget_id
                 and a.kind == kind and (key is None or a.key == key)], "cleared", now)

    async def reset(self, budget_id: str, now: datetime) -> list[ActiveAction]:
        """An operator lifts every action of a budget (`tokenmeter budget reset ID`)."""
        async with self._lock:
            await self._reload(now)
            return await self._lift(
                [a for a in self.actions.values() if a.budget_id == budget_id], "reset", now)

    async def refresh(self, now: datetime) -> None:
        """Reload the active actions from budget_actions (every actions_refresh_s)."""
        async with self._lock:
            await self._reload(now)

    async def _reload(self, now: datetime) -> None:
        db = self.store.database
        rows = await asyncio.to_thread(
            self.store.rows,
            f"SELECT {_SELECT} FROM {db}.budget_actions FINAL WHERE active "
            "AND (until IS NULL OR until > %(now)s)", {"now": now})
        self.actions = {a.ident: a for a in map(_from_row, rows)}
        self.refreshed_at = now


def action_book_of(runtime: Any) -> ActionBook | None:
    """The worker's ActionBook (None when actions are not wired)."""
    book = getattr(runtime, "actions", None)
    return book if isinstance(book, ActionBook) else None
