"""Process runners: the worker, `up` (one or many workers), the demo, the forecast job and
store operations."""
