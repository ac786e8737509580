"""A usage row value the ledger cannot hold stops the sink at once (terminal), naming the
column, the event and the value; the columnar types are the table's own."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D
from typing import Any

import pytest

from pipeline.errors import StoreWriteFailed
from pipeline.store.client import Store
from pipeline.store.columnar import USAGE_TYPES, ValueNotStorable, clickhouse_type, encode
from pipeline.store.sink import USAGE_COLUMNS, Fault, Sink, classify_store_error, usage_row
from tests.helpers import METER, NOW


def rows(column: str, value: Any) -> list[list[Any]]:
    """Two good rows, the second with ``value`` in ``column``."""
    out = []
    for i in range(2):
        p = METER.meter_object({"event_id": f"e-{i}", "timestamp": NOW.isoformat(),
                                "tenant_id": "acme", "provider": "openai",
                                "model": "gpt-4o-mini", "input_tokens": 10 + i,
                                "output_tokens": 1}, now=NOW)
        out.append(usage_row(p, late=False, partition=0, offset=i, ingested_at=NOW))
    out[1][USAGE_COLUMNS.index(column)] = value
    return out


REFUSED = [
    # beyond the type: the row path stored 1E+26 as a number outside Decimal(38, 12) (it
    # reads back 100000000000000000000000000.00000000000) and failed on 1E+30 (OverflowError)
    ("total_cost", D("1E+26"), "more than 26 integer digits"),
    ("input_cost", D("-1E+30"), "more than 26 integer digits"),
    ("value_weight", D("1000000000000"), "more than 12 integer digits"),
    ("value_units", D("1E+32"), "more than 32 integer digits"),
    # pyarrow's cast from text wraps these around instead of refusing them
    ("value_units", D("9.9999E+36"), "more than 32 integer digits"),
    ("total_cost", D("9.4E+33"), "more than 26 integer digits"),
    # refused by its exponent, before the exact multiplication (which would overflow the
    # context, or build a huge integer for exponents within it)
    ("total_cost", D("1E+999999999"), "more than 26 integer digits"),
    ("output_cost", D("NaN"), "not a number"),
    ("output_cost", D("-Infinity"), "not a number"),
    ("output_cost", None, "None where the column has no NULL"),
    ("saved_cost", "", "not a number"),
    ("saved_cost", False, "not a number"),
    ("input_tokens", -1, "not in range"),
    ("input_tokens", 1.5, "double is not an integer"),
    ("output_tokens", "12", "tried to convert to int64"),
    ("output_tokens", 2**64, "too large"),
    ("source_partition", 2**31, "not in range"),
    ("tenant_id", None, "None where the column has no NULL"),
    ("trace_id", 5, "Expected bytes"),
    ("model", "\ud800", "surrogates not allowed"),
    ("attributes", {"k": 1}, "Expected bytes"),
    ("attributes", {"k": None}, "None where the column has no NULL"),
    ("attributes", None, "None where the column has no NULL"),
    ("timestamp", None, "None where the column has no NULL"),
    ("timestamp", "2026-06-17", "cannot be converted"),
    ("cache_hit", 1, "tried to convert to boolean"),
]


@pytest.mark.parametrize(("column", "value", "why"), REFUSED)
def test_a_value_that_cannot_be_stored_is_named(column: str, value: Any, why: str) -> None:
    with pytest.raises(ValueNotStorable) as refused:
        encode(rows(column, value), USAGE_COLUMNS, USAGE_TYPES, key="event_id")
    message = str(refused.value)
    assert message.startswith(f"{column} = {value!r:.80} in row 1 ('e-1') cannot be stored "
                              f"as {clickhouse_type(USAGE_TYPES[column])}: ")
    assert why in message and "correct it where it comes from" in message
    assert classify_store_error(refused.value) is Fault.terminal


class Counting:
    """The real store, counting insert attempts."""

    def __init__(self, real: Store) -> None:
        self.real = real
        self.attempts = 0

    def insert(self, *args: Any, **kwargs: Any) -> None:
        self.attempts += 1
        self.real.insert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.integration
def test_the_sink_stops_at_once_on_a_value_it_cannot_store(store: Store) -> None:
    counting = Counting(store)
    sink = Sink(counting, max_backoff_s=0.05)  # type: ignore[arg-type]

    async def run() -> None:
        await asyncio.wait_for(sink.write(rows("total_cost", D("1E+26")), [], token="t"), 10)

    with pytest.raises(StoreWriteFailed) as failed:
        asyncio.run(run())
    assert counting.attempts == 0  # refused before ClickHouse, and not retried
    assert sink.failures == 1 and not sink.healthy
    assert sink.failure == str(failed.value)
    assert sink.failure.startswith("a value cannot be stored in usage_events (total_cost = "
                                   "Decimal('1E+26') in row 1 ('e-1') cannot be stored as "
                                   "Decimal(38, 12): it has more than 26 integer digits")
    assert sink.failure.endswith("then restart the worker (it replays from the committed "
                                 "offsets)")
    assert store.rows(f"SELECT count() FROM {store.database}.usage_events") == [(0,)]


@pytest.mark.integration
def test_columnar_types_are_the_tables_own(store: Store) -> None:
    assert list(USAGE_TYPES) == list(USAGE_COLUMNS)
    described = {r[0]: r[1] for r in store.rows(f"DESCRIBE TABLE {store.database}.usage_events")}
    assert {c: clickhouse_type(t) for c, t in USAGE_TYPES.items()} == described


def test_a_batch_is_encoded_as_one_arrow_stream() -> None:
    import pyarrow as pa

    batch = encode(rows("total_cost", D("0.5")), USAGE_COLUMNS, USAGE_TYPES, compression="lz4")
    assert len(batch) == 2 and batch.fmt == "ArrowStream"
    table = pa.ipc.open_stream(batch.data).read_all()
    assert table.column_names == list(USAGE_COLUMNS) and table.num_rows == 2
    assert table.column("total_cost").to_pylist()[1] == D("0.5")


def test_decimals_are_cut_the_same_whatever_the_threads_decimal_context() -> None:
    # the sink encodes on a worker thread, whose context starts as decimal.DefaultContext:
    # a clamp, a low precision or a rounding mode there must not change what is stored
    import decimal
    import threading

    import pyarrow as pa

    values = {"total_cost": D("0.1234567890129"), "input_cost": D("0." + "9" * 41),
              "value_weight": D("-0.0000999990109")}
    got: dict[str, Any] = {}

    def run() -> None:
        decimal.setcontext(decimal.Context(prec=5, rounding=decimal.ROUND_UP, clamp=1))
        for column, value in values.items():
            batch = encode(rows(column, value), USAGE_COLUMNS, USAGE_TYPES)
            got[column] = pa.ipc.open_stream(batch.data).read_all().column(column)[1].as_py()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert got == {"total_cost": D("0.123456789012"), "input_cost": D("0.999999999999"),
                   "value_weight": D("-0.000099")}


class Shown(D):
    """A Decimal whose text says something else: pyarrow and the row path both read the text."""

    def __str__(self) -> str:
        return "7." + "0" * 51


@pytest.mark.parametrize(("column", "value", "stored"), [
    # pyarrow's own rescale stores these wrongly or crashes the process with more than 38
    # decimals beyond the scale (apache/arrow#50964)
    ("total_cost", D("7." + "0" * 51), D("7.000000000000")),
    ("total_cost", D("1E-51"), D("0E-12")),  # 39 beyond: the first one pyarrow gets wrong
    ("total_cost", D("3E-50"), D("0E-12")),  # 38 beyond: pyarrow's own, right
    ("output_cost", D("9.95038483402425393E-63"), D("0E-12")),
    ("input_cost", D("4.77413316980670E-66"), D("0E-12")),
    ("total_cost", D("1E-5000000"), D("0E-12")),
    ("value_units", D("-5.838923877282E-62"), D("0E-6")),
    ("value_weight", D("-0.000099999010992999479999995298999699839293943"), D("-0.000099")),
    # more than 38 digits: pyarrow wraps them around 2^128 (apache/arrow#49817)
    ("total_cost", D("0.0680564738841876926926749214863536422912"), D("0.068056473884")),
    ("total_cost", D("84302600000000000000000000.00000000000000"),
     D("84302600000000000000000000.000000000000")),
    ("value_units", D("85159552000000000000000000000000.000000000"),
     D("85159552000000000000000000000000.000000")),
    ("total_cost", Shown("1"), D("7.000000000000")),
])
def test_many_digits_or_decimals_are_cut_not_garbled(column: str, value: D,
                                                     stored: D) -> None:
    import pyarrow as pa

    # one row: the value alone decides how its column is converted
    row = rows(column, value)[1]
    batch = encode([row], USAGE_COLUMNS, USAGE_TYPES)
    got = pa.ipc.open_stream(batch.data).read_all().column(column)[0].as_py()
    assert got == stored and str(got) == str(stored)


def test_a_decimal_whose_text_would_crash_pyarrow_never_reaches_it() -> None:
    # 1E-5000000 crashes pyarrow's conversion (a segfault, apache/arrow#50964), so this runs
    # in a child process: a Decimal subclass whose text says so must go the Python way too
    import subprocess
    import sys

    code = ("from decimal import Decimal\n"
            "from pipeline.store.columnar import USAGE_TYPES, encode\n"
            "class Shown(Decimal):\n"
            "    def __str__(self):\n"
            "        return '1E-5000000'\n"
            "batch = encode([[Shown('1E+20')]], ['total_cost'], USAGE_TYPES)\n"
            "import pyarrow as pa\n"
            "print(pa.ipc.open_stream(batch.data).read_all().column(0)[0].as_py())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "0E-12"  # what the row path stores: it reads the text too
