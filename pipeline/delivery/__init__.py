"""Delivery of budget breaches to webhooks: signing, payloads and retry policy (webhooks.py,
pure) and the sender that POSTs and records them (sender.py)."""
