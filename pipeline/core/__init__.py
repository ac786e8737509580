"""The functional core: pure functions over typed values.

Nothing here imports faust, aiokafka, clickhouse_connect, aiohttp or another pipeline
subpackage, and nothing reads a clock: callers pass ``now`` in (a test enforces it).
"""
