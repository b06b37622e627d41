"""Do two runs of the same bench agree within the noise each report states?

    python benchmarks/bench_repeatability.py ARTIFACT [--target cpu-ort] [--precision fp32] [--runs 2]

Runs `bench_artifact` RUNS times (reports are not written into the artifact), then compares every
pair of runs: they agree when |p50_a - p50_b| / mean(p50) <= max(noise_a, noise_b) (the noise a
report states, see edgeforge.bench.latency). Writes benchmarks/results/repeatability-<target>-
<precision>.json and exits 1 if a pair disagrees.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from edgeforge.artifacts import write_json_atomic
from edgeforge.bench.latency import Settings
from edgeforge.bench.run import bench_artifact


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--target", default="cpu-ort")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--min-time", type=float, default=5.0)
    ap.add_argument("--block-size", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    settings = Settings(iterations=args.iterations, min_time_s=args.min_time, block_size=args.block_size)
    runs = []
    for i in range(args.runs):
        r = bench_artifact(args.artifact, args.target, args.precision, settings=settings, threads=args.threads,
                           baseline=False, write=False).report
        if r.status != "measured":
            print(f"not measured: {r.reason}")
            return 2
        L = r.latency
        runs.append({"run": i, "p50_ms": L.p50, "noise_pct": L.noise_pct, "cv": L.cv, "iterations": L.iterations,
                     "blocks": L.blocks, "noisy": L.noisy})
        print(f"run {i}: p50 {L.p50:.3f} ms (stated noise ±{L.noise_pct:.1f}%, CV {L.cv:.1%}, {L.iterations} calls)")
    pairs = []
    for a, b in itertools.combinations(runs, 2):
        diff = 100 * abs(a["p50_ms"] - b["p50_ms"]) / ((a["p50_ms"] + b["p50_ms"]) / 2)
        allowed = max(a["noise_pct"], b["noise_pct"])
        pairs.append({"runs": [a["run"], b["run"]], "diff_pct": diff, "stated_noise_pct": allowed,
                      "agree": diff <= allowed})
        print(f"runs {a['run']} vs {b['run']}: p50 differs {diff:.2f}% vs stated noise ±{allowed:.2f}%: "
              + ("agree" if diff <= allowed else "DISAGREE"))
    out = Path(args.out or Path(__file__).parent / "results" / f"repeatability-{args.target}-{args.precision}.json")
    write_json_atomic(out, {"artifact": args.artifact, "target": args.target, "precision": args.precision,
                            "settings": settings.to_dict(), "runs": runs, "pairs": pairs,
                            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "command": " ".join(["python", *sys.argv])})
    print(f"results: {out}")
    return 0 if all(p["agree"] for p in pairs) else 1


if __name__ == "__main__":
    sys.exit(main())
