"""Benchmarks (not tests): each script writes JSON to bench/results/, report.py tabulates it."""
