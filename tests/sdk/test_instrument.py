"""instrument(): the real openai/anthropic SDKs against an in-process fake of their HTTP APIs.

The fake (an httpx2.MockTransport handler, the HTTP library both SDKs use) replays response
shapes written by hand after the providers' documented formats (tests/sdk/fixtures). Each
scenario checks the events the producer got, and their cost priced by hand from the
catalog's rates (per 1M tokens) at a fixed instant; the same events priced by the worker's
own Meter must agree.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.meter import Meter
from pipeline.core.scoring import load_policy
from pipeline.errors import ConfigError
from pipeline.sdk import instrument, meter_run

AT = datetime(2026, 6, 17, 10, 20, 30, tzinfo=timezone.utc)  # fixed: never the wall clock
FIXTURES = Path(__file__).parent / "fixtures"
M = Decimal(1_000_000)
PROMPT = [{"role": "user", "content": "Say hello world"}]  # 3 tokens (o200k and cl100k)
LEDGER = Meter(load_catalog(), load_policy())


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# ---- the fake provider ---------------------------------------------------------------

Reply = Callable[[httpx2.Request], httpx2.Response]


class Chunks(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A response body sent piece by piece, optionally failing after the last piece."""

    def __init__(self, parts: list[bytes], error: Exception | None = None) -> None:
        self.parts = parts
        self.error = error

    def __iter__(self) -> Iterator[bytes]:
        yield from self.parts
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> Any:
        for part in self.parts:
            yield part
        if self.error is not None:
            raise self.error


def json_reply(name: str, status: int = 200) -> Reply:
    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json=fixture(name),
                               headers={"x-request-id": f"req_{status}",
                                        "request-id": f"req_{status}"})
    return reply


def sse_reply(name: str, *, events: int | None = None, error: Exception | None = None,
              named: bool = False, done: bool = True) -> Reply:
    """SSE of a fixture's items (the first ``events`` of them), OpenAI's [DONE] at the end."""
    def reply(request: httpx2.Request) -> httpx2.Response:
        items = fixture(name)[:events]
        parts = [((f"event: {item['type']}\n" if named else "")
                  + f"data: {json.dumps(item)}\n\n").encode() for item in items]
        if done and events is None and not named:
            parts.append(b"data: [DONE]\n\n")
        return httpx2.Response(200, stream=Chunks(parts, error),
                               headers={"content-type": "text/event-stream",
                                        "x-request-id": "req_stream",
                                        "request-id": "req_stream"})
    return reply


def timeout_reply(request: httpx2.Request) -> httpx2.Response:
    raise httpx2.ReadTimeout("timed out waiting for the response", request=request)


def connect_error_reply(request: httpx2.Request) -> httpx2.Response:
    raise httpx2.ConnectError("connection refused", request=request)


class FakeAPI:
    """Replays the scripted replies in order and keeps every request it got."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return self.replies.pop(0)(request)

    def body(self, i: int = 0) -> Any:
        return json.loads(self.requests[i].content)


class Collect:
    """A producer that keeps what it was asked to record (the real one is tested elsewhere)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, **event: Any) -> str:
        self.events.append(event)
        return str(event["event_id"])


class AsyncCollect(Collect):
    async def record(self, **event: Any) -> str:  # type: ignore[override]
        self.events.append(event)
        return str(event["event_id"])


def no_backoff(client: Any) -> Any:
    client._calculate_retry_timeout = lambda *a, **k: 0.0  # retries without the real sleeps
    return client


def oai(fake: FakeAPI, producer: Any, *, max_retries: int = 2, **kw: Any) -> openai.OpenAI:
    http = httpx2.Client(transport=httpx2.MockTransport(fake))
    client = no_backoff(openai.OpenAI(api_key="sk-test", base_url="https://api.openai.test/v1",
                                      http_client=http, max_retries=max_retries))
    return instrument(client, producer=producer, tenant="acme", clock=lambda: AT, **kw)


def ant(fake: FakeAPI, producer: Any, *, max_retries: int = 2,
        **kw: Any) -> anthropic.Anthropic:
    http = httpx2.Client(transport=httpx2.MockTransport(fake))
    client = no_backoff(anthropic.Anthropic(api_key="sk-ant-test",
                                            base_url="https://api.anthropic.test",
                                            http_client=http, max_retries=max_retries))
    return instrument(client, producer=producer, tenant="acme", clock=lambda: AT, **kw)


