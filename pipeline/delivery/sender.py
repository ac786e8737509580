"""The webhook sender: POSTs breaches with aiohttp, retries by the policy, records outcomes.

Deliveries run as background tasks, at most ``concurrency`` at a time: ``submit`` waits for
a free slot (back-pressure on the breach stream only), so a slow or dead endpoint never holds
up metering. Every final outcome is one ``webhook_deliveries`` row; a breach already
delivered to a URL (a replay of the topic) is not sent there again. Nothing here raises into
the worker: failures are logged and recorded. The secret is never logged, and URLs are
logged without their path (a Slack webhook's path is its credential).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from pydantic import SecretStr

from pipeline.clock import Clock, wall_clock
from pipeline.core.budget_options import WebhookFormat
from pipeline.core.budgets import Budget, BudgetBreach
from pipeline.delivery.webhooks import (
    RetryPolicy,
    Target,
    Verdict,
    classify,
    headers_for,
    payload,
    redact,
    retry_after_s,
    targets,
)
from pipeline.store.client import Store

log = logging.getLogger(__name__)

DELIVERY_COLUMNS = ("breach_id", "url", "budget_id", "tenant_id", "format", "status",
                    "attempts", "last_status", "last_error", "signed", "first_attempt_at",
                    "delivered_at", "recorded_at")
UNSIGNED_WARNING = ("webhooks are sent unsigned: set TOKENMETER_WEBHOOK_SECRET so receivers "
                    "can verify X-Tokenmeter-Signature")


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The final outcome of one breach at one endpoint."""

    breach_id: str
    url: str
    status: str  # delivered | gave_up
    attempts: int
    last_status: int | None
    last_error: str
    first_attempt_at: datetime
    delivered_at: datetime | None


class WebhookSender:
    """Delivers breaches to the global endpoints and each budget's own."""

    def __init__(self, store: Store, *, secret: SecretStr | None, global_urls: list[str],
                 global_format: WebhookFormat = WebhookFormat.json,
                 policy: RetryPolicy | None = None, timeout_s: float = 10.0,
                 concurrency: int = 8, clock: Clock = wall_clock,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self.store = store
        self._secret = secret
        self.global_urls = list(global_urls)
        self.global_format = global_format
        self.policy = policy or RetryPolicy()
        self.timeout_s = timeout_s
        self.clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._slots = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[list[DeliveryResult]]] = set()

    @property
    def signed(self) -> bool:
        """True when requests carry X-Tokenmeter-Signature."""
        return self._secret is not None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def close(self) -> None:
        """Wait for deliveries in flight, then close the HTTP session."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def submit(self, breach: BudgetBreach, budget: Budget | None) -> None:
        """Deliver in the background once a slot is free (waits only for the slot)."""
        if not targets(budget, self.global_urls, self.global_format):
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._run(breach, budget))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, breach: BudgetBreach, budget: Budget | None) -> list[DeliveryResult]:
        try:
            return await self.deliver(breach, budget)
        except Exception:
            log.exception("webhook delivery of breach %s failed", breach.breach_id)
            return []
        finally:
            self._slots.release()

    async def deliver(self, breach: BudgetBreach,
                      budget: Budget | None) -> list[DeliveryResult]:
        """Deliver one breach to every endpoint it goes to (skipping those it was already
        delivered to) and record each outcome; returns the outcomes of this run."""
        found = targets(budget, self.global_urls, self.global_format)
        done = await self._delivered(breach.breach_id, [t.url for t in found])
        results = await asyncio.gather(*(self._one(breach, t) for t in found
                                         if t.url not in done))
        if results:
            await self._record(breach, list(results), {t.url: t for t in found})
        return list(results)

    async def _delivered(self, breach_id: str, urls: list[str]) -> set[str]:
        if not urls:
            return set()
        try:
            rows = await asyncio.to_thread(
                self.store.rows,
                f"SELECT DISTINCT url FROM {self.store.database}.webhook_deliveries WHERE "
                "breach_id = %(b)s AND status = 'delivered' AND url IN %(urls)s",
                {"b": breach_id, "urls": urls})
        except Exception as exc:
            # sending twice is better than not at all: receivers dedupe on Idempotency-Key
            log.warning("cannot read webhook_deliveries (%s): sending breach %s anyway",
                        type(exc).__name__, breach_id)
            return set()
        return {str(r[0]) for r in rows}

    async def _one(self, breach: BudgetBreach, target: Target) -> DeliveryResult:
        body = payload(breach, target.format)
        secret = None if self._secret is None else self._secret.get_secret_value()
        first = self.clock()
        status: int | None = None
        error = ""
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            headers = headers_for(breach.breach_id, body, int(self.clock().timestamp()), secret)
            try:
                async with self._session_now().post(target.url, data=body, headers=headers,
                                                    allow_redirects=False) as resp:
                    status = resp.status
                    error = "" if 200 <= status <= 299 else \
                        f"HTTP {status}: {(await resp.content.read(200)).decode(errors='replace')}"
                    retry_after = retry_after_s(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"[:300]
            except Exception as exc:  # a URL aiohttp cannot use: no retry can help
                status, error = None, f"{type(exc).__name__}: {exc}"[:300]
                return self._result(breach, target, "gave_up", attempt, status, error, first)
            verdict = classify(status)
            if verdict is Verdict.delivered:
                return self._result(breach, target, "delivered", attempt, status, "", first)
            if verdict is Verdict.give_up or attempt >= self.policy.max_attempts:
                log.warning("webhook %s gave up on breach %s after %d attempts: %s",
                            redact(target.url), breach.breach_id, attempt, error[:120])
                return self._result(breach, target, "gave_up", attempt, status, error, first)
            await self._sleep(self.policy.delay(attempt, self._jitter(), retry_after))

    def _result(self, breach: BudgetBreach, target: Target, status: str, attempts: int,
                last_status: int | None, error: str, first: datetime) -> DeliveryResult:
        return DeliveryResult(breach.breach_id, target.url, status, attempts, last_status,
                              error, first, self.clock() if status == "delivered" else None)

    async def _record(self, breach: BudgetBreach, results: list[DeliveryResult],
                      by_url: dict[str, Target]) -> None:
        now = self.clock()
        rows = [[r.breach_id, r.url, breach.budget_id, breach.tenant_id,
                 by_url[r.url].format.value, r.status, r.attempts, r.last_status,
                 r.last_error, self.signed, r.first_attempt_at, r.delivered_at, now]
                for r in results]
        try:
            await asyncio.to_thread(self.store.insert, "webhook_deliveries", rows,
                                    DELIVERY_COLUMNS)
        except Exception as exc:
            log.error("cannot record %d webhook deliveries of breach %s (%s: %s)", len(rows),
                      breach.breach_id, type(exc).__name__, str(exc).splitlines()[0][:200]
                      if str(exc) else "")
