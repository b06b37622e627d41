"""Report schema, rendering, `report compare` budgets (with injected regressions), and the HTML
page checked in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeforge.errors import BadInput
from edgeforge.report.schema import Report, load_report

CHROMIUM = shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium")


@pytest.fixture(scope="module")
def reports(cli_art, tmp_path_factory) -> dict[str, Path]:
    """Real reports of an artifact the CLI made (`export` + `quantize`, conftest's `cli_art`), written by
    `edgeforge bench --eval`: FP32 and INT8 (with labels) on cpu-ort and cpu-openvino, one not measured."""
    from conftest import FAST_BENCH, cli_call

    art = tmp_path_factory.mktemp("report_art") / "art"
    shutil.copytree(cli_art, art)
    out = {}
    for target in ("cpu-ort", "cpu-openvino"):
        for precision in ("fp32", "int8-minmax"):
            code, o, err = cli_call("bench", art, "--target", target, "--precision", precision,
                                    "--eval", cli_art.parent / "eval.npz", *FAST_BENCH)
            assert code == 0, o + err
            out[f"{target}-{precision}"] = art / "reports" / f"{target}-{precision}.json"
    with pytest.MonkeyPatch.context() as mp:  # unset for this call only, not for the tests after it
        mp.delenv("EDGEFORGE_AGENT_RPI5", raising=False)
        code, o, err = cli_call("bench", art, "--target", "rpi5-ort", *FAST_BENCH)
        assert code == 0, o + err
        out["rpi5-ort-fp32"] = art / "reports" / "rpi5-ort-fp32.json"
    return out


def _edit(src: Path, dst: Path, fn) -> Path:
    data = json.loads(src.read_text())
    fn(data)
    dst.write_text(json.dumps(data))
    return dst


def test_schema_never_carries_numbers_for_unmeasured(reports):
    data = json.loads(reports["rpi5-ort-fp32"].read_text())
    assert data["schema_version"] == 1 and data["status"] == "not_measured" and data["reason"]
    measured = json.loads(reports["cpu-ort-fp32"].read_text())
    data["latency"] = measured["latency"]
    with pytest.raises(ValidationError, match="cannot carry measured figures"):
        Report.model_validate(data)
    measured["latency"] = None
    with pytest.raises(ValidationError, match="needs its latency"):
        Report.model_validate(measured)


def test_load_report_rejects_bad_files(reports, tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        load_report(tmp_path / "x.json")
    v2 = _edit(reports["cpu-ort-fp32"], tmp_path / "v2.json", lambda d: d.update(schema_version=2))
    with pytest.raises(BadInput, match="schema_version 2 is not supported"):
        load_report(v2)
    broken = _edit(reports["cpu-ort-fp32"], tmp_path / "b.json", lambda d: d["latency"].pop("p50"))
    with pytest.raises(BadInput, match=r"latency.p50"):
        load_report(broken)
    with pytest.raises(BadInput, match="no such report"):
        load_report(tmp_path / "missing.json")


def test_compare_exits_1_on_injected_latency_regression(reports, tmp_path, run_cli):
    base = reports["cpu-ort-fp32"]
    code, out, err = run_cli("report", "compare", base, base, "--max-latency-regression", "5",
                             "--max-accuracy-drop", "0.5")
    assert code == 0, err
    assert "within budget" in out

    def slower(d):
        for k in ("p50", "p90", "p95", "p99", "mean", "min", "max"):
            d["latency"][k] *= 1.5

    slow = _edit(base, tmp_path / "slow.json", slower)
    code, out, err = run_cli("report", "compare", base, slow, "--max-latency-regression", "10")
    assert code == 1 and "latency p50 regressed +50.0%" in out + err
    # The same regression is fine under a looser budget, and without budgets nothing is gated.
    assert run_cli("report", "compare", base, slow, "--max-latency-regression", "60")[0] == 0
    assert run_cli("report", "compare", base, slow)[0] == 0


def test_compare_exits_1_on_injected_accuracy_drop(reports, tmp_path, run_cli):
    base = reports["cpu-ort-fp32"]
    worse = _edit(base, tmp_path / "worse.json", lambda d: d["accuracy"].update(top1=d["accuracy"]["top1"] - 2.0))
    code, out, err = run_cli("report", "compare", base, worse, "--max-accuracy-drop", "1")
    assert code == 1 and "dropped 2.00 pts" in out + err
    assert run_cli("report", "compare", base, worse, "--max-accuracy-drop", "3")[0] == 0


def test_compare_budget_fails_when_not_measured(reports, run_cli):
    code, out, err = run_cli("report", "compare", reports["cpu-ort-fp32"], reports["rpi5-ort-fp32"],
                             "--max-latency-regression", "10")
    assert code == 1 and "not measured" in out + err


def test_report_show_and_markdown(reports, run_cli):
    code, out, err = run_cli("report", "show", reports["cpu-openvino-int8-minmax"])
    assert code == 0, err
    assert "p50" in out and "openvino" in out
    md = reports["cpu-ort-int8-minmax"].with_suffix(".md").read_text()
    for field in ("p50", "p99", "throughput", "cold load", "peak memory", "fraction of peak", "vs FP32", "top-1",
                  "kernel fidelity", "kernels vs graph", "int8 flags"):
        assert field in md, field
    assert "kernel fidelity" in out and "float emulation" in out
    code, out, err = run_cli("report", "compare", reports["cpu-ort-int8-minmax"], reports["cpu-openvino-int8-minmax"])
    assert code == 0 and "kernels vs QDQ graph SQNR" in out
    code, out, err = run_cli("report", "show", reports["rpi5-ort-fp32"])
    assert code == 0 and "not measured" in out


def test_merged_html_has_every_plot(reports, tmp_path, run_cli):
    out_html = tmp_path / "all.html"
    code, out, err = run_cli("report", "html", *reports.values(), "--out", out_html)
    assert code == 0, err
    html = out_html.read_text()
    assert html.count('data-plot="latency-histogram"') == 4
    assert 'data-plot="accuracy-vs-latency"' in html and 'data-plot="latency-bars"' in html
    assert html.count("<circle") >= 4  # one point per measured report with an accuracy
    assert "not measured" in html
    # Self-contained: nothing is fetched.
    assert not re.search(r'(src|href)="https?://', html)


def _chromium(url: str, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", *extra, url],
            capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (Debian package `chromium`; make test installs it as root)")
def test_html_renders_in_headless_chromium(reports, tmp_path):
    from edgeforge.report.io import merge_html

    page = merge_html(list(reports.values()), tmp_path / "all.html")
    proc = _chromium(page.as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    # The inline script ran to its end (it sets data-ready) and counted the plots in the DOM.
    assert 'data-ready="1"' in dom, dom[:500]
    plots = int(re.search(r'data-plots="(\d+)"', dom).group(1))
    assert plots == 2 + 2 * 4  # comparison (2) + histogram & block trace per measured report (4 x 2)
    console = [l for l in proc.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not [l for l in console if "Uncaught" in l or "Error" in l], console
    # The single-report page from `bench` renders too.
    single = _chromium(reports["cpu-ort-int8-minmax"].with_suffix(".html").as_uri(), "--dump-dom")
    assert 'data-ready="1"' in single.stdout and 'data-plot="latency-histogram"' in single.stdout
    assert single.stdout.count('class="series"') == 2  # INT8 and its alternated FP32 block medians
