"""Benchmarks that print a table and write JSON (and a PNG)."""
