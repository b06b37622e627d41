"""`report compare`: the exact table, notes and budget verdicts a CI gate depends on.

Written against the survivors of mutation testing (benchmarks/mutation.py): budget edges (a
regression exactly at the budget passes, a hair above fails), which accuracy figure is compared
(labels vs agreement with FP32), the change column's sign and arithmetic, and the exit status of
the real CLI on real report files.
"""

from __future__ import annotations

import json

import pytest

from edgeforge.report.compare import compare
from edgeforge.report.schema import Report, load_report


def _report(*, p50=10.0, p90=12.0, p99=15.0, mean=11.0, noise=2.0, top1=None, agreement=None,
            sqnr=None, sha="a" * 64, target="cpu-ort", measured=True, precision="fp32") -> Report:
    d = {
        "created_at": "2026-01-01T00:00:00Z", "edgeforge_version": "0.1.0",
        "status": "measured" if measured else "not_measured",
        "reason": None if measured else "agent unreachable",
        "model": {"artifact": "artifacts/tiny", "recipe": "tiny", "precision": precision,
                  "path": "artifacts/tiny/model.onnx", "sha256": sha, "size_bytes": 1000},
        "target": {"name": target, "device": "cpu", "runtime": "onnxruntime", "reached": "local"},
    }
    if measured:
        d["latency"] = {"warmup": 2, "iterations": 20, "block_size": 5, "blocks": 4, "p50": p50, "p90": p90,
                        "p95": p90, "p99": p99, "mean": mean, "std": 0.1, "min": p50 * 0.9, "max": p99,
                        "cv": 0.01, "throughput_per_s": 1000.0 / p50, "noise_pct": noise, "noisy": False}
        if top1 is not None or agreement is not None:
            d["accuracy"] = {"dataset": "digits", "num_samples": 200, "labels": top1 is not None, "top1": top1,
                             "agreement_top1": agreement}
        if sqnr is not None:
            d["kernel_fidelity"] = {"runtime": "onnxruntime", "kernels": "model.onnx", "reference": "qdq",
                                    "inputs": "eval", "sqnr_db": sqnr, "warn_below_db": 20.0}
    return Report.model_validate(d)


def test_latency_rows_are_exact_and_signed():
    c = compare(_report(), _report(p50=12.0, p90=12.0, p99=12.0, mean=11.0, noise=5.0, sha="b" * 64))
    assert c.rows == [
        ("latency p50 (ms)", "10.000", "12.000", "+20.0%"),
        ("latency p90 (ms)", "12.000", "12.000", "+0.0%"),
        ("latency p99 (ms)", "15.000", "12.000", "-20.0%"),
        ("latency mean (ms)", "11.000", "11.000", "+0.0%"),
    ]
    # the larger of the two stated noises, and no "within noise" for a change beyond it
    assert c.notes == ["p50 change +20.0% against a stated noise of ±5.0%"]
    assert c.ok and c.failures == []


@pytest.mark.parametrize("new_p50", [10.5, 9.5])
def test_change_exactly_at_the_noise_is_within_noise(new_p50):
    c = compare(_report(noise=5.0), _report(p50=new_p50, noise=1.0, sha="b" * 64))
    sign = "+" if new_p50 > 10 else "-"
    assert c.notes == [f"p50 change {sign}5.0% against a stated noise of ±5.0% (within noise)"]


def test_latency_budget_edge():
    base, new = _report(), _report(p50=10.5)  # +5.0% exactly
    assert compare(base, new, max_latency_regression_pct=5.0).ok  # at the budget: passes
    c = compare(base, new, max_latency_regression_pct=4.9)
    assert c.failures == ["latency p50 regressed +5.0% (budget 4.9%): 10.000 -> 10.500 ms"]
    # a speed-up never breaks a budget
    assert compare(new, base, max_latency_regression_pct=0.0).ok


