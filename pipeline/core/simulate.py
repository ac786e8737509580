"""Realistic synthetic usage traffic (pure: the caller passes time and a seed)."""

from __future__ import annotations

import math
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

# (provider, model, weight): a plausible production mix across providers
MODEL_MIX: tuple[tuple[str, str, float], ...] = (
    ("openai", "gpt-4o-mini", 30), ("openai", "gpt-4o-2024-08-06", 12),
    ("openai", "gpt-4.1", 6), ("openai", "o3-mini", 3), ("openai", "gpt-5-mini", 5),
    ("anthropic", "claude-3-5-sonnet-20241022", 10), ("anthropic", "claude-3-haiku-20240307", 8),
    ("anthropic", "claude-sonnet-4-20250514", 5), ("google", "gemini-1.5-flash-002", 8),
    ("google", "gemini-2.5-pro", 3), ("groq", "llama3-70b-8192", 4), ("groq", "llama3-8b-8192", 3),
    ("mistral", "mistral-large-latest", 2), ("deepseek", "deepseek-chat", 1),
)
FEATURES = ("chat", "search", "summarize", "email", "agent", "classify", "extract")
TASKS: tuple[tuple[str, float], ...] = (
    ("customer_support", 25), ("sales_email", 15), ("summarization", 15), ("code_generation", 10),
    ("data_analysis", 8), ("regulatory_compliance", 4), ("marketing_copy", 8), ("chat", 10),
    ("fraud_detection", 2), ("experimentation", 3),
)
CRITICALITY = (("low", 15), ("normal", 65), ("high", 15), ("critical", 5))
USER_TIERS = (("free", 40), ("standard", 35), ("pro", 20), ("enterprise", 5))
_WORDS = "the invoice customer model request answer report policy data summary risk".split()