def ledger_cost(event: dict[str, Any]) -> Decimal:
    """What the worker's Meter prices the recorded event at."""
    raw = {**event, "timestamp": event["timestamp"].isoformat()}
    return LEDGER.meter_object(raw, now=AT).total_cost


def tokens(event: dict[str, Any]) -> tuple[int, ...]:
    return (event["input_tokens"], event.get("cache_read_input_tokens", 0),
            event.get("cache_creation_input_tokens", 0),
            event.get("cache_creation_1h_input_tokens", 0), event["output_tokens"],
            event.get("reasoning_output_tokens", 0))


def attrs(event: dict[str, Any], *names: str) -> dict[str, str]:
    return {n: event["attributes"].get(n) for n in names}


# ---- OpenAI, non-streamed -------------------------------------------------------------

def test_openai_plain_call_records_the_providers_usage_and_its_cost() -> None:
    fake, meter = FakeAPI(json_reply("openai_chat.json")), Collect()
    client = oai(fake, meter, feature="search", project_id="web")
    resp = client.chat.completions.create(model="gpt-4o", messages=PROMPT)
    [event] = meter.events
    assert (event["tenant_id"], event["provider"], event["model"]) \
        == ("acme", "openai", "gpt-4o-2024-08-06")  # the model that ran, as billed
    assert (event["feature"], event["project_id"]) == ("search", "web")
    assert tokens(event) == (1200, 0, 0, 0, 300, 0)
    assert event["service_tier"] == "standard"
    assert attrs(event, "status", "attempt", "estimated", "http_status",
                 "provider_request_id", "provider_service_tier") == {
        "status": "ok", "attempt": "1", "estimated": "false", "http_status": "200",
        "provider_request_id": "req_200", "provider_service_tier": "default"}
    expected = (1200 * Decimal("2.50") + 300 * Decimal("10.00")) / M  # 0.006
    assert resp.tokenmeter.cost == expected == ledger_cost(event)
    assert resp.tokenmeter.event_id == event["event_id"]
    assert resp.tokenmeter.estimated is False
    assert "tokenmeter" not in resp.model_dump()  # the response's own data is untouched
    assert resp.choices[0].message.content == "Paris."


def test_openai_cached_prompt_at_the_priority_tier() -> None:
    fake, meter = FakeAPI(json_reply("openai_chat_cached_priority.json")), Collect()
    resp = oai(fake, meter).chat.completions.create(model="gpt-4o", messages=PROMPT,
                                                    service_tier="priority")
    [event] = meter.events
    assert tokens(event) == (2006, 1920, 0, 0, 300, 0)  # prompt_tokens includes the cached
    assert event["service_tier"] == "priority"
    # gpt-4o priority: input 4.25, cache read 2.125, output 17.00
    expected = (86 * Decimal("4.25") + 1920 * Decimal("2.125") + 300 * Decimal("17.00")) / M
    assert resp.tokenmeter.cost == expected == ledger_cost(event) == Decimal("0.0095455")


def test_openai_reasoning_model_bills_reasoning_as_output_at_flex() -> None:
    fake, meter = FakeAPI(json_reply("openai_chat_reasoning_flex.json")), Collect()
    resp = oai(fake, meter).chat.completions.create(model="o4-mini", messages=PROMPT,
                                                    service_tier="flex")
    [event] = meter.events
    assert event["model"] == "o4-mini-2025-04-16"
    assert tokens(event) == (500, 0, 0, 0, 1500, 1200)
    assert event["service_tier"] == "flex"
    # o4-mini flex: input 0.55, output 2.20 (reasoning is billed as output)
    expected = (500 * Decimal("0.55") + 1500 * Decimal("2.20")) / M
    assert resp.tokenmeter.cost == expected == ledger_cost(event) == Decimal("0.003575")


def test_openai_responses_api_with_cached_input() -> None:
    fake, meter = FakeAPI(json_reply("openai_responses.json")), Collect()
    resp = oai(fake, meter).responses.create(model="gpt-4o", input="Capital of France?")
    [event] = meter.events
    assert tokens(event) == (1000, 800, 0, 0, 100, 0)
    assert event["attributes"]["api"] == "responses"
    expected = (200 * Decimal("2.50") + 800 * Decimal("1.25") + 100 * Decimal("10")) / M
    assert resp.tokenmeter.cost == expected == ledger_cost(event)


