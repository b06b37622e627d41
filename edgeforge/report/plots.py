"""Plots as inline SVG strings (no plotting library, no network: the HTML stays self-contained).

Each function returns one `<svg>` element with a `data-plot` attribute naming the plot, a
`<title>` for accessibility, and `<title>` tooltips on the marks.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

W, H = 560, 300
M_LEFT, M_RIGHT, M_TOP, M_BOTTOM = 60, 20, 30, 45
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


def _tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels with as many decimals as the tick step needs (100 and 100.5 must not both read 100)."""
    if len(ticks) < 2:
        return [_fmt(t) for t in ticks]
    step = min(abs(b - a) for a, b in zip(ticks, ticks[1:])) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if any(abs(round(t, decimals) - t) > step * 1e-6 for t in ticks):
        decimals += 1
    return [f"{t:.{decimals}f}" for t in ticks]


def _anchor(px: float, offset: float = 8) -> tuple[float, str]:
    """Place a label right of a mark, or left of it near the right edge."""
    return (px - offset, "end") if px > W - M_RIGHT - 160 else (px + offset, "start")


class _Frame:
    """Maps data coordinates to the plot area and draws axes."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float):
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1)
        self.y0, self.y1 = y0, (y1 if y1 > y0 else y0 + 1)

    def x(self, v: float) -> float:
        return M_LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - M_LEFT - M_RIGHT)

    def y(self, v: float) -> float:
        return H - M_BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - M_TOP - M_BOTTOM)

    def axes(self, xlabel: str, ylabel: str, xticks: Sequence[float], yticks: Sequence[float]) -> list[str]:
        parts = [f'<line x1="{M_LEFT}" y1="{H - M_BOTTOM}" x2="{W - M_RIGHT}" y2="{H - M_BOTTOM}" stroke="#333"/>',
                 f'<line x1="{M_LEFT}" y1="{M_TOP}" x2="{M_LEFT}" y2="{H - M_BOTTOM}" stroke="#333"/>']
        for t, label in zip(xticks, _tick_labels(xticks)):
            px = self.x(t)
            parts.append(f'<line x1="{px:.1f}" y1="{H - M_BOTTOM}" x2="{px:.1f}" y2="{H - M_BOTTOM + 4}" stroke="#333"/>'
                         f'<text x="{px:.1f}" y="{H - M_BOTTOM + 16}" text-anchor="middle">{label}</text>')
        for t, label in zip(yticks, _tick_labels(yticks)):
            py = self.y(t)
            parts.append(f'<line x1="{M_LEFT - 4}" y1="{py:.1f}" x2="{W - M_RIGHT}" y2="{py:.1f}" stroke="#eee"/>'
                         f'<text x="{M_LEFT - 7}" y="{py + 4:.1f}" text-anchor="end">{label}</text>')
        parts.append(f'<text x="{(M_LEFT + W - M_RIGHT) / 2:.0f}" y="{H - 8}" text-anchor="middle">{escape(xlabel)}</text>')
        parts.append(f'<text transform="translate(14,{(M_TOP + H - M_BOTTOM) / 2:.0f}) rotate(-90)" '
                     f'text-anchor="middle">{escape(ylabel)}</text>')
        return parts


def _svg(kind: str, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-plot="{kind}" viewBox="0 0 {W} {H}" '
            f'width="{W}" height="{H}" role="img" font-family="sans-serif" font-size="11">'
            f'<title>{escape(title)}</title>'
            f'<text x="{W / 2:.0f}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>'
            + "".join(body) + "</svg>")


def latency_histogram(samples_ms: Sequence[float], title: str, markers: dict[str, float] | None = None,
                      bins: int = 40) -> str:
    """Histogram of per-call latency; vertical lines at the `markers` (p50, p99, ...)."""
    if not samples_ms:
        return _svg("latency-histogram", title + " (no samples)", [])
    s = sorted(samples_ms)
    lo = s[0]
    # Clip the far tail at p99.5 so one outlier does not squash the distribution; say so.
    hi = s[min(len(s) - 1, int(math.ceil(0.995 * len(s))) - 1)]
    if hi <= lo:
        hi = lo + max(lo * 0.01, 1e-3)
    width = (hi - lo) / bins
    counts = [0] * bins
    clipped = 0
    for v in s:
        if v > hi:
            clipped += 1
            continue
        counts[min(int((v - lo) / width), bins - 1)] += 1
    f = _Frame(lo, hi, 0, max(counts) * 1.1)
    body = f.axes("latency per call (ms)", "calls", _nice_ticks(lo, hi), _nice_ticks(0, max(counts) * 1.1, 4))
    for i, c in enumerate(counts):
        if c == 0:
            continue
        x0, x1 = f.x(lo + i * width), f.x(lo + (i + 1) * width)
        body.append(f'<rect class="bar" x="{x0:.1f}" y="{f.y(c):.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
                    f'height="{f.y(0) - f.y(c):.1f}" fill="#1f77b4"><title>{_fmt(lo + i * width)}-'
                    f'{_fmt(lo + (i + 1) * width)} ms: {c} calls</title></rect>')
    for j, (name, v) in enumerate((markers or {}).items()):
        if lo <= v <= hi:
            px = f.x(v)
            color = PALETTE[(j + 1) % len(PALETTE)]
            body.append(f'<line class="marker" x1="{px:.1f}" y1="{M_TOP}" x2="{px:.1f}" y2="{H - M_BOTTOM}" '
                        f'stroke="{color}" stroke-dasharray="4 3"/>'
                        f'<text x="{_anchor(px, 3)[0]:.1f}" y="{M_TOP + 24 + 12 * j}" text-anchor="{_anchor(px, 3)[1]}" '
                        f'fill="{color}">{escape(name)} {_fmt(v)}</text>')
    if clipped:
        body.append(f'<text x="{W - M_RIGHT}" y="{M_TOP + 4}" text-anchor="end" fill="#666">'
                    f'{clipped} call{"s" if clipped > 1 else ""} above p99.5 not shown</text>')
    return _svg("latency-histogram", title, body)


def block_medians(series: dict[str, Sequence[float]], title: str) -> str:
    """Median latency of each block of calls, in run order (drift and noise show here)."""
    values = [v for s in series.values() for v in s]
    if not values:
        return _svg("block-medians", title + " (no blocks)", [])
    n = max(len(s) for s in series.values())
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or hi * 0.05 or 1.0
    f = _Frame(0, max(n - 1, 1), lo - pad, hi + pad)
    body = f.axes("block (in run order)", "block median (ms)", _nice_ticks(0, max(n - 1, 1)),
                  _nice_ticks(lo - pad, hi + pad, 4))
    for j, (name, s) in enumerate(series.items()):
        color = PALETTE[j % len(PALETTE)]
        pts = " ".join(f"{f.x(i):.1f},{f.y(v):.1f}" for i, v in enumerate(s))
        body.append(f'<polyline class="series" points="{pts}" fill="none" stroke="{color}" stroke-width="1.5">'
                    f'<title>{escape(name)}</title></polyline>')
        body.append(f'<text x="{W - M_RIGHT - 4}" y="{M_TOP + 14 * (j + 1)}" text-anchor="end" fill="{color}">'
                    f'{escape(name)}</text>')
    return _svg("block-medians", title, body)


def accuracy_vs_latency(points: Sequence[tuple[str, float, float]], title: str, ylabel: str) -> str:
    """Scatter of (label, p50 latency ms, accuracy %): up and to the left is better."""
    if not points:
        return _svg("accuracy-vs-latency", title + " (no report has an accuracy figure)", [])
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    xpad = (max(xs) - min(xs)) * 0.15 or max(xs) * 0.1 or 1.0
    ypad = (max(ys) - min(ys)) * 0.15 or 1.0
    x0, x1 = max(0.0, min(xs) - xpad), max(xs) + xpad
    y0, y1 = min(ys) - ypad, max(ys) + ypad
    f = _Frame(x0, x1, y0, y1)
    body = f.axes("p50 latency (ms)", ylabel, _nice_ticks(x0, x1), _nice_ticks(y0, y1, 4))
    for j, (label, x, y) in enumerate(points):
        color = PALETTE[j % len(PALETTE)]
        body.append(f'<circle class="point" cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="5" fill="{color}">'
                    f'<title>{escape(label)}: {_fmt(x)} ms, {_fmt(y)}</title></circle>'
                    f'<text x="{_anchor(f.x(x))[0]:.1f}" y="{f.y(y) + 4 + 12 * (j % 3 - 1):.1f}" '
                    f'text-anchor="{_anchor(f.x(x))[1]}" fill="{color}">{escape(label)}</text>')
    return _svg("accuracy-vs-latency", title, body)


def latency_bars(rows: Sequence[tuple[str, float, float, float]], title: str) -> str:
    """Horizontal bars of p50 with a p90 whisker and the stated noise band, one per report:
    rows of (label, p50, p90, noise_pct)."""
    if not rows:
        return _svg("latency-bars", title + " (nothing measured)", [])
    top = max(r[2] for r in rows) * 1.6  # room right of the longest whisker for its label
    n = len(rows)
    row_h = (H - M_TOP - M_BOTTOM) / n
    f = _Frame(0, top, 0, 1)
    body = f.axes("latency (ms): bar p50, whisker p90", "", _nice_ticks(0, top), [])
    for j, (label, p50, p90, noise) in enumerate(rows):
        y = M_TOP + j * row_h + row_h * 0.2
        h = row_h * 0.6
        color = PALETTE[j % len(PALETTE)]
        band = p50 * noise / 100
        body.append(f'<rect class="bar" x="{M_LEFT}" y="{y:.1f}" width="{f.x(p50) - M_LEFT:.1f}" height="{h:.1f}" '
                    f'fill="{color}" opacity="0.8"><title>{escape(label)}: p50 {_fmt(p50)} ms '
                    f'(+/- {noise:.1f}%), p90 {_fmt(p90)} ms</title></rect>'
                    f'<line x1="{f.x(p50):.1f}" y1="{y + h / 2:.1f}" x2="{f.x(p90):.1f}" y2="{y + h / 2:.1f}" stroke="#333"/>'
                    f'<rect x="{f.x(max(p50 - band, 0)):.1f}" y="{y + h * 0.3:.1f}" '
                    f'width="{max(f.x(p50 + band) - f.x(max(p50 - band, 0)), 1):.1f}" height="{h * 0.4:.1f}" fill="#000" opacity="0.25"/>'
                    f'<text x="{f.x(p90) + 4:.1f}" y="{y + h / 2 + 4:.1f}" fill="#222">{escape(label)}</text>')
    return _svg("latency-bars", title, body)
