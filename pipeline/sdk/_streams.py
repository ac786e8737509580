"""The stream proxies of ``instrument``: record a stream's usage when it ends.

``MeteredStream`` and ``AsyncMeteredStream`` pass chunks through a ``_StreamState`` and
record the attempt once the stream finishes, breaks, fails, is closed or dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterator
from typing import Any

from pipeline.sdk._call_usage import _StreamState
from pipeline.sdk._http_hook import _Call
from pipeline.sdk._meterer import _Meterer

log = logging.getLogger("tokenmeter.instrument")

_PENDING: set[asyncio.Task[None]] = set()


def _observe(inner: Any, state: _StreamState) -> Iterator[Any]:
    for item in inner:
        if not state.observe(item):
            yield item


class MeteredStream:
    """A provider stream that records its usage when it ends (iterate it in one loop).

    Breaking out of the loop, ``close()`` or leaving ``with`` ends it: the connection is
    closed (the provider stops generating) and what was received is recorded.
    """

    def __init__(self, inner: Any, call: _Call, meterer: _Meterer) -> None:
        self._inner = inner
        self._call = call
        self._meterer = meterer
        self._state = _StreamState(call.api, call.hide_usage_chunk)
        # a free function, not a method: a generator holding self would make a reference
        # cycle, and __del__ (recording a dropped stream) would wait for the cyclic GC
        self._gen = _observe(inner, self._state)
        self.tokenmeter = call.meter

    def _finish(self, exc: BaseException | None) -> None:
        if self._call.meter.done:
            return
        self._call.meter.done = True
        self._meterer.emit(self._call, [self._meterer.stream_end(self._call, self._state, exc)])

    def __next__(self) -> Any:
        try:
            return next(self._gen)
        except StopIteration:
            self._finish(None)
            raise
        except BaseException as exc:
            self._finish(exc)
            raise

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                try:
                    item = next(self._gen)
                except StopIteration:
                    self._finish(None)
                    return
                yield item
        except BaseException as exc:  # GeneratorExit when the caller broke out of the loop
            self._close_inner()
            self._finish(exc)
            raise

    def _close_inner(self) -> None:
        close = getattr(self._inner, "close", None)
        if callable(close):
            close()

    def close(self) -> None:
        """End the stream now and record what it billed."""
        self._close_inner()
        self._finish(GeneratorExit() if not self._call.meter.done else None)

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a stream dropped without being read to the end or closed was still billed
        if "_call" not in self.__dict__ or self._call.meter.done:
            return
        try:
            self._close_inner()
            self._finish(GeneratorExit())
        except Exception:  # noqa: BLE001, S110 - nothing to tell in a finalizer
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AsyncMeteredStream:
    """The asyncio twin of MeteredStream (use ``async with`` or read it to the end)."""

    def __init__(self, inner: Any, call: _Call, meterer: _Meterer) -> None:
        self._inner = inner
        self._call = call
        self._meterer = meterer
        self._state = _StreamState(call.api, call.hide_usage_chunk)
        self.tokenmeter = call.meter

    async def _finish(self, exc: BaseException | None) -> None:
        if self._call.meter.done:
            return
        self._call.meter.done = True
        await self._meterer.aemit(self._call,
                                  [self._meterer.stream_end(self._call, self._state, exc)])

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                item = await self._inner.__anext__()
            except StopAsyncIteration:
                await self._finish(None)
                raise
            except BaseException as exc:
                await self._finish(exc)
                raise
            if not self._state.observe(item):
                return item

    async def close(self) -> None:
        """End the stream now and record what it billed."""
        close = getattr(self._inner, "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result
        await self._finish(GeneratorExit())

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    def __del__(self) -> None:
        # dropped unfinished (``break`` out of ``async for``): record on the running loop
        if "_call" not in self.__dict__ or self._call.meter.done:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.error("tokenmeter: stream of request %s dropped outside its event loop; "
                      "not recorded (use `async with`)", self._call.meter.request_id)
            return
        task = loop.create_task(self.close())
        _PENDING.add(task)  # a task only weakly referenced by the loop could be collected
        task.add_done_callback(_PENDING.discard)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