# ---- OpenAI, streamed -----------------------------------------------------------------

def test_openai_stream_requests_usage_and_records_the_final_usage_chunk() -> None:
    fake, meter = FakeAPI(sse_reply("openai_chat_stream.json")), Collect()
    stream = oai(fake, meter).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                      stream=True)
    chunks = list(stream)
    assert fake.body()["stream_options"] == {"include_usage": True}
    # the usage-only chunk (no choices) was asked for by us, not shown to the caller
    assert all(c.choices for c in chunks) and len(chunks) == 5
    [event] = meter.events
    assert event["model"] == "gpt-4o-mini-2024-07-18"
    assert tokens(event) == (20, 0, 0, 0, 5, 0)
    assert attrs(event, "status", "stream", "estimated") == {
        "status": "ok", "stream": "true", "estimated": "false"}
    expected = (20 * Decimal("0.15") + 5 * Decimal("0.60")) / M
    assert stream.tokenmeter.cost == expected == ledger_cost(event)
    assert stream.tokenmeter.done


def test_openai_stream_shows_the_usage_chunk_to_a_caller_who_asked_for_it() -> None:
    fake, meter = FakeAPI(sse_reply("openai_chat_stream.json")), Collect()
    stream = oai(fake, meter).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert tokens(meter.events[0]) == (20, 0, 0, 0, 5, 0)


def test_openai_stream_cut_by_the_caller_records_an_estimate() -> None:
    fake, meter = FakeAPI(sse_reply("openai_chat_stream.json")), Collect()
    stream = oai(fake, meter).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                      stream=True)
    got = []
    for chunk in stream:
        got.append(chunk.choices[0].delta.content)
        if len(got) == 3:
            break  # the caller stops reading: no usage chunk ever arrives
    assert got == ["", "Hello", " world"]
    [event] = meter.events
    # prompt "Say hello world" = 3 tokens, received "Hello world" = 2 tokens (tiktoken)
    assert tokens(event) == (3, 0, 0, 0, 2, 0)
    assert attrs(event, "status", "estimated") == {"status": "cancelled", "estimated": "true"}
    assert event["attributes"]["token_source"].startswith("tiktoken:")
    expected = (3 * Decimal("0.15") + 2 * Decimal("0.60")) / M
    assert stream.tokenmeter.cost == expected == ledger_cost(event)
    assert stream.tokenmeter.estimated
    assert stream.response.is_closed  # the connection is closed: generation stops


def test_openai_stream_closed_with_a_with_block_records_once() -> None:
    fake, meter = FakeAPI(sse_reply("openai_chat_stream.json")), Collect()
    with oai(fake, meter).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                  stream=True) as stream:
        next(stream)
        next(stream)
    [event] = meter.events
    assert tokens(event) == (3, 0, 0, 0, 1, 0)  # received "" and "Hello"
    assert event["attributes"]["status"] == "cancelled"


def test_openai_stream_without_a_usage_chunk_is_estimated_not_an_error() -> None:
    # an OpenAI-compatible server that ignores stream_options: the stream ends without usage
    fake, meter = FakeAPI(sse_reply("openai_chat_stream.json", events=5)), Collect()
    stream = oai(fake, meter).chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                                      stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello world!"
    [event] = meter.events
    assert tokens(event) == (3, 0, 0, 0, 3, 0)  # "Hello world!" = 3 tokens
    assert attrs(event, "status", "estimated") == {"status": "ok", "estimated": "true"}


def test_openai_responses_stream_records_response_completed_usage() -> None:
    fake = FakeAPI(sse_reply("openai_responses_stream.json", named=True))
    meter = Collect()
    stream = oai(fake, meter).responses.create(model="gpt-4o", input="Hi", stream=True)
    kinds = [e.type for e in stream]
    assert kinds == ["response.created", "response.output_text.delta",
                     "response.output_text.delta", "response.completed"]
    [event] = meter.events
    assert tokens(event) == (1000, 800, 0, 0, 100, 0)
    assert attrs(event, "api", "status", "estimated") == {
        "api": "responses", "status": "ok", "estimated": "false"}