def test_top1_against_labels_is_preferred_and_budget_edge():
    base = _report(top1=80.0, agreement=99.0)
    new = _report(top1=78.5, agreement=97.0)
    c = compare(base, new, max_accuracy_drop_pts=1.5)  # a drop exactly at the budget passes
    assert c.rows[-1] == ("top-1 (%)", "80.00", "78.50", "-1.50 pts")
    assert c.ok
    c = compare(base, new, max_accuracy_drop_pts=1.0)
    assert c.failures == ["top-1 (%) dropped 1.50 pts (budget 1): 80.00 -> 78.50"]
    # an improvement shows a positive change and passes any budget
    c = compare(new, base, max_accuracy_drop_pts=0.0)
    assert c.rows[-1] == ("top-1 (%)", "78.50", "80.00", "+1.50 pts") and c.ok


def test_agreement_is_compared_when_either_report_lacks_labels():
    base = _report(top1=80.0, agreement=99.0)
    new = _report(agreement=96.0)  # no labels: top-1 agreement with FP32 only
    c = compare(base, new, max_accuracy_drop_pts=2.0)
    assert c.rows[-1] == ("top-1 agreement with FP32 (%)", "99.00", "96.00", "-3.00 pts")
    assert c.failures == ["top-1 agreement with FP32 (%) dropped 3.00 pts (budget 2): 99.00 -> 96.00"]


def test_agreement_is_compared_when_the_base_lacks_labels():
    base = _report(agreement=99.0)
    new = _report(top1=80.0, agreement=98.0)
    c = compare(base, new)
    assert c.rows[-1] == ("top-1 agreement with FP32 (%)", "99.00", "98.00", "-1.00 pts")


def test_accuracy_budget_unverifiable_is_a_failure_and_no_budget_no_failure():
    base, new = _report(top1=80.0, agreement=99.0), _report()
    c = compare(base, new, max_accuracy_drop_pts=1.0)
    assert c.failures == ["accuracy budget cannot be checked: both reports need accuracy (bench with --eval)"]
    assert len(c.rows) == 4  # latency rows only: no half-filled accuracy row
    c = compare(base, new)
    assert c.ok and len(c.rows) == 4


def test_kernel_fidelity_row_needs_both():
    c = compare(_report(sqnr=30.0), _report(sqnr=25.5))
    assert c.rows[-1] == ("kernels vs QDQ graph SQNR (dB)", "30.0", "25.5", "-4.5 dB")
    assert len(compare(_report(sqnr=30.0), _report()).rows) == 4
    assert len(compare(_report(), _report(sqnr=30.0)).rows) == 4


def test_same_model_note_needs_same_file_and_same_target():
    note = "same model file and target: differences are run-to-run noise"
    assert note in compare(_report(), _report()).notes
    assert note not in compare(_report(), _report(sha="b" * 64)).notes
    assert note not in compare(_report(), _report(target="cpu-openvino")).notes


def test_not_measured_reports_are_named_and_budgets_fail():
    base, new = _report(), _report(measured=False, target="rpi5-ort")
    c = compare(base, new, max_latency_regression_pct=10.0)
    assert c.rows == []
    assert c.notes[0] == "NEW (tiny fp32 @ rpi5-ort) was not measured: agent unreachable"
    assert c.failures == ["latency budget cannot be checked: a report was not measured"]
    c = compare(new, base)
    assert c.notes == ["BASE (tiny fp32 @ rpi5-ort) was not measured: agent unreachable"] and c.ok
    # measured reports never get a not-measured note
    assert not [n for n in compare(base, base).notes if "was not measured" in n]


def test_cli_exit_status_at_the_budget_edge(tmp_path, run_cli):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(_report(top1=80.0).model_dump_json())
    new.write_text(json.dumps(json.loads(_report(p50=10.5, top1=79.0).model_dump_json())))
    assert load_report(new).latency.p50 == 10.5
    code, out, err = run_cli("report", "compare", base, new, "--max-latency-regression", "5",
                             "--max-accuracy-drop", "1")
    assert code == 0, out + err
    assert "within budget" in out
    code, out, err = run_cli("report", "compare", base, new, "--max-latency-regression", "4")
    assert code == 1
    assert "latency p50 regressed +5.0% (budget 4%)" in out + err
    code, out, err = run_cli("report", "compare", base, new, "--max-accuracy-drop", "0.5")
    assert code == 1 and "dropped 1.00 pts" in out + err
