"""The webhook sender: POSTs breaches with aiohttp, retries by the policy, records outcomes.

``submit`` never waits for a delivery: it puts the breach on a bounded queue (``queue_max``)
and ``concurrency`` background workers deliver from it, so a slow or dead endpoint holds up
neither metering nor the actions of later breaches. A breach that finds the queue full is
not sent: it is recorded as ``gave_up`` (0 attempts) at once. Every final outcome is one
``webhook_deliveries`` row; a breach already delivered to a URL (a replay of the topic) is
not sent there again. Nothing here raises into the worker: failures are logged and recorded.
The secret is never logged or stored; URLs are logged as scheme and host and recorded
masked (a Slack webhook's path is its credential), and so are errors that quote them.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    mask_url,
    payload,
    redact,
    retry_after_s,
    scrub,
    targets,
)
from pipeline.store.client import Store

log = logging.getLogger(__name__)

DELIVERY_COLUMNS = ("breach_id", "url", "budget_id", "tenant_id", "format", "status",
                    "attempts", "last_status", "last_error", "signed", "first_attempt_at",
                    "delivered_at", "recorded_at")
UNSIGNED_WARNING = ("webhooks are sent unsigned: set TOKENMETER_WEBHOOK_SECRET so receivers "
                    "can verify X-Tokenmeter-Signature")
QUEUE_FULL = "not sent: the delivery queue was full ({n} breaches waiting)"
STOPPED = "not sent: the worker stopped before its turn (replay the breach to send it)"
STOP_TIMEOUT_S = 5.0  # how long a stopping worker goes on delivering what is queued


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The final outcome of one breach at one endpoint."""

    breach_id: str
    url: str  # masked, as recorded
    format: WebhookFormat
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
                 concurrency: int = 8, queue_max: int = 1000, clock: Clock = wall_clock,
                 sign_clock: Clock = wall_clock,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self.store = store
        self._secret = secret
        self.global_urls = list(global_urls)
        self.global_format = global_format
        self.policy = policy or RetryPolicy()
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.queue_max = queue_max
        self.clock = clock  # the records' times (the worker's clock, pinned in replays)
        # the signature's timestamp: receivers compare it with their own clock, so it is
        # always the wall clock, even where TOKENMETER_CLOCK_START pins the worker's
        self.sign_clock = sign_clock
        self._sleep = sleep
        self._jitter = jitter
        self._queue: asyncio.Queue[tuple[BudgetBreach, Budget | None]] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # records of breaches not queued
        self.dropped = 0

    @property
    def signed(self) -> bool:
        """True when requests carry X-Tokenmeter-Signature."""
        return self._secret is not None

    @property
    def waiting(self) -> int:
        """Breaches queued and not yet picked up by a delivery worker."""
        return 0 if self._queue is None else self._queue.qsize()

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def close(self) -> None:
        """Deliver everything queued and in flight, then stop (tests, tools)."""
        await self.stop(timeout_s=None)

    async def stop(self, timeout_s: float | None = STOP_TIMEOUT_S) -> int:
        """Shut down: deliver for up to ``timeout_s`` (None: until done), then record what
        is still queued as gave_up ("the worker stopped") and close the HTTP session; the
        breaches recorded so."""
        left: list[tuple[BudgetBreach, Budget | None]] = []
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout_s)
            except TimeoutError:
                pass
            while not self._queue.empty():
                left.append(self._queue.get_nowait())
                self._queue.task_done()
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._queue, self._workers = None, []
        for breach, budget in left:
            with contextlib.suppress(Exception):  # logged there; shutdown goes on
                await self._record(breach, self._not_sent(breach, budget, STOPPED))
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if left:
            log.error("worker stopping: %d queued breach(es) not sent, recorded as gave_up",
                      len(left))
        return len(left)

    async def submit(self, breach: BudgetBreach, budget: Budget | None) -> bool:
        """Queue a breach for delivery in the background, never waiting; False when the
        queue is full (the breach is then recorded as gave_up at every endpoint)."""
        found = targets(budget, self.global_urls, self.global_format)
        if not found:
            return True
        if self._queue is None:  # made in the running loop, on first use
            self._queue = asyncio.Queue(self.queue_max)
            self._workers = [asyncio.create_task(self._work(self._queue))
                             for _ in range(self.concurrency)]
        try:
            self._queue.put_nowait((breach, budget))
            return True
        except asyncio.QueueFull:
            pass
        self.dropped += 1
        error = QUEUE_FULL.format(n=self.queue_max)
        log.error("webhook delivery of breach %s to %d endpoint(s) %s (%d dropped so far)",
                  breach.breach_id, len(found), error, self.dropped)
        if len(self.tasks) < self.queue_max:  # the records run in the background too
            task = asyncio.create_task(self._record(breach, self._not_sent(breach, budget,
                                                                           error)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return False

    async def _work(self, queue: asyncio.Queue[tuple[BudgetBreach, Budget | None]]) -> None:
        while True:
            breach, budget = await queue.get()
            try:
                await self.deliver(breach, budget)
            except Exception:
                log.exception("webhook delivery of breach %s failed", breach.breach_id)
            finally:
                queue.task_done()

    async def deliver(self, breach: BudgetBreach,
                      budget: Budget | None) -> list[DeliveryResult]:
        """Deliver one breach to every endpoint it goes to (skipping those it was already
        delivered to) and record each outcome; returns the outcomes of this run."""
        found = targets(budget, self.global_urls, self.global_format)
        masks = [mask_url(t.url) for t in found]
        # endpoints are told apart by their masked URL; one two endpoints share is sent again
        unique = [m for m in masks if masks.count(m) == 1]
        done = await self._delivered(breach.breach_id, unique)
        todo = [t for t, m in zip(found, masks, strict=True) if m not in done]
        outcomes = await asyncio.gather(*(self._one(breach, t) for t in todo),
                                        return_exceptions=True)
        results = [o if isinstance(o, DeliveryResult) else self._result(
                       breach, t, "gave_up", 0, None,
                       scrub(f"{type(o).__name__}: {o}", t.url)[:300], self.clock())
                   for t, o in zip(todo, outcomes, strict=True)]
        if results:
            await self._record(breach, results)
        return results

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
            headers = headers_for(breach.breach_id, body, int(self.sign_clock().timestamp()),
                                  secret)
            try:
                async with self._session_now().post(target.url, data=body, headers=headers,
                                                    allow_redirects=False) as resp:
                    status = resp.status
                    error = "" if 200 <= status <= 299 else \
                        f"HTTP {status}: {(await resp.content.read(200)).decode(errors='replace')}"
                    retry_after = retry_after_s(resp.headers.get("Retry-After"))
            except (aiohttp.InvalidURL, ValueError) as exc:  # no retry can help a bad URL
                error = scrub(f"{type(exc).__name__}: {exc}", target.url)[:300]
                return self._result(breach, target, "gave_up", attempt, None, error, first)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # anything else aiohttp raises: no retry either
                error = scrub(f"{type(exc).__name__}: {exc}", target.url)[:300]
                return self._result(breach, target, "gave_up", attempt, None, error, first)
            error = scrub(error, target.url)[:300]
            verdict = classify(status)
            if verdict is Verdict.delivered:
                return self._result(breach, target, "delivered", attempt, status, "", first)
            if verdict is Verdict.give_up or attempt >= self.policy.max_attempts:
                log.warning("webhook %s gave up on breach %s after %d attempts: %s",
                            redact(target.url), breach.breach_id, attempt, error[:120])
                return self._result(breach, target, "gave_up", attempt, status, error, first)
            await self._sleep(self.policy.delay(attempt, self._jitter(), retry_after))

    def _not_sent(self, breach: BudgetBreach, budget: Budget | None,
                  why: str) -> list[DeliveryResult]:
        """A gave_up outcome, 0 attempts, at every endpoint of a breach never sent."""
        now = self.clock()
        return [self._result(breach, t, "gave_up", 0, None, why, now)
                for t in targets(budget, self.global_urls, self.global_format)]

    def _result(self, breach: BudgetBreach, target: Target, status: str, attempts: int,
                last_status: int | None, error: str, first: datetime) -> DeliveryResult:
        return DeliveryResult(breach.breach_id, mask_url(target.url), target.format, status,
                              attempts, last_status, error, first,
                              self.clock() if status == "delivered" else None)

    async def _record(self, breach: BudgetBreach, results: list[DeliveryResult]) -> None:
        now = self.clock()
        rows = [[r.breach_id, r.url, breach.budget_id, breach.tenant_id, r.format.value,
                 r.status, r.attempts, r.last_status, r.last_error, self.signed,
                 r.first_attempt_at, r.delivered_at, now]
                for r in results]
        try:
            await asyncio.to_thread(self.store.insert, "webhook_deliveries", rows,
                                    DELIVERY_COLUMNS)
        except Exception as exc:
            log.error("cannot record %d webhook deliveries of breach %s (%s: %s)", len(rows),
                      breach.breach_id, type(exc).__name__, str(exc).splitlines()[0][:200]
                      if str(exc) else "")
