"""Quiet the machine before a timed block, shared by the benchmarks that alternate contenders.

ONNX Runtime's pool threads (and torch's OpenMP threads) keep spinning for tens of milliseconds
after a call; on a 2-core machine a neighbour session's spinning thread takes the core that the
measured session's own second thread needs. After an idle pause, the first ~2 ms of calls also
ran 1.3-1.7x slower (the idle core ramping back up). Measured with the GatedAttention kernel at
N = 49 (2 threads): 49-51 us per call right after a block of another session, 36 us after a
100 ms pause, 27-30 us once warmed up again, 28 us on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Longer than ONNX Runtime's worker spin: a block right after another session's ran slow until
# the pause reached 100 ms.
SETTLE_S = 0.15
REWARM_S = 0.01


def settle(fn: Callable[[], object], settle_s: float = SETTLE_S, rewarm_s: float = REWARM_S, min_calls: int = 2) -> None:
    """Idle for `settle_s`, then call `fn` (untimed) for `rewarm_s` and at least `min_calls` times."""
    time.sleep(settle_s)
    t_end, n = time.perf_counter() + rewarm_s, 0
    while n < min_calls or time.perf_counter() < t_end:
        fn()
        n += 1
