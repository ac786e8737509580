"""Rows to one Arrow IPC stream, column by column: ClickHouse's ``ArrowStream`` input format.

clickhouse-connect serializes an insert value by value in Python (about 20 us a usage_events
row, GIL held, on the sink's thread). Here each column goes to pyarrow whole, which converts
it in C++ (strings, integers, datetimes, Decimals), and ClickHouse parses the stream in C++:
the same format over HTTP to a server, to the embedded HTTP store and into chDB.

Values are stored exactly as the row path (``Store.insert`` with rows) stores them: a Decimal
with more decimals than the column's scale is cut the way clickhouse-connect cuts it, and a
value a column cannot hold is refused (``ValueNotStorable``, terminal) with what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import MAX_PREC, Decimal, localcontext
from typing import Any

import pyarrow as pa

from pipeline.errors import StoreWriteFailed
from pipeline.store.client import EncodedRows

ARROW_STREAM = "ArrowStream"
_STRING = pa.string()
_LOW_CARDINALITY = pa.dictionary(pa.int32(), pa.string())
_UINT64 = pa.uint64()
_MILLIS = pa.timestamp("ms", tz="UTC")  # DateTime64(3, 'UTC'): sub-ms digits are cut, as before
_MONEY = pa.decimal128(38, 12)
_BOOL = pa.bool_()
_ZERO_TYPES = frozenset({Decimal, int})
_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}  # of a second, by Arrow timestamp unit

# usage_events as sql/*.sql declares it, by column name (tests compare it to DESCRIBE TABLE)
USAGE_TYPES: Mapping[str, Any] = {
    "event_id": _STRING, "timestamp": _MILLIS, "tenant_id": _STRING,
    "project_id": _LOW_CARDINALITY, "user_id": _STRING, "feature": _LOW_CARDINALITY,
    "trace_id": _STRING, "attributes": pa.map_(_STRING, _STRING),
    "provider": _LOW_CARDINALITY, "model": _LOW_CARDINALITY, "priced_model": _LOW_CARDINALITY,
    "input_tokens": _UINT64, "cache_read_input_tokens": _UINT64,
    "cache_creation_input_tokens": _UINT64, "cache_creation_1h_input_tokens": _UINT64,
    "output_tokens": _UINT64, "reasoning_output_tokens": _UINT64,
    "task_type": _LOW_CARDINALITY, "criticality": _LOW_CARDINALITY,
    "user_tier": _LOW_CARDINALITY, "service_tier": _LOW_CARDINALITY, "cache_hit": _BOOL,
    "token_source": _LOW_CARDINALITY, "input_cost": _MONEY, "cache_read_cost": _MONEY,
    "cache_write_cost": _MONEY, "output_cost": _MONEY, "reasoning_cost": _MONEY,
    "total_cost": _MONEY, "saved_cost": _MONEY, "currency": _LOW_CARDINALITY,
    "price_version": _LOW_CARDINALITY, "value_weight": pa.decimal128(18, 6),
    "value_units": pa.decimal128(38, 6), "value_tier": _LOW_CARDINALITY, "late": _BOOL,
    "source_partition": pa.int32(), "source_offset": pa.int64(), "ingested_at": _MILLIS,
    "reservation_id": _STRING,
}


class ValueNotStorable(StoreWriteFailed):
    """A row value its column cannot hold (wrong type, out of range): no retry can store it."""


def clickhouse_type(t: Any) -> str:
    """The ClickHouse column type an Arrow type stands for here."""
    if pa.types.is_dictionary(t):
        return f"LowCardinality({clickhouse_type(t.value_type)})"
    if pa.types.is_map(t):
        return f"Map({clickhouse_type(t.key_type)}, {clickhouse_type(t.item_type)})"
    if pa.types.is_decimal(t):
        return f"Decimal({t.precision}, {t.scale})"
    if pa.types.is_timestamp(t):
        return f"DateTime64({_DIGITS[t.unit]}, '{t.tz}')"
    return {"string": "String", "bool": "Bool", "uint64": "UInt64", "int64": "Int64",
            "int32": "Int32"}[str(t)]


def encode(rows: Sequence[Sequence[Any]], columns: Sequence[str], types: Mapping[str, Any],
           key: str | None = None, compression: str | None = None) -> EncodedRows:
    """``rows`` (values in ``columns`` order) as one ArrowStream record batch.

    ``compression`` ("lz4" or "zstd") compresses the stream's buffers, as clickhouse-connect
    compresses an Arrow insert for a client that compresses its requests. Raises
    ValueNotStorable naming the column, the row (by its ``key`` column) and the value.
    """
    names = list(columns)
    at = names.index(key) if key else None
    arrays = [_column(name, values, types[name], rows, at)
              for name, values in zip(names, zip(*rows, strict=True), strict=True)]
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    out = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression) if compression else None
    with pa.ipc.new_stream(out, batch.schema, options=options) as writer:
        writer.write_batch(batch)
    return EncodedRows(out.getvalue().to_pybytes(), ARROW_STREAM, len(rows))


class _Refused(Exception):
    """Value ``index`` of a column cannot be stored, for ``why``."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(index, why)
        self.index, self.why = index, why