def test_openai_responses_stream_cut_counts_the_deltas() -> None:
    fake = FakeAPI(sse_reply("openai_responses_stream.json", named=True))
    meter = Collect()
    stream = oai(fake, meter).responses.create(model="gpt-4o", input="Say hello world",
                                               stream=True)
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    [event] = meter.events
    assert tokens(event) == (3, 0, 0, 0, 1, 0)  # prompt 3 tokens, "Hello" 1 token
    assert event["attributes"]["status"] == "cancelled"


# ---- OpenAI, failures and retries ----------------------------------------------------

def test_openai_429_then_success_records_both_attempts() -> None:
    fake = FakeAPI(json_reply("openai_error_429.json", 429), json_reply("openai_chat.json"))
    meter = Collect()
    resp = oai(fake, meter).chat.completions.create(model="gpt-4o", messages=PROMPT)
    assert len(fake.requests) == 2  # the SDK retried
    rejected, ok = meter.events
    assert rejected["attributes"]["request_id"] == ok["attributes"]["request_id"]
    assert attrs(rejected, "attempt", "status", "http_status") == {
        "attempt": "1", "status": "rejected", "http_status": "429"}
    assert tokens(rejected) == (0, 0, 0, 0, 0, 0) and ledger_cost(rejected) == 0
    assert rejected["model"] == "gpt-4o"  # nothing ran: the requested model
    assert attrs(ok, "attempt", "status") == {"attempt": "2", "status": "ok"}
    assert resp.tokenmeter.cost == Decimal("0.006") == ledger_cost(ok)
    assert [a.status for a in resp.tokenmeter.attempts] == ["rejected", "ok"]


def test_openai_500_then_timeout_records_a_rejection_and_an_estimated_prompt() -> None:
    fake = FakeAPI(json_reply("openai_error_500.json", 500), timeout_reply)
    meter = Collect()
    with pytest.raises(openai.APITimeoutError) as err:
        oai(fake, meter, max_retries=1).chat.completions.create(model="gpt-4o",
                                                                messages=PROMPT)
    rejected, timed_out = meter.events
    assert attrs(rejected, "attempt", "status", "http_status") == {
        "attempt": "1", "status": "rejected", "http_status": "500"}
    assert tokens(rejected) == (0, 0, 0, 0, 0, 0)
    # the provider had the request and may have processed it: the prompt, counted offline
    assert attrs(timed_out, "attempt", "status", "estimated", "error") == {
        "attempt": "2", "status": "timeout", "estimated": "true", "error": "ReadTimeout"}
    assert tokens(timed_out) == (3, 0, 0, 0, 0, 0)
    expected = 3 * Decimal("2.50") / M
    assert err.value.tokenmeter.cost == expected == ledger_cost(timed_out)  # type: ignore[attr-defined]


def test_openai_connection_refused_records_rejected_attempts_with_zero_tokens() -> None:
    fake = FakeAPI(connect_error_reply, connect_error_reply)
    meter = Collect()
    with pytest.raises(openai.APIConnectionError):
        oai(fake, meter, max_retries=1).chat.completions.create(model="gpt-4o",
                                                                messages=PROMPT)
    assert [(e["attributes"]["status"], e["attributes"]["error"], tokens(e))
            for e in meter.events] == [("rejected", "ConnectError", (0,) * 6)] * 2


# ---- Anthropic ------------------------------------------------------------------------

def test_anthropic_plain_call() -> None:
    fake, meter = FakeAPI(json_reply("anthropic_message.json")), Collect()
    resp = ant(fake, meter).messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                            messages=PROMPT)
    [event] = meter.events
    assert (event["provider"], event["model"]) == ("anthropic", "claude-sonnet-4-5-20250929")
    assert tokens(event) == (100, 0, 0, 0, 50, 0)
    assert event["attributes"]["provider_request_id"] == "req_200"
    expected = (100 * Decimal("3.00") + 50 * Decimal("15.00")) / M
    assert resp.tokenmeter.cost == expected == ledger_cost(event)


