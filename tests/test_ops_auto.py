"""`auto` custom-op mode: per call, the kernel where it was measured faster on this CPU class, the
decomposition elsewhere, each choice with the reason; the exporter's --custom-ops auto records them."""

from __future__ import annotations

import io

import onnx
import pytest
import torch

from edgeforge import ops
from edgeforge.ops import auto, schema


def test_choose_follows_the_measurements():
    scan = auto.choose("LinearScan", "scan", 16, cls="avx2")
    assert scan.mode == "plugin" and "x the best decomposition" in scan.reason
    for cls in auto.MEASURED:
        for (op, kind), points in auto.MEASURED[cls].items():
            for size, speedup in points.items():
                c = auto.choose(op, kind, size, cls=cls)
                assert c.mode == ("plugin" if speedup >= auto.WIN else "decompose"), (cls, op, kind, size)
                assert f"on the {cls} path" in c.reason
    lost = [(cls, k, s) for cls, t in auto.MEASURED.items() for k, p in t.items() for s, v in p.items() if v < auto.WIN]
    for cls, (op, kind), size in lost:
        assert "not faster" in auto.choose(op, kind, size, cls=cls).reason


def test_choose_without_measurements_or_library_decomposes(monkeypatch):
    c = auto.choose("GatedAttention", "log_f", 196, cls="generic")
    assert c.mode == "decompose" and "no measurement" in c.reason
    monkeypatch.setattr(auto, "cpu_class", lambda: (None, "the ONNX Runtime kernel library is not built"))
    c = auto.choose("LinearScan", "scan", 8)
    assert c.mode == "decompose" and "not built" in c.reason


class ScanAndBiasAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("decay", -torch.rand(2, 49, 49))

    def forward(self, x):  # x (1, 49, 16)
        h, _ = ops.linear_scan(torch.sigmoid(x), x)
        q = h.reshape(1, 49, 2, 8).transpose(1, 2)
        return ops.gated_attention(q, q, q, bias=self.decay)


@pytest.mark.parametrize("cls", ["avx2", "avx512"])
def test_auto_export_mixes_kernels_and_decompositions(monkeypatch, cls):
    monkeypatch.setattr(auto, "cpu_class", lambda: (cls, "test"))
    choices: list = []
    f = io.BytesIO()
    with torch.no_grad(), ops.export_mode("auto", choices):
        torch.onnx.export(ScanAndBiasAttention().eval(), (torch.randn(1, 49, 16),), f, dynamo=False,
                          opset_version=17, custom_opsets=ops.CUSTOM_OPSETS)
    m = onnx.load_from_string(f.getvalue())
    custom = sorted(n.op_type for n in m.graph.node if n.domain == schema.DOMAIN)
    want = sorted(c.op for c in choices if c.mode == "plugin")
    assert [c.op for c in choices] == ["LinearScan", "GatedAttention"]
    assert custom == want
    assert choices[0].mode == "plugin"  # the scan kernel wins on both classes
    bias49 = auto.MEASURED[cls][("GatedAttention", "bias")][49]
    assert choices[1].mode == ("plugin" if bias49 >= auto.WIN else "decompose")


def test_recipe_auto_stays_decompose_and_cli_auto_is_per_call():
    from edgeforge.export.pipeline import resolve_custom_ops
    from edgeforge.recipes import load

    recipe = load("rmt_tiny")
    assert recipe.spec.export.custom_ops == "auto"
    assert resolve_custom_ops(None, recipe) == "decompose"
    assert resolve_custom_ops("auto", recipe) == "auto"
    assert resolve_custom_ops("plugin", recipe) == "plugin"


def test_measurements_agree_with_the_committed_benchmark():
    """auto.MEASURED is benchmarks/results/ops.json's kernel speedups (the lower of the paired
    wall-time median and the 1-thread CPU-time ratio), so the choices rest on the recorded run."""
    import json
    from pathlib import Path

    doc = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "ops.json").read_text())
    for cls, res in doc["paths"].items():
        want = auto.MEASURED[cls]
        for case in res["linear_scan"].values():
            got = min(case["kernel_speedup_vs_best_decomposition"],
                      case["kernel_speedup_vs_best_decomposition_cpu_time_1thread"])
            assert want[("LinearScan", "scan")][case["T"]] == pytest.approx(got, abs=0.006), (cls, case["T"])
        for case in res["gated_attention"].values():
            got = min(case["kernel_speedup_vs_best_decomposition"],
                      case["kernel_speedup_vs_best_decomposition_cpu_time_1thread"])
            assert want[("GatedAttention", case["kind"])][case["N"]] == pytest.approx(got, abs=0.006), (cls, case)
