"""Measuring scripts: each runs one measurement and prints its figures (``python -m fer_bench.measure.NAME``); none is a test."""
