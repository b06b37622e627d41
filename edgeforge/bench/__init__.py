"""Benchmarks: latency (`latency`, `memory`, `inputs`: torch-free), accuracy (`accuracy`), the
`edgeforge bench` driver (`run.bench_artifact`) and `edgeforge compile` (`compile`)."""
