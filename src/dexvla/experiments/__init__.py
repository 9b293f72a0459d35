"""Benchmark suites and ablations: `dexvla benchmark NAME` (docs/benchmarks.md)."""
