"""The group-commit writer: staged batches become durable, then (only then) are acked.

Batches staged while an insert runs wait in a bounded queue and are written together by the
next insert, so consumption does not wait for every insert and inserts grow with load. A
batch's acks run only after its rows are in the ledger, in submission order; a failed write
acks nothing and is raised to the next submit or drain.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.core.budgets import BudgetBreach
from pipeline.store.sink import FAILURE_COLUMNS
from pipeline.stream.ports import LedgerWrites, Publish
from pipeline.stream.staging import Metrics, Staged

OnDurable = Callable[[], Awaitable[None]]
# publish the breaches (or await the deliveries already sent), then mirror them
Emit = Callable[[list[BudgetBreach], list[Any] | None], Awaitable[None]]


def merge_staged(group: list[Staged]) -> Staged:
    """One batch of several staged ones, in order (written by one insert)."""
    if len(group) == 1:
        return group[0]
    sent: list[Any] = []
    moved: list[Any] = []
    out = Staged(sent=sent, moved=moved)
    for st in group:
        out.messages += st.messages
        out.events += st.events
        out.duplicates += st.duplicates
        out.late += st.late
        out.rows += st.rows
        out.dlq_rows += st.dlq_rows
        out.dead += st.dead
        out.breaches += st.breaches
        out.failures += st.failures
        sent += st.sent or []
        out.moves += st.moves
        moved += st.moved if st.moved is not None else []
    tokens = [st.token for st in group if st.token]
    # the same rows give the same token, so a retry of this insert is dropped, not counted
    out.token = hashlib.blake2b("|".join(tokens).encode(), digest_size=16).hexdigest() \
        if tokens else None
    return out


class GroupCommitWriter:
    """Writes staged batches to the ledger one group per insert; acks after durable."""

    def __init__(self, sink: LedgerWrites, publish_dlq: Publish, metrics: Metrics,
                 emit: Emit, *, max_pending_rows: int = 20_000) -> None:
        self.sink = sink
        self.publish_dlq = publish_dlq
        self.metrics = metrics
        self.emit = emit
        self.max_pending_rows = max_pending_rows
        self._pending: list[tuple[Staged, OnDurable]] = []
        self._picked = asyncio.Event()  # set whenever the writer takes the pending batches
        self._writer: asyncio.Future[None] | None = None

    def pending_rows(self) -> int:
        """Rows staged and not yet taken by an insert."""
        return sum(len(st.rows) + len(st.dlq_rows) for st, _ in self._pending)

    async def submit(self, staged: Staged, on_durable: OnDurable) -> None:
        """Queue a staged batch (waiting while max_pending_rows are queued); starts the writer."""
        # bounded memory: wait while the writer is behind by max_pending_rows
        while self._pending and self.pending_rows() >= self.max_pending_rows:
            await self._picked.wait()
            self.raise_if_failed()
        self._pending.append((staged, on_durable))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_pending())

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending, []
                self._picked.set()
                self._picked = asyncio.Event()
                await self.commit(merge_staged([st for st, _ in group]))
                for _, on_durable in group:
                    await on_durable()
        finally:
            self._picked.set()  # a failed writer must not leave a submitter waiting

    def raise_if_failed(self) -> None:
        """Raise the error that stopped the writer, if it stopped on one."""
        writer = self._writer
        if writer is not None and writer.done() and not writer.cancelled() and (
                exc := writer.exception()) is not None:
            raise exc

    async def drain(self) -> None:
        """Wait until every submitted batch is durable and acked."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        self.raise_if_failed()

    async def commit(self, staged: Staged) -> None:
        """Make one (merged) batch durable, then publish its dead letters and breaches.

        ``staged.moved`` holds the delivery futures of its moved events (None: none sent).
        """
        # moved events are acked with this batch: their re-sends must be in Kafka first
        await asyncio.gather(*(f for f in staged.moved or [] if f is not None))
        self.metrics.moved += sum(m.events for m in staged.moves)
        await self.sink.write(staged.rows, staged.dlq_rows, token=staged.token)
        if staged.failures:
            await self.sink.write_rows("budget_failures", staged.failures, FAILURE_COLUMNS)
        for d in staged.dead:
            self.metrics.dead[d.reason_code] += 1
            await self.publish_dlq(d.tenant_id, d.model_dump_json().encode())
        if staged.breaches:
            await self.emit(staged.breaches, staged.sent)
        m = self.metrics
        m.messages += staged.messages
        m.events += staged.events
        m.duplicates += staged.duplicates
        m.late += staged.late
        m.batches += 1
