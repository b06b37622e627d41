"""Benchmarks: latency (`latency`, `memory`, `inputs`: torch-free), accuracy (`accuracy`) and
the `edgeforge bench` driver (`run.bench_artifact`)."""
