"""TensorRT plugins, host side, on the CPU: the conformance harness (plugins/tests/trt_conformance.cpp)
loads the plugin library as trtexec --dynamicPlugins does and checks creators, fields, shapes,
formats, serialization, clone/attach, workspace and a GPU-less enqueue for every edgeforge:: node
the models emit (shapes compared with ONNX Runtime's), on the shipped library and under
AddressSanitizer + UBSan. Needs only TensorRT's headers (fetched by `edgeforge plugins build`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeforge import ops
from edgeforge.models import build_model
from edgeforge.ops import build, schema, trt_conformance
from edgeforge.ops import implementations as impls


@pytest.fixture(scope="module")
def report():
    return build.build(fetch=False)


class TinyScanAttention(torch.nn.Module):
    """Both ops as the backbones call them (scan with h0 and reverse, decay bias, forget gates, causal)."""

    def __init__(self, c: int = 16, heads: int = 2, n: int = 9) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.heads, self.d = heads, c // heads
        self.qkv = torch.nn.Linear(c, 3 * c)
        self.forget = torch.nn.Linear(c, heads)
        self.register_buffer("decay", torch.rand(heads, n, n, generator=g) * -2.0)

    def forward(self, x):
        a = torch.sigmoid(x)
        h, last = ops.linear_scan(a, x, h0=x[:, 0], reverse=True)
        B, N, C = h.shape
        q, k, v = self.qkv(h).reshape(B, N, 3, self.heads, self.d).permute(2, 0, 3, 1, 4).unbind(0)
        o1 = ops.gated_attention(q, k, v[..., :4], bias=self.decay, scale=0.3)
        log_f = torch.nn.functional.logsigmoid(self.forget(h)).transpose(1, 2)
        o2 = ops.gated_attention(q, k, v, log_f=log_f, causal=True)
        return o1.sum() + o2, last


MODELS = {  # name: (builder or module, input shape)
    "tiny": (TinyScanAttention, (2, 9, 16)),
    "trecvit_tiny": ("edgeforge:trecvit_tiny", (1, 4, 3, 32, 32)),
    "rmt_tiny": ("edgeforge:rmt_tiny", (1, 3, 64, 64)),
}


def _plugin_export(onnx_tools, name: str) -> tuple[onnx.ModelProto, dict]:
    builder, shape = MODELS[name]
    torch.manual_seed(0)
    if isinstance(builder, str):
        model = build_model(builder, img_size=shape[-1]).eval()
    else:
        model = builder().eval()
    x = torch.randn(*shape)
    return onnx_tools.export(model, [x], "plugin", input_names=["x"]), {"x": x.numpy()}


@pytest.fixture(scope="module")
def spec(report, tmp_path_factory, onnx_tools) -> Path:
    if not report.parts["trt-host"].built:
        pytest.skip(f"harness not built: {report.parts['trt-host'].reason}")
    if impls.unavailable("ort-kernel"):
        pytest.skip(f"the shapes come from ONNX Runtime runs: {impls.unavailable('ort-kernel')}")
    nodes = []
    for name in MODELS:
        model, feeds = _plugin_export(onnx_tools, name)
        nodes += trt_conformance.node_specs(model, feeds)
    ops_seen = {n.op for n in nodes}
    assert ops_seen == {schema.LINEAR_SCAN, schema.GATED_ATTENTION}
    return trt_conformance.write_spec(tmp_path_factory.mktemp("trt") / "spec.txt", nodes)


def test_spec_covers_every_node_form(spec):
    lines = spec.read_text().splitlines()
    nodes = [ln for ln in lines if ln.startswith("node ")]
    assert any("has_bias:i=1" in ln for ln in nodes) and any("has_log_f:i=1" in ln for ln in nodes)
    assert any("reverse:i=1" in ln for ln in nodes)
    assert all(len(ln.split("|")) == 3 for ln in nodes)


@pytest.mark.parametrize("variant", ["trt-host", "trt-host-asan"])
def test_tensorrt_plugins_conform_on_the_host(report, spec, variant):
    part = report.parts[variant]
    if not part.built:
        pytest.skip(f"{variant} not built: {part.reason}")
    lib = Path(report.build_dir) / (build.PARTS["trt"][1] if variant == "trt-host" else build.TRT_ASAN_LIBRARY)
    proc = trt_conformance.run(Path(part.path), lib, spec)
    out = proc.stdout + proc.stderr
    failures = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
    assert proc.returncode == 0 and not failures, "\n".join(failures[:30]) + "\n" + out[-3000:]
    assert " 0 failed" in proc.stdout
    assert "getOutputShapes (symbolic batch inputs)" in proc.stdout


def test_node_specs_match_onnx_runtime_shapes(spec):
    # The harness compares with these numbers; make sure they are ONNX Runtime's, not copies of the inputs.
    lines = [ln for ln in spec.read_text().splitlines() if ln.startswith("node LinearScan")]
    for ln in lines:
        _, ins, outs = ln.split("|")
        a = ins.split()[0].split("x")
        h, last = outs.split()
        assert h.split("x") == a and last.split("x") == [a[0], a[2]]
    assert np.all([ln.count("|") == 2 for ln in lines])
