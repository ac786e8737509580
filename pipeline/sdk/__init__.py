"""Python SDK for producers: record usage events without writing JSON by hand.

    from pipeline.sdk import UsageProducer

    with UsageProducer(bootstrap_servers="127.0.0.1:9092") as meter:
        meter.record(tenant_id="acme", provider="openai", model="gpt-4o",
                     input_tokens=1200, output_tokens=300, feature="search")

Anthropic reports ``input_tokens`` without the cache reads and writes (ours include them) and
splits writes by lifetime; ``anthropic_usage`` maps its usage object onto our fields::

    meter.record(tenant_id="acme", provider="anthropic", model=resp.model,
                 **anthropic_usage(resp.usage))

Reservations hold an estimate against the tenant's budgets before a call (the worker's
``POST /api/reservations``); events recorded inside the block carry its ``reservation_id``
and each takes its actual cost out of the hold; leaving the block releases the rest once
those events are counted (at once when there were none). Inside ``meter_run`` the
reservation names the run (``trace_id`` and ``attributes.run_id``, as the run's events do)::

    with UsageProducer("127.0.0.1:9092", api_url="http://127.0.0.1:6066") as meter:
        with meter.reserve(tenant_id="acme", model="gpt-4o", estimated_input_tokens=2000,
                           estimated_output_tokens=500) as r:
            if r.decision != "deny":
                meter.record(tenant_id="acme", provider="openai", model=r.model, ...)

Events get an ``event_id`` (UUID) and a UTC timestamp, are validated before sending (a bad
event raises ``ValidationFailed`` at the call site, not in the pipeline), and go out as batch
envelopes of up to ``batch_size`` events per tenant or after ``linger_ms``.

Outcomes report how a metered call went (``success``, a ``score`` in [0, 1], an end user's
``feedback``), by the ``event_id`` ``record`` returned; they go to the ``usage-outcomes``
topic (docs/routing.md, "Outcomes")::

    event_id = meter.record(tenant_id="acme", provider="openai", model=route.model, ...)
    meter.outcome(event_id=event_id, tenant_id="acme", success=tests_passed)
"""

# the public surface only: the code lives in the private modules (_producer: the producers
# and anthropic_usage; _decisions: decide, reserve, Reservation) and in instrument, routing
from pipeline.sdk._decisions import Reservation, decide, reserve
from pipeline.sdk._producer import AsyncUsageProducer, UsageProducer, anthropic_usage
from pipeline.sdk.instrument import CallMeter, instrument, meter_run
from pipeline.sdk.routing import Route, Router, route_prompt

__all__ = ["AsyncUsageProducer", "CallMeter", "Reservation", "Route", "Router",
           "UsageProducer", "anthropic_usage", "decide", "instrument", "meter_run", "reserve",
           "route_prompt"]
