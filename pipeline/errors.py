"""The one exception tree of tokenmeter.

Every error a user can see derives from :class:`TokenmeterError` and carries a message
that says what was wrong and what to do about it::

    TokenmeterError
    ├── ConfigError          bad setting, flag or DSN (names the setting that fixes it)
    ├── BrokerError          embedded broker missing, port taken, Kafka unreachable
    ├── StoreError           ClickHouse unreachable, data dir locked or not writable
    │   ├── QueryRefused     a query the read-only surface does not run
    │   └── StoreWriteFailed an insert ClickHouse refuses for good (retrying cannot help)
    ├── ValidationFailed     a usage event or budget that does not validate (has reason_code)
    ├── PricingError         no price for a model at a time (reason_code unknown_model)
    ├── TokenCountError      no tiktoken encoding available offline
    └── RouterArtifactError  a router artifact that is not valid (unknown schema, edited, damaged)
"""

from __future__ import annotations


class TokenmeterError(Exception):
    """Root of every error tokenmeter raises on purpose."""


class ConfigError(TokenmeterError):
    """A setting, flag or DSN is invalid."""


class BrokerError(TokenmeterError):
    """The Kafka broker cannot be started or reached."""


class StoreError(TokenmeterError):
    """ClickHouse cannot be opened or reached."""


class QueryRefused(StoreError):
    """A query was refused by the read-only query surface."""


class StoreWriteFailed(StoreError):
    """ClickHouse refused an insert for a reason a retry cannot fix (bad value, schema)."""


class ValidationFailed(TokenmeterError):
    """Input failed validation; ``reason_code`` is stable and machine-readable."""

    def __init__(self, reason_code: str, detail: str) -> None:
        super().__init__(f"{reason_code}: {detail}")
        self.reason_code = reason_code
        self.detail = detail


class PricingError(ValidationFailed):
    """No price is known for a model at the event's time."""


class TokenCountError(TokenmeterError):
    """Tokens cannot be counted offline."""


class RouterArtifactError(TokenmeterError):
    """A router artifact cannot be used: unknown schema version, bad field, or edited content."""
