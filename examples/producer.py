"""A service that meters its LLM calls with the tokenmeter SDK.

Run the stack (`make demo` or `tokenmeter up`), then: .venv/bin/python examples/producer.py
"""

from __future__ import annotations

import random

from pipeline.sdk import UsageProducer, decide

API = "http://127.0.0.1:6066"


def main() -> None:
    rng = random.Random(1)
    recorded = 0
    with UsageProducer(bootstrap_servers="127.0.0.1:9092") as meter:
        for _ in range(200):
            model = "gpt-4o"
            verdict = decide(API, tenant_id="acme", model=model, estimated_input_tokens=1200,
                             estimated_output_tokens=300, value_tier="standard")
            if verdict["decision"] == "deny":
                print("over budget, skipping:", verdict["reason"])
                continue
            if verdict["decision"] == "downgrade":
                model = verdict["suggested_model"]
            # ... call the model here; then record what it really used:
            meter.record(tenant_id="acme", provider="openai", model=model,
                         input_tokens=rng.randint(800, 1600), output_tokens=rng.randint(100, 500),
                         feature="support-bot", task_type="customer_support")
            recorded += 1
        meter.flush()
    print(f"recorded {recorded} calls")


if __name__ == "__main__":
    main()
