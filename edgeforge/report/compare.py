"""`edgeforge report compare BASE NEW`: figures side by side, and CI budgets.

A latency regression is the relative growth of p50; an accuracy drop is in percentage points
of top-1 (against labels when both reports have them, else top-1 agreement with FP32). A budget
that cannot be checked (a report not measured, or without accuracy) is a failure: the gate was
asked for and could not be passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeforge.report.schema import Report


@dataclass
class Comparison:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # (metric, base, new, change)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _acc(r: Report, kind: str) -> float | None:
    a = r.accuracy
    if a is None:
        return None
    return a.top1 if kind == "top1" else a.agreement_top1


def compare(base: Report, new: Report, max_latency_regression_pct: float | None = None,
            max_accuracy_drop_pts: float | None = None) -> Comparison:
    c = Comparison()
    for r, which in ((base, "BASE"), (new, "NEW")):
        if r.status != "measured":
            c.notes.append(f"{which} ({r.label}) was not measured: {r.reason}")
    if base.status == "measured" and new.status == "measured":
        bl, nl = base.latency, new.latency
        for metric in ("p50", "p90", "p99", "mean"):
            b, n = getattr(bl, metric), getattr(nl, metric)
            c.rows.append((f"latency {metric} (ms)", f"{b:.3f}", f"{n:.3f}", f"{100 * (n - b) / b:+.1f}%"))
        reg = 100 * (nl.p50 - bl.p50) / bl.p50
        noise = max(bl.noise_pct, nl.noise_pct)
        c.notes.append(f"p50 change {reg:+.1f}% against a stated noise of ±{noise:.1f}%"
                       + (" (within noise)" if abs(reg) <= noise else ""))
        if max_latency_regression_pct is not None and reg > max_latency_regression_pct:
            c.failures.append(f"latency p50 regressed {reg:+.1f}% (budget {max_latency_regression_pct:g}%): "
                              f"{bl.p50:.3f} -> {nl.p50:.3f} ms")
    elif max_latency_regression_pct is not None:
        c.failures.append("latency budget cannot be checked: a report was not measured")

    kind = "top1" if _acc(base, "top1") is not None and _acc(new, "top1") is not None else "agreement"
    b_acc, n_acc = _acc(base, kind), _acc(new, kind)
    label = "top-1 (%)" if kind == "top1" else "top-1 agreement with FP32 (%)"
    if b_acc is not None and n_acc is not None:
        drop = b_acc - n_acc
        c.rows.append((label, f"{b_acc:.2f}", f"{n_acc:.2f}", f"{-drop:+.2f} pts"))
        if max_accuracy_drop_pts is not None and drop > max_accuracy_drop_pts:
            c.failures.append(f"{label} dropped {drop:.2f} pts (budget {max_accuracy_drop_pts:g}): {b_acc:.2f} -> {n_acc:.2f}")
    elif max_accuracy_drop_pts is not None:
        c.failures.append("accuracy budget cannot be checked: both reports need accuracy (bench with --eval)")
    bk, nk = base.kernel_fidelity, new.kernel_fidelity
    if bk is not None and nk is not None and bk.sqnr_db is not None and nk.sqnr_db is not None:
        c.rows.append(("kernels vs QDQ graph SQNR (dB)", f"{bk.sqnr_db:.1f}", f"{nk.sqnr_db:.1f}",
                       f"{nk.sqnr_db - bk.sqnr_db:+.1f} dB"))
    if base.model.sha256 == new.model.sha256 and base.target.name == new.target.name:
        c.notes.append("same model file and target: differences are run-to-run noise")
    return c
