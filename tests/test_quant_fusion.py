"""Placement is checked against what the runtimes really fuse: the optimized graph ONNX Runtime
saves, and the layer precisions of OpenVINO's compiled model.

A CNN with Conv-BN-ReLU6 (Clip), depthwise convs, Conv-ReLU, a residual add, pooling and a
linear head: every Conv must become an int8 kernel (QLinearConv in ORT, a u8/i8 Convolution in
OpenVINO) with no float Conv, Clip or Relu left beside it. A quantizer before the ReLU6 as well as
after it (the old placement) still fused, but spent half its levels on negative values the Clip
drops and rounded twice: test_one_quantizer_after_relu6_and_relu fails on it (checked).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeforge.quant.calibrate import session
from edgeforge.quant.engine import quantize_onnx
from edgeforge.quant.scheme import resolve


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.pw = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.BatchNorm2d(2 * c), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c), nn.BatchNorm2d(2 * c),
                                nn.ReLU6())
        self.pwl = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.pwl(self.dw(self.pw(x)))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6(), Block(16),
                      nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU(), Block(24), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(24, 10))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from edgeforge.export.transforms import apply_transforms

    model = cnn()
    x = torch.randn(1, 3, 32, 32)
    apply_transforms(model, ["fold_bn"], (x,))
    path = tmp_path_factory.mktemp("fusion") / "fp32.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"])
    fp32 = onnx.load(str(path))
    calib = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    convs = sum(n.op_type == "Conv" for n in fp32.graph.node)
    assert sum(n.op_type == "Clip" for n in fp32.graph.node) == 5  # the ReLU6s are Clips
    return fp32, calib, convs, path.parent


def test_one_quantizer_after_relu6_and_relu(quantized):
    fp32, calib, convs, _ = quantized
    q = quantize_onnx(fp32, calib, "minmax", resolve("w8a8"), show_progress=False)
    producer = {o: n for n in q.model.graph.node for o in n.output}
    for n in q.model.graph.node:
        if n.op_type in ("Clip", "Relu"):
            # the activation reads the Conv directly, and its output is the one quantized tensor
            assert producer[n.input[0]].op_type == "Conv", n.name
        if n.op_type == "QuantizeLinear" and n.input[0] in producer:
            assert producer[n.input[0]].op_type != "Conv" or not any(
                c.op_type in ("Clip", "Relu") for c in q.model.graph.node if producer[n.input[0]].output[0] in c.input)
    # a ReLU6 quantizer lies inside [0, 6], so ONNX Runtime can drop the Clip
    for site in q.plan.acts.values():
        if site.clip:
            qp = q.act_q[site.tensor]
            lo, hi = qp.float_range()
            assert site.clip == (0.0, 6.0) and float(lo) >= 0.0 and float(np.float32(hi)) <= 6.0


def test_onnx_runtime_fuses_every_conv(quantized, tmp_path):
    fp32, calib, convs, _ = quantized
    q = quantize_onnx(fp32, calib, "minmax", resolve("w8a8"), show_progress=False)
    src, opt = tmp_path / "int8.onnx", tmp_path / "int8.opt.onnx"
    onnx.save(q.model, str(src))
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    assert ops["QLinearConv"] == convs, ops
    assert ops["Conv"] == 0 and ops["Clip"] == 0 and ops["Relu"] == 0, ops
    assert ops["QLinearAdd"] == 2, ops  # the residuals stay in the int8 chain
    assert session(q.model, optimize="all") is not None


def test_openvino_runs_every_conv_in_int8(quantized):
    ov = pytest.importorskip("openvino")
    fp32, calib, convs, _ = quantized
    q = quantize_onnx(fp32, calib, "minmax", resolve("w8a8", "cpu-openvino"), show_progress=False)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(q.model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    layers = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layers[(info["layerType"].astype(str), info["runtimePrecision"].astype(str))] += 1
    conv_precisions = {p for (t, p), n in layers.items() if t == "Convolution"}
    assert sum(n for (t, _), n in layers.items() if t == "Convolution") == convs, layers
    assert conv_precisions <= {"u8", "i8"}, layers