def _column(name: str, values: Sequence[Any], t: Any, rows: Sequence[Sequence[Any]],
            key: int | None) -> Any:
    try:
        return _checked(values, t)
    except _Refused as refused:
        i = refused.index
        row = f"row {i}" + (f" ({rows[i][key]!r:.80})" if key is not None else "")
        raise ValueNotStorable(
            f"{name} = {values[i]!r:.80} in {row} cannot be stored as {clickhouse_type(t)}: "
            f"{refused.why}; correct it where it comes from (the event, its price or the "
            "code that builds the row)") from None


_NO_NULL = "None where the column has no NULL (rows carry '' or 0 for a missing value)"


def _checked(values: Sequence[Any], t: Any) -> Any:
    try:
        array = _convert(values, t)
    except (pa.ArrowException, ArithmeticError, TypeError, ValueError) as exc:
        raise _Refused(_culprit(values, t), str(exc).splitlines()[0][:200]) from exc
    if array.null_count or (pa.types.is_map(t) and array.items.null_count):
        raise _Refused(_first_none(values), _NO_NULL)
    return array


def _convert(values: Sequence[Any], t: Any) -> Any:
    if pa.types.is_decimal(t):
        return _decimals(values, t)
    if pa.types.is_integer(t):
        # inferred first: a typed conversion would cut a float 1.5 to 1 without a word
        try:
            array = pa.array(values)
        except OverflowError:  # above Int64: only the typed conversion takes (or refuses) it
            return pa.array(values, type=t)
        if not pa.types.is_integer(array.type):
            raise _Refused(_culprit(values, t), f"{array.type} is not an integer")
        return array.cast(t)  # a checked cast: a negative token count is refused
    if pa.types.is_timestamp(t) and values[-1] == values[0] \
            and values.count(values[0]) == len(values):
        # one instant for the whole batch (ingested_at): converted once, not once a row
        return pa.repeat(pa.array(values[:1], type=t)[0], len(values))
    return pa.array(values, type=t)


def _decimals(values: Sequence[Any], t: Any) -> Any:
    if not any(values) and set(map(type, values)) <= _ZERO_TYPES:
        # all zero (cache and reasoning costs often are): nothing to convert; the types are
        # checked because None, '' and False are falsy too and the row path refuses them
        zeros = pa.py_buffer(bytes(16 * len(values)))
        return pa.Array.from_buffers(t, len(values), [None, zeros])
    texts = _safe_texts(values, t)
    if texts is not None:
        try:
            # in C++: pyarrow parses the text (as it does a Decimal's anyway, only slower) and
            # the safe cast refuses what does not fit (precision, scale) without loss
            return pa.array(texts, type=_STRING).cast(t)
        except (pa.ArrowException, ArithmeticError, TypeError, ValueError):
            pass  # more decimals than the scale (the row path cuts them), or not storable
    # not Decimals only, or a value pyarrow would convert wrongly: as the row path does them
    return _decimals_like_rows(values, t)