def test_anthropic_cached_prompt_with_5m_and_1h_writes() -> None:
    fake, meter = FakeAPI(json_reply("anthropic_message_cached.json")), Collect()
    resp = ant(fake, meter).messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                            messages=PROMPT)
    [event] = meter.events
    # Anthropic's input_tokens (50) excludes the cache: ours is 50 + 1000 read + 500 written
    assert tokens(event) == (1550, 1000, 500, 300, 100, 0)
    expected = (50 * Decimal("3.00") + 1000 * Decimal("0.30") + 200 * Decimal("3.75")
                + 300 * Decimal("6.00") + 100 * Decimal("15.00")) / M
    assert resp.tokenmeter.cost == expected == ledger_cost(event) == Decimal("0.0045")


def test_anthropic_stream_takes_usage_from_message_start_and_delta() -> None:
    fake, meter = FakeAPI(sse_reply("anthropic_stream.json", named=True)), Collect()
    stream = ant(fake, meter).messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                              messages=PROMPT, stream=True)
    kinds = [e.type for e in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    [event] = meter.events
    assert tokens(event) == (25, 0, 0, 0, 12, 0)
    assert attrs(event, "status", "estimated") == {"status": "ok", "estimated": "false"}
    expected = (25 * Decimal("3.00") + 12 * Decimal("15.00")) / M
    assert stream.tokenmeter.cost == expected == ledger_cost(event)


def test_anthropic_stream_broken_by_the_network_keeps_the_exact_input() -> None:
    fake = FakeAPI(sse_reply("anthropic_stream.json", named=True, events=4,
                             error=httpx2.ReadError("connection reset by peer")))
    meter = Collect()
    stream = ant(fake, meter).messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                              messages=PROMPT, stream=True)
    with pytest.raises((anthropic.APIConnectionError, httpx2.ReadError)):  # SDK passes it on
        for _ in stream:
            pass
    [event] = meter.events
    # message_start gave the exact input (25); the output is the text received ("Hi" = 1)
    assert tokens(event) == (25, 0, 0, 0, 1, 0)
    assert attrs(event, "status", "estimated") == {"status": "error", "estimated": "true"}
    expected = (25 * Decimal("3.00") + 1 * Decimal("15.00")) / M
    assert stream.tokenmeter.cost == expected == ledger_cost(event)


def test_anthropic_overloaded_then_success() -> None:
    fake = FakeAPI(json_reply("anthropic_error_529.json", 529), json_reply("anthropic_message.json"))
    meter = Collect()
    resp = ant(fake, meter).messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                            messages=PROMPT)
    assert [(e["attributes"]["status"], e["attributes"].get("http_status")) for e in meter.events] \
        == [("rejected", "529"), ("ok", "200")]
    assert resp.tokenmeter.cost == Decimal("0.00105")


# ---- runs, scope, configuration -------------------------------------------------------

def test_calls_inside_a_run_carry_its_id() -> None:
    fake = FakeAPI(json_reply("openai_chat.json"), json_reply("openai_chat.json"),
                   json_reply("openai_chat.json"))
    meter = Collect()
    client = oai(fake, meter, run="static-run")
    client.chat.completions.create(model="gpt-4o", messages=PROMPT)
    with meter_run("agent-run-7"):
        client.chat.completions.create(model="gpt-4o", messages=PROMPT)
    client.chat.completions.create(model="gpt-4o", messages=PROMPT)
    assert [(e["trace_id"], e["attributes"]["run_id"]) for e in meter.events] == [
        ("static-run", "static-run"), ("agent-run-7", "agent-run-7"),
        ("static-run", "static-run")]
    assert len({e["attributes"]["request_id"] for e in meter.events}) == 3


def test_only_the_instrumented_instance_is_metered() -> None:
    meter = Collect()
    fake = FakeAPI(json_reply("openai_chat.json"), json_reply("openai_chat.json"))
    oai(fake, meter)
    other = openai.OpenAI(api_key="sk-test", base_url="https://api.openai.test/v1",
                          http_client=httpx2.Client(transport=httpx2.MockTransport(fake)))
    other.chat.completions.create(model="gpt-4o", messages=PROMPT)
    assert meter.events == []


def test_a_blocking_client_refuses_an_asyncio_producer() -> None:
    with pytest.raises(ConfigError, match="blocking producer"):
        instrument(openai.OpenAI(api_key="sk-test"), producer=AsyncCollect(), tenant="acme")
    with pytest.raises(ConfigError, match="openai and anthropic"):
        instrument(object(), producer=Collect(), tenant="acme")


