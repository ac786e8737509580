"""The embedded runtime: the Tansu broker subprocess, and the chDB store served over
ClickHouse's HTTP interface (for `up --workers N`)."""
