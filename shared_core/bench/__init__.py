"""Benchmarks: scripts that print their figures (speed and memory never live in unit tests)."""
