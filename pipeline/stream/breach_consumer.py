"""The worker's consumer of the budget-breaches topic: actions on, webhooks out.

The topic is read by the worker group (one consumer group: each breach is handled by one
worker). For every breach it turns on the action its budget names (ActionBook, shared with
the other workers through ClickHouse) and hands it to the webhook sender, which queues it and
delivers in the background. Nothing here can stop the worker or hold up metering: it is its
own agent, every failure is logged, and no breach's action waits for any delivery (a slow
endpoint fills the sender's queue, not this agent's turn).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from pipeline.clock import Clock
from pipeline.core.budget_options import WebhookFormat
from pipeline.core.budgets import Budget, BudgetBreach
from pipeline.delivery.sender import UNSIGNED_WARNING, WebhookSender
from pipeline.delivery.webhooks import RetryPolicy
from pipeline.stream.action_book import ActionBook

log = logging.getLogger(__name__)


class BreachConsumer:
    """Handles one published breach: its action, then its webhooks."""

    def __init__(self, actions: ActionBook, sender: WebhookSender,
                 budget_of: Callable[[str], Budget | None], clock: Clock) -> None:
        self.actions = actions
        self.sender = sender
        self.budget_of = budget_of
        self.clock = clock
        self.handled = 0
        self._warned = sender.signed

    async def handle(self, value: bytes) -> None:
        """Turn on the breach's action and queue its delivery (never raises, never waits
        for a delivery)."""
        try:
            breach = BudgetBreach.model_validate_json(value)
        except ValidationError as exc:
            log.warning("skipped a budget-breaches message that is not a breach: %s",
                        str(exc).splitlines()[0][:200])
            return
        budget = self.budget_of(breach.budget_id)
        if budget is not None:
            try:
                await self.actions.on_breach(budget, breach, self.clock())
            except Exception as exc:
                log.error("could not turn on the action of breach %s of budget %s (%s: %s); "
                          "the breach is still delivered", breach.breach_id, breach.budget_id,
                          type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc)
                          else "")
        if not self._warned and (budget is not None and budget.webhooks):
            log.warning("%s", UNSIGNED_WARNING)
            self._warned = True
        try:
            await self.sender.submit(breach, budget)
        except Exception:
            log.exception("could not submit breach %s for delivery", breach.breach_id)
        self.handled += 1


def wire_actions(app: Any, runtime: Any, breaches_topic: Any) -> ActionBook:
    """Attach the breach consumer agent, the actions reload timer and the reset view to a
    worker's Faust app; returns the worker's ActionBook."""
    from pipeline.web.actions_api import register_action_views

    settings = runtime.settings
    actions = ActionBook(runtime.store)
    sender = WebhookSender(
        runtime.store, secret=settings.webhook_secret, global_urls=settings.webhook_urls,
        global_format=WebhookFormat(settings.webhook_format),
        policy=RetryPolicy(max_attempts=settings.webhook_max_attempts,
                           max_backoff_s=settings.webhook_max_backoff_s),
        timeout_s=settings.webhook_timeout_s, clock=runtime.clock)  # signs by the wall clock
    if settings.webhook_urls and settings.webhook_secret is None:
        log.warning("%s", UNSIGNED_WARNING)
    consumer = BreachConsumer(actions, sender, runtime.processor.book.budgets.get,
                              runtime.clock)

    @app.agent(breaches_topic, name="breach-actions")  # type: ignore[untyped-decorator]
    async def breaches(stream: Any) -> None:
        await runtime.budgets_loaded.wait()  # a breach's budget must be known
        async for value in stream:
            await consumer.handle(value)

    async def reload_actions() -> None:
        try:
            await actions.refresh(runtime.clock())
        except Exception as exc:
            # the last known actions stay in force until the table answers again
            log.warning("could not reload budget_actions (%s: %s)", type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")

    app.timer(interval=settings.actions_refresh_s, on_leader=False)(reload_actions)

    async def stop_delivery(sender_app: Any, **kwargs: Any) -> None:
        # the breaches' offsets are committed: what is still queued is recorded as gave_up
        # (a replay sends it), not silently lost with the event loop
        await sender.stop()

    app.on_before_shutdown.connect(stop_delivery)

    register_action_views(app, runtime, actions)
    return actions