def _safe_texts(values: Sequence[Any], t: Any) -> list[str] | None:
    """The values' texts when all are plain Decimals pyarrow converts without a known bug.

    pyarrow rescales a value with more than 38 decimals beyond the scale wrongly (7 and 51
    zero decimals stored as 0) and crashes the process on 1E-5000000 (apache/arrow#50964),
    and wraps a value of more than 38 digits around 2^128 (apache/arrow#49817); its cast
    from text wraps one with more integer digits than the type allows. A Decimal's
    exponent is its adjusted exponent less its digits plus one, and its text is at least as
    long as its digits: C-speed passes bound both without ``as_tuple``. Subclasses are left
    out: the row path reads their ``str``, which may not be their value.
    """
    if set(map(type, values)) != {Decimal}:
        return None
    texts = list(map(str, values))
    longest = max(map(len, texts))
    if longest > 38:
        return None
    adjusted = list(map(Decimal.adjusted, values))
    # the cast wraps a value with more integer digits than the type around instead of
    # refusing it: those go the Python way, which refuses them
    if max(adjusted) >= t.precision - t.scale or min(adjusted) - longest + 1 < -(t.scale + 38):
        return None
    return texts


def _decimals_like_rows(values: Sequence[Any], t: Any) -> Any:
    """Scaled integers computed as clickhouse-connect's row path computes them.

    It multiplies by 10^scale exactly (clickhouse-connect >= 1.13 computes at
    ``decimal.MAX_PREC``; earlier versions rounded to the column's precision first) and
    truncates toward zero, so extra decimals are cut (0.1234567890129 -> 0.123456789012 at
    scale 12, 0.999... with 41 nines -> 0.999999999999), never rounded; a value beyond the
    precision is refused here, where the row path stores a number outside the type (it
    writes Decimal(18, 6) as 64 bits, so up to 9223372036854.775807) or fails when it does not
    fit the column's bits.
    """
    mult, limit = 10 ** t.scale, 10 ** t.precision
    scaled = []
    with localcontext() as ctx:
        ctx.prec, ctx.clamp = MAX_PREC, 0  # the row path's context (clamp=1 would pad)
        for i, x in enumerate(values):
            if x is None:
                raise _Refused(i, _NO_NULL)
            try:
                d = Decimal(str(x))
                # refused by its exponent before the exact product: 1E+999987 would take
                # ~30 s to become a 3.3M-bit integer (beyond Emax it overflows: not a number)
                if d.is_finite() and d and d.adjusted() >= t.precision - t.scale:
                    raise _Refused(i, f"it has more than {t.precision - t.scale} integer "
                                      "digits")
                v = int(d * mult)
            except (ArithmeticError, ValueError, TypeError) as exc:
                raise _Refused(i, f"not a number ({type(exc).__name__})") from None
            if not -limit < v < limit:
                raise _Refused(i, f"it has more than {t.precision - t.scale} integer digits")
            scaled.append(v)
    data = b"".join(v.to_bytes(16, "little", signed=True) for v in scaled)
    return pa.Array.from_buffers(t, len(scaled), [None, pa.py_buffer(data)])


def _culprit(values: Sequence[Any], t: Any) -> int:
    """Index of the first value that does not convert alone (0 if each one does)."""
    for i, v in enumerate(values):
        if pa.types.is_integer(t) and (not isinstance(v, int) or isinstance(v, bool)):
            return i
        try:
            _convert([v], t)  # decimals as _decimals converts them (never the crashing path)
        except (_Refused, pa.ArrowException, ArithmeticError, TypeError, ValueError):
            return i
    return 0


def _first_none(values: Sequence[Any]) -> int:
    for i, v in enumerate(values):
        if v is None or (isinstance(v, dict) and None in v.values()):
            return i
    return 0
