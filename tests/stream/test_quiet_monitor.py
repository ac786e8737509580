"""The worker's Faust Monitor skips Faust's per-message bookkeeping unless asked for it."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.settings import Settings
from pipeline.stream.app import QuietMonitor


def test_quiet_by_default() -> None:
    assert Settings().faust_monitor is False
    assert Settings(faust_monitor=True).faust_monitor is True


def test_per_message_hooks_record_nothing() -> None:
    monitor = QuietMonitor()
    message = SimpleNamespace(time_in=None, time_out=None, time_total=None)
    monitor.on_message_in("tp", 1, message)
    assert monitor.on_stream_event_in("tp", 1, object(), object()) is None
    monitor.on_stream_event_out("tp", 1, object(), object(), None)
    monitor.on_message_out("tp", 1, message)
    assert monitor.messages_received_total == 0 and monitor.events_total == 0
    assert message.time_in is None and not monitor.events_runtime
