"""A gateway that reacts to budget breaches: on a downgrade or throttle it routes the tenant
to a cheaper model, on block it stops the tenant's calls, and it ignores duplicates.

Run the stack, then: .venv/bin/python examples/breach_consumer.py
"""

from __future__ import annotations

import asyncio
import json

from aiokafka import AIOKafkaConsumer

CHEAPER = {"gpt-4o": "gpt-4o-mini", "claude-3-5-sonnet": "claude-3-haiku",
           "gemini-1.5-pro": "gemini-1.5-flash"}


class Router:
    """Which model each tenant may use right now."""

    def __init__(self) -> None:
        self.model: dict[str, str] = {}
        self.blocked: set[str] = set()
        self.seen: set[str] = set()

    def on_breach(self, breach: dict) -> None:
        """Apply one breach (each breach_id once: replays repeat ids, never invent new ones)."""
        if breach["breach_id"] in self.seen:
            return
        self.seen.add(breach["breach_id"])
        tenant, action = breach["tenant_id"], breach["action"]
        if action == "block":
            self.blocked.add(tenant)
        elif action in ("downgrade", "throttle"):
            current = self.model.get(tenant, "gpt-4o")
            self.model[tenant] = CHEAPER.get(current, current)
        print(f"{tenant}: {breach['kind']} {breach['threshold_pct']}% of {breach['budget_id']}"
              f"{'/' + breach['pool'] if breach['pool'] else ''} -> {action}; now "
              f"{'blocked' if tenant in self.blocked else self.model.get(tenant, 'gpt-4o')}")


async def main() -> None:
    router = Router()
    consumer = AIOKafkaConsumer("budget-breaches", bootstrap_servers="127.0.0.1:9092",
                                group_id="gateway", auto_offset_reset="earliest",
                                fetch_max_wait_ms=20)
    await consumer.start()
    try:
        async for message in consumer:
            router.on_breach(json.loads(message.value))
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