def test_a_recording_failure_does_not_fail_the_call() -> None:
    class Broken:
        def record(self, **event: Any) -> str:
            raise RuntimeError("broker down")

    fake = FakeAPI(json_reply("openai_chat.json"))
    resp = oai(fake, Broken()).chat.completions.create(model="gpt-4o", messages=PROMPT)
    assert resp.choices[0].message.content == "Paris."
    assert "broker down" in (resp.tokenmeter.error or "")


# ---- async clients --------------------------------------------------------------------

def aoai(fake: FakeAPI, producer: Any, **kw: Any) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(fake))
    client = no_backoff(openai.AsyncOpenAI(api_key="sk-test",
                                           base_url="https://api.openai.test/v1",
                                           http_client=http, max_retries=2))
    return instrument(client, producer=producer, tenant="acme", clock=lambda: AT, **kw)


def test_async_openai_429_then_streamed_success() -> None:
    fake = FakeAPI(json_reply("openai_error_429.json", 429), sse_reply("openai_chat_stream.json"))
    meter = AsyncCollect()

    async def go() -> Any:
        stream = await aoai(fake, meter).chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, stream=True)
        return stream, [c async for c in stream]

    stream, chunks = asyncio.run(go())
    assert len(chunks) == 5
    rejected, ok = meter.events
    assert attrs(rejected, "attempt", "status", "http_status") == {
        "attempt": "1", "status": "rejected", "http_status": "429"}
    assert attrs(ok, "attempt", "status") == {"attempt": "2", "status": "ok"}
    assert tokens(ok) == (20, 0, 0, 0, 5, 0)
    assert stream.tokenmeter.cost == (20 * Decimal("0.15") + 5 * Decimal("0.60")) / M


def test_async_openai_stream_cut_with_async_with() -> None:
    fake, meter = FakeAPI(sse_reply("openai_chat_stream.json")), AsyncCollect()

    async def go() -> Any:
        async with await aoai(fake, meter).chat.completions.create(
                model="gpt-4o-mini", messages=PROMPT, stream=True) as stream:
            async for chunk in stream:
                if chunk.choices[0].delta.content == " world":
                    break
        return stream

    stream = asyncio.run(go())
    [event] = meter.events
    assert tokens(event) == (3, 0, 0, 0, 2, 0)
    assert attrs(event, "status", "estimated") == {"status": "cancelled", "estimated": "true"}
    assert stream.tokenmeter.estimated


def test_async_openai_stream_abandoned_in_a_loop_is_still_recorded() -> None:
    fake, meter = FakeAPI(sse_reply("openai_chat_stream.json")), AsyncCollect()

    async def go() -> None:
        client = aoai(fake, meter)
        async for chunk in await client.chat.completions.create(
                model="gpt-4o-mini", messages=PROMPT, stream=True):
            if chunk.choices[0].delta.content == "Hello":
                break  # no close(), no `async with`: the stream is dropped here
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(go())
    [event] = meter.events
    assert tokens(event) == (3, 0, 0, 0, 1, 0)
    assert event["attributes"]["status"] == "cancelled"


def test_sync_stream_dropped_unread_is_still_recorded() -> None:
    fake, meter = FakeAPI(sse_reply("openai_chat_stream.json")), Collect()
    oai(fake, meter).chat.completions.create(model="gpt-4o-mini", messages=PROMPT, stream=True)
    [event] = meter.events  # the prompt was sent and processed: it is billed
    assert tokens(event) == (3, 0, 0, 0, 0, 0)
    assert attrs(event, "status", "estimated") == {"status": "cancelled", "estimated": "true"}


def test_async_anthropic_cached_call_under_a_run() -> None:
    fake, meter = FakeAPI(json_reply("anthropic_message_cached.json")), AsyncCollect()

    async def go() -> Any:
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(fake))
        client = instrument(anthropic.AsyncAnthropic(api_key="sk-ant-test",
                                                     base_url="https://api.anthropic.test",
                                                     http_client=http),
                            producer=meter, tenant="acme", clock=lambda: AT)
        with meter_run("run-async"):
            return await client.messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                                messages=PROMPT)

    resp = asyncio.run(go())
    [event] = meter.events
    assert tokens(event) == (1550, 1000, 500, 300, 100, 0)
    assert event["trace_id"] == "run-async"
    assert resp.tokenmeter.cost == Decimal("0.0045")


