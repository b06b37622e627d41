"""Process memory from /proc (Linux): resident set size now, and its peak since a reset.

No psutil: the kernel's own counters are enough. `reset_peak()` writes 5 to
/proc/self/clear_refs, which resets VmHWM (the RSS high-water mark) to the current RSS, so the
peak after it belongs to what ran in between.
"""

from __future__ import annotations

import re
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _field_mb(name: str) -> float | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    m = re.search(rf"^{name}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) / 1024 if m else None


def rss_mb() -> float | None:
    """Current resident set size in MiB (None where /proc is absent)."""
    return _field_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """Peak resident set size in MiB since the last `reset_peak()` (or process start)."""
    return _field_mb("VmHWM")


def reset_peak() -> bool:
    """Reset the peak RSS counter; False when the kernel does not allow it (peak is then lifetime)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: the peak RSS growth over what ran inside it.

        with PeakMemory() as mem:
            runner.activate(); runner.infer(feed)
        mem.delta_mb
    """

    def __enter__(self) -> "PeakMemory":
        self.resettable = reset_peak()
        self.before_mb = rss_mb()
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mb = peak_rss_mb()
        self.delta_mb = (self.peak_mb - self.before_mb) if (self.peak_mb is not None and self.before_mb is not None) else None

    @property
    def method(self) -> str:
        if self.before_mb is None:
            return "unavailable (no /proc/self/status)"
        if self.resettable:
            return "VmHWM after clear_refs reset minus VmRSS before (load + first inference)"
        return "lifetime VmHWM minus VmRSS before (clear_refs not permitted: an upper bound)"