class Simulator:
    """Generates usage events for N tenants with skewed (Zipf-like) sizes."""

    def __init__(self, tenants: int, seed: int = 0, text_share: float = 0.05,
                 cache_hit_share: float = 0.04) -> None:
        self.rng = random.Random(seed)
        self.tenants = [f"tenant-{i:05d}" for i in range(tenants)]
        self.tenant_weights = [1.0 / (i + 1) ** 1.1 for i in range(tenants)]
        self.text_share = text_share
        self.cache_hit_share = cache_hit_share
        self._models = [m[:2] for m in MODEL_MIX]
        self._model_w = [m[2] for m in MODEL_MIX]

    def _pick(self, table: tuple[tuple[str, float], ...]) -> str:
        return self.rng.choices([t[0] for t in table], [t[1] for t in table])[0]

    def event(self, at: datetime) -> dict[str, Any]:
        """One synthetic usage event at time ``at``."""
        rng = self.rng
        tenant = rng.choices(self.tenants, self.tenant_weights)[0]
        provider, model = rng.choices(self._models, self._model_w)[0]
        input_tokens = int(rng.lognormvariate(6.5, 1.0)) + 1
        output_tokens = int(rng.lognormvariate(5.0, 0.9)) + 1
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "timestamp": at.isoformat(),
            "tenant_id": tenant,
            "project_id": f"{tenant}-p{rng.randint(1, 3)}",
            "user_id": f"user-{rng.randint(1, 200)}",
            "feature": rng.choice(FEATURES),
            "provider": provider,
            "model": model,
            "task_type": self._pick(TASKS),
            "criticality": self._pick(CRITICALITY),
            "user_tier": self._pick(USER_TIERS),
        }
        roll = rng.random()
        if roll < self.text_share:
            n = max(1, input_tokens // 50)
            event["input_text"] = " ".join(rng.choice(_WORDS) for _ in range(n))
            event["output_text"] = " ".join(rng.choice(_WORDS) for _ in range(max(1, n // 3)))
            return event
        event["input_tokens"] = input_tokens
        event["output_tokens"] = output_tokens
        if provider == "anthropic" and rng.random() < 0.3:
            event["cache_read_input_tokens"] = rng.randint(0, input_tokens)
        if model.startswith(("o3", "gpt-5")):
            event["reasoning_output_tokens"] = rng.randint(0, output_tokens)
        if rng.random() < self.cache_hit_share:
            event["cache_hit"] = True
        # batch only where the provider sells it (the meter refuses a tier it cannot price)
        if rng.random() < 0.03 and (provider in ("openai", "anthropic")
                                    or model == "gemini-2.5-pro"):
            event["service_tier"] = "batch"
        return event

    def history(self, now: datetime, days: int, per_hour: float) -> list[dict[str, Any]]:
        """Backdated traffic for the last ``days`` days: a working-hours curve, quieter weekends
        and a slow upward trend, ``per_hour`` events in an average weekday hour."""
        start = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
        out = []
        hour = start
        while hour < now:
            weekend = 0.35 if hour.weekday() >= 5 else 1.0
            daytime = 0.3 + 1.4 * math.exp(-((hour.hour - 14) ** 2) / 18)
            growth = 0.7 + 0.6 * (hour - start) / (now - start)
            n = _poisson(self.rng, per_hour * weekend * daytime * growth)
            for _ in range(n):
                at = hour + timedelta(seconds=self.rng.randrange(3600))
                if at < now:
                    out.append(self.event(at))
            hour += timedelta(hours=1)
        return out


RUNAWAY_MODEL = ("anthropic", "claude-opus-4")


def runaway_call(at: datetime, tenant: str, run_id: str, step: int) -> dict[str, Any]:
    """Call ``step`` of a runaway agent loop: Opus, the same run (trace_id and
    attributes.run_id), a context that grows with every step as loops' contexts do."""
    provider, model = RUNAWAY_MODEL
    return {
        "event_id": f"{run_id}-step-{step:05d}",
        "timestamp": at.isoformat(),
        "tenant_id": tenant,
        "project_id": f"{tenant}-agents",
        "user_id": "agent-runner",
        "feature": "agent",
        "trace_id": run_id,
        "attributes": {"run_id": run_id},
        "provider": provider,
        "model": model,
        "input_tokens": 4000 + 500 * step,
        "output_tokens": 900,
        "task_type": "code_generation",
    }


# the demo's routed prompts: quick lookups and multiple choice next to multi-step maths,
# code and long passages, so the router's scores spread on both sides of its threshold
_PLACES = ("France", "Kenya", "Peru", "Japan", "Norway", "Chile", "Egypt", "Canada")
_PHRASES = ("the invoice is late", "thanks for the quick reply", "the product broke twice",
            "great support, slow shipping", "please cancel my order")
_TASKS_TEXT = ("merges overlapping intervals", "parses ISO 8601 durations",
               "finds the k most frequent words", "detects a cycle in a linked list")
_EASY = (
    "What is the capital of {place}?",
    "Translate into French: {phrase}",
    "Classify the sentiment of this review as positive or negative: {phrase}",
    "Which country is {place} next to?\nA. {place}\nB. Mars\nC. Atlantis\nD. none\nAnswer:",
    "Reply to the customer in one sentence: {phrase}",
)
_HARD = (
    "Let f(x) = {n}x^3 - {m}x^2 + {k}x - 1. Find every real x where f'(x) = 0, evaluate "
    "f at each, and determine which are maxima. Show each step of the calculation.",
    "Write a Python function that {task}. Return the result, handle empty input, add unit "
    "tests with assert == checks, and derive its time complexity: def solve(items):",
    "Prove that the sum of the first {n} odd numbers equals {n}^2, then prove by induction "
    "that 1^3 + 2^3 + ... + n^3 = (n(n+1)/2)^2 for every n >= 1.",
    "A loan of ${m},000 at {k}% compounded monthly is repaid over {n} years. Calculate the "
    "monthly payment, the total interest, and the balance after 12 payments.",
)


def routed_prompt(rng: random.Random) -> tuple[str, bool]:
    """One prompt of the demo's routed traffic and whether it was drawn as a hard one."""
    hard = rng.random() < 0.35
    template = rng.choice(_HARD if hard else _EASY)
    text = template.format(place=rng.choice(_PLACES), phrase=rng.choice(_PHRASES),
                           task=rng.choice(_TASKS_TEXT), n=rng.randint(3, 40),
                           m=rng.randint(2, 90), k=rng.randint(2, 9))
    return text, hard


def routed_call(rng: random.Random, tenants: list[str]) -> dict[str, Any]:
    """A call the demo routes: its prompt, scope and token estimates (the usage is recorded
    once the routed model is known)."""
    text, hard = routed_prompt(rng)
    tenant = rng.choice(tenants)
    return {
        "tenant_id": tenant, "project_id": f"{tenant}-p1", "user_id": f"user-{rng.randint(1, 20)}",
        "feature": "chat",
        "task_type": rng.choices([t[0] for t in TASKS], [t[1] for t in TASKS])[0],
        "criticality": rng.choices([c[0] for c in CRITICALITY], [c[1] for c in CRITICALITY])[0],
        "user_tier": rng.choices([u[0] for u in USER_TIERS], [u[1] for u in USER_TIERS])[0],
        "prompt": text,
        # about 4 characters a token; a hard prompt's answer is longer
        "estimated_input_tokens": len(text) // 4 + 20,
        "estimated_output_tokens": rng.randint(400, 900) if hard else rng.randint(20, 150),
    }


def _poisson(rng: random.Random, mean: float) -> int:
    """Poisson draw by inversion (small means only; random.Random has no poisson)."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
