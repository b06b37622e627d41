"""Latency measurement that holds on a shared, noisy machine. Torch-free.

- Warm-up first (a count and a minimum time), then timed calls until a fixed count is reached
  or, with `min_time_s`, until both the count and the time are reached.
- Calls are grouped in blocks. When several runners are compared they alternate by block
  (ABAB... with the order flipped every round), never call by call: runtimes keep their thread
  pools spinning after a call, which slows whatever runs right after it.
- Figures are medians and percentiles. The noise a run states (`noise_pct`, relative to p50)
  is the larger of two robust spreads: between windows of the run, two standard deviations of
  the block medians (sigma = 1.4826 * MAD, so one slow block on a shared machine does not
  inflate it), and between calls, half the interquartile range of all calls (on a loaded
  machine the load changes between runs too, and that spread is what another run can land
  in). Two runs whose p50s differ by less than their stated noise agree. A run whose
  coefficient of variation exceeds `NOISY_CV` is flagged noisy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from edgeforge.runtimes.base import Runner

NOISY_CV = 0.10


@dataclass
class Settings:
    """How to measure. `iterations` timed calls at least; with `min_time_s`, also at least that long."""

    warmup: int = 10
    warmup_time_s: float = 0.5
    iterations: int = 100
    min_time_s: float = 0.0
    block_size: int = 10
    max_iterations: int = 100_000

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Samples:
    """Timed calls of one runner, in ms, with the block each belongs to."""

    times_ms: list[float] = field(default_factory=list)
    blocks: list[list[float]] = field(default_factory=list)
    interleaved_with: list[str] = field(default_factory=list)
    measured_on: str = "host"


def _timed_block(runner: Runner, feed: Mapping[str, np.ndarray], n: int) -> list[float]:
    out = []
    infer = runner._infer  # checked once before timing; the loop times the runtime only
    for _ in range(n):
        t0 = time.perf_counter_ns()
        infer(feed)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def warm_up(runner: Runner, feed: Mapping[str, np.ndarray], settings: Settings) -> int:
    """Run at least `warmup` calls and at least `warmup_time_s`; return how many ran."""
    n, t0 = 0, time.perf_counter()
    while n < settings.warmup or time.perf_counter() - t0 < settings.warmup_time_s:
        runner._infer(feed)
        n += 1
        if n >= settings.max_iterations:
            break
    return n


def measure(runners: Mapping[str, Runner], feeds: Mapping[str, Mapping[str, np.ndarray]],
            settings: Settings) -> dict[str, Samples]:
    """Time each active runner on its feed; with more than one, alternate blocks of calls.

    Every runner gets the same number of blocks. Inputs are checked once, before timing.
    """
    names = list(runners)
    for name in names:
        runners[name].check_feed(feeds[name])
    for name in names:
        warm_up(runners[name], feeds[name], settings)
    samples = {n: Samples(interleaved_with=[o for o in names if o != n]) for n in names}
    t0 = time.perf_counter()
    rounds = 0
    while True:
        order = names if rounds % 2 == 0 else names[::-1]
        for name in order:
            block = _timed_block(runners[name], feeds[name], settings.block_size)
            samples[name].blocks.append(block)
            samples[name].times_ms.extend(block)
        rounds += 1
        done = rounds * settings.block_size
        if done >= settings.max_iterations:
            break
        if done >= settings.iterations and time.perf_counter() - t0 >= settings.min_time_s:
            break
    return samples


def samples_from_device(result: Mapping, settings: Settings) -> Samples:
    """Samples measured by a device agent (`Runner.device_latency`), grouped into blocks here."""
    times = [float(t) for t in result["samples_ms"]]
    bs = max(settings.block_size, 1)
    blocks = [times[i:i + bs] for i in range(0, len(times), bs) if len(times[i:i + bs]) == bs] or [times]
    return Samples(times_ms=times, blocks=blocks, measured_on="device")


def summarize(samples: Samples, batch: int = 1) -> dict:
    """Percentiles, spread and noise of `samples` (the fields of the report's `latency`)."""
    t = np.asarray(samples.times_ms, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timed calls")
    p50, p90, p95, p99 = (float(v) for v in np.percentile(t, [50, 90, 95, 99]))
    mean, std = float(t.mean()), float(t.std(ddof=1)) if t.size > 1 else 0.0
    block_medians = [float(np.median(b)) for b in samples.blocks if b]
    noise_pct = _noise_pct(t, block_medians, p50)
    cv = std / mean if mean > 0 else 0.0
    return {
        "measured_on": samples.measured_on,
        "batch": batch,
        "iterations": int(t.size),
        "block_size": len(samples.blocks[0]) if samples.blocks else int(t.size),
        "blocks": len(samples.blocks),
        "interleaved_with": list(samples.interleaved_with),
        "p50": p50, "p90": p90, "p95": p95, "p99": p99,
        "mean": mean, "std": std, "min": float(t.min()), "max": float(t.max()),
        "cv": cv,
        "throughput_per_s": batch * 1000.0 / p50 if p50 > 0 else 0.0,
        "noise_pct": noise_pct,
        "noisy": cv > NOISY_CV,
        "samples_ms": [round(float(x), 4) for x in t],
        "block_medians_ms": [round(x, 4) for x in block_medians],
    }


def _noise_pct(t: np.ndarray, block_medians: Sequence[float], p50: float) -> float:
    """The stated run-to-run noise of p50, in % (see the module docstring)."""
    if p50 <= 0:
        return 0.0
    bm = np.asarray(block_medians, dtype=np.float64)
    between_blocks = 2 * 1.4826 * float(np.median(np.abs(bm - np.median(bm)))) if bm.size > 2 else 0.0
    q25, q75 = np.percentile(t, [25, 75])
    between_calls = float(q75 - q25) / 2
    return 100.0 * max(between_blocks, between_calls) / p50


def noise_warning(latency: Mapping) -> str | None:
    if latency["noisy"]:
        return (f"noisy run: coefficient of variation {latency['cv']:.0%} > {NOISY_CV:.0%}; "
                f"p50 is stated with +/- {latency['noise_pct']:.1f}% noise. Run on an idle machine, "
                f"pin threads, or raise --iterations / --min-time.")
    return None
