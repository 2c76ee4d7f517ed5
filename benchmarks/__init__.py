"""Benchmarks of the sync jobs against bare scans of the same queries and against dlt: `python -m benchmarks.run`."""