# ---- through the real producer, broker and worker into the ledger ---------------------

@pytest.mark.integration
def test_the_ledger_holds_exactly_what_each_scenario_bills(settings: Any) -> None:
    from pipeline.sdk import UsageProducer
    from pipeline.stream.topics import ensure_topics
    from tests.helpers import now, query, start_worker, wait_events, wait_ready

    asyncio.run(ensure_topics(settings))
    worker = start_worker(settings)  # on the suite's pinned clock, as are the events
    try:
        wait_ready(settings, worker)
        with UsageProducer(settings.kafka_bootstrap, topic=settings.topic("usage-events"),
                           clock=now) as producer:
            def o(*replies: Reply, retries: int = 2) -> openai.OpenAI:
                client = oai(FakeAPI(*replies), producer, max_retries=retries)
                return instrument(client, producer=producer, tenant="acme", clock=now)

            o(json_reply("openai_chat.json")).chat.completions.create(
                model="gpt-4o", messages=PROMPT)
            o(json_reply("openai_error_429.json", 429), json_reply("openai_chat.json")) \
                .chat.completions.create(model="gpt-4o", messages=PROMPT)
            with pytest.raises(openai.APITimeoutError):
                o(json_reply("openai_error_500.json", 500), timeout_reply, retries=1) \
                    .chat.completions.create(model="gpt-4o", messages=PROMPT)
            for chunk in o(sse_reply("openai_chat_stream.json")).chat.completions.create(
                    model="gpt-4o-mini", messages=PROMPT, stream=True):
                if chunk.choices[0].delta.content == " world":
                    break
            client = instrument(ant(FakeAPI(json_reply("anthropic_message_cached.json")),
                                    producer), producer=producer, tenant="acme", clock=now)
            with meter_run("run-ledger"):
                client.messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                       messages=PROMPT)
        assert wait_events(settings, 7) == 7
        rows = query(settings, "SELECT attributes['status'], attributes['attempt'], model, "
                               "input_tokens, output_tokens, toString(total_cost), trace_id "
                               "FROM tokenmeter.usage_events FINAL ORDER BY total_cost, "
                               "attributes['status'], model, attributes['attempt']")
        assert [(s, a, m, int(i), int(out), Decimal(c), t) for s, a, m, i, out, c, t in rows] == [
            ("rejected", "1", "gpt-4o", 0, 0, Decimal(0), ""),  # the 429
            ("rejected", "1", "gpt-4o", 0, 0, Decimal(0), ""),  # the 500
            ("cancelled", "1", "gpt-4o-mini-2024-07-18", 3, 2, Decimal("0.00000165"), ""),
            ("timeout", "2", "gpt-4o", 3, 0, Decimal("0.0000075"), ""),
            ("ok", "1", "claude-sonnet-4-5-20250929", 1550, 100, Decimal("0.0045"),
             "run-ledger"),
            ("ok", "1", "gpt-4o-2024-08-06", 1200, 300, Decimal("0.006"), ""),
            ("ok", "2", "gpt-4o-2024-08-06", 1200, 300, Decimal("0.006"), ""),
        ]
        [[total]] = query(settings, "SELECT toString(sum(total_cost)) "
                                    "FROM tokenmeter.usage_events FINAL")
        assert Decimal(total) == Decimal("0.01650915")
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_anthropic_message_delta_restating_the_input_keeps_the_cache_split() -> None:
    from pipeline.sdk.instrument import merge_anthropic

    start = {"input_tokens": 50, "output_tokens": 1, "cache_read_input_tokens": 1000,
             "cache_creation_input_tokens": 500,
             "cache_creation": {"ephemeral_5m_input_tokens": 200,
                                "ephemeral_1h_input_tokens": 300}}
    # newer APIs restate input counts in message_delta; fields left out (or null) keep
    # message_start's, so the cache reads and the 1-hour writes are not lost
    for delta in ({"output_tokens": 100},
                  {"input_tokens": 50, "output_tokens": 100, "cache_read_input_tokens": None},
                  {"input_tokens": 50, "cache_read_input_tokens": 1000,
                   "cache_creation_input_tokens": 500, "output_tokens": 100}):
        u = merge_anthropic(start, delta)
        assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens,
                u.cache_creation_1h_input_tokens, u.output_tokens) == (1550, 1000, 500, 300, 100)
