"""Saturation-safe INT8 weights, proved on the real AVX2 int8 kernels of ONNX Runtime and OpenVINO.

x86 CPUs without VNNI add u8 x s8 byte pairs in saturating 16-bit lanes. On a VNNI machine the
AVX2 kernels are reached with edgeforge.runtimes.isa (OpenVINO: ONEDNN_MAX_CPU_ISA=AVX2;
ONNX Runtime: qemu-x86_64 -cpu Haswell); on an AVX2 machine they run natively. Either way the
outputs compared here are real kernel outputs, against the float emulation of the same QDQ graph
(ONNX Runtime with graph optimisation off), which is exact on any CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeforge.errors import NotAvailable
from edgeforge.quant.calibrate import run_outputs
from edgeforge.quant.engine import quantize_onnx
from edgeforge.quant.overflow import Layer, channel_rows, pairs, safe_codes, saturation_check, worst_pair_sum
from edgeforge.quant.quantizers import sqnr_db
from edgeforge.quant.scheme import resolve
from edgeforge.runtimes import isa

RUNTIMES = ["openvino", "onnxruntime"]


def _avx2(model_path, x, runtime):
    try:
        return isa.run(model_path, x, runtime, "avx2")
    except NotAvailable as e:
        pytest.skip(str(e))


def _emulate(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    name = model.graph.output[0].name
    return run_outputs(model, x, [name], optimize="disable")[name]


def _qdq_conv(w_codes: np.ndarray, w_scale: float, x_scale: float = 1 / 255, y_scale: float = 1 / 64):
    """Q/DQ(uint8 input) -> Conv(int8 weights) -> Q/DQ: the pattern runtimes fuse into one int8 conv."""
    co = w_codes.shape[0]
    inits = [numpy_helper.from_array(w_codes.astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(co, w_scale, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(co, np.int8), "wz"),
             numpy_helper.from_array(np.float32(x_scale), "xs"), numpy_helper.from_array(np.uint8(0), "xz"),
             numpy_helper.from_array(np.float32(y_scale), "ys"), numpy_helper.from_array(np.uint8(0), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    ci = w_codes.shape[1]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ci, 6, 6])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


# ----------------------------------------------------------------------------- the arithmetic
def test_safe_codes_never_exceed_the_pair_limit_and_beat_7_bit_weights():
    rng = np.random.default_rng(0)
    for c_in, k in [(64, 9), (3, 9), (5, 9), (256, 1)]:
        w = rng.standard_normal((32, c_in * k))
        layer = Layer("conv", c_in, k)
        s8 = np.abs(w).max(axis=1) / 127
        plain = np.clip(np.rint(w / s8[:, None]), -127, 127)
        assert worst_pair_sum(plain, layer) > 128  # 8-bit weights do saturate
        codes, scale, stats = safe_codes(w, s8, layer, 127, 255)
        assert worst_pair_sum(codes, layer) <= 128
        err_safe = ((codes * scale[:, None] - w) ** 2).sum()
        s7 = np.abs(w).max(axis=1) / 63
        err_7 = ((np.clip(np.rint(w / s7[:, None]), -63, 63) * s7[:, None] - w) ** 2).sum()
        assert err_safe < 0.7 * err_7, (c_in, k, err_safe, err_7)
    # depthwise convs run 32-bit kernels on both runtimes: nothing to constrain
    assert pairs(Layer("conv", 1, 9)) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pairings_are_the_kernels_pairings(tmp_path, runtime):
    """Two weights of 127 on uint8 inputs of 255 saturate exactly when `pairs` says they are added
    in one 16-bit lane (an odd c_in, where ONNX Runtime's and OpenVINO's pairings differ)."""
    c_in, p = 5, 9  # 3x3 kernel; weights flattened as (c_in, position)
    (ort_a, ort_b), (ov_a, ov_b) = pairs(Layer("conv", c_in, p))
    ort_pairs, ov_pairs = set(zip(ort_a.tolist(), ort_b.tolist())), set(zip(ov_a.tolist(), ov_b.tolist()))
    ort_only = (4 * p + 0, 0 * p + 1)  # channel 4 at position 0 with channel 0 at position 1
    ov_only = (2 * p + 1, 3 * p + 1)  # channels 2 and 3 at position 1
    assert ort_only in ort_pairs - ov_pairs and ov_only in ov_pairs - ort_pairs
    cases = {"ort pair": ort_only, "ov pair": ov_only, "no pair": (0, 2 * p)}
    x = np.ones((1, c_in, 6, 6), np.float32)
    got = {}
    for name, (a, b) in cases.items():
        codes = np.zeros((8, c_in * p), np.int8)
        codes[:, [a, b]] = 127
        m = _qdq_conv(codes.reshape(8, c_in, 3, 3), 1 / 254)
        path = tmp_path / f"{name.replace(' ', '_')}.onnx"
        onnx.save(m, str(path))
        kern, emu = _avx2(path, x, runtime)[0, 0, 1, 1], _emulate(m, x)[0, 0, 1, 1]
        got[name] = (float(kern), float(emu))
    assert got["no pair"][0] == pytest.approx(got["no pair"][1])
    expect_sat = "ort pair" if runtime == "onnxruntime" else "ov pair"
    # a saturated lane holds 32767 of 64770: about half the emulated value
    assert got[expect_sat][0] < 0.6 * got[expect_sat][1], got
    other = "ov pair" if expect_sat == "ort pair" else "ort pair"
    assert got[other][0] == pytest.approx(got[other][1]), got


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_layer_built_to_saturate_computes_what_the_graph_says(tmp_path, runtime):
    """Large neighbouring weights and inputs at the top of their range: quantized for int16 pairs,
    the integer kernels equal the float emulation; quantized for 32-bit accumulation they do not
    (which shows the check can fail)."""
    rng = np.random.default_rng(1)
    c_in = 16
    w = (rng.uniform(0.8, 1.0, (8, c_in, 3, 3)) * np.repeat([1, -1], 4).reshape(8, 1, 1, 1)).astype(np.float32)
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, 8, 8])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    # Relu: the conv's output must be quantized for ONNX Runtime to fuse an int8 conv
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["c"], ["y"], name="relu")], "sat",
                          [x_in], [out], [numpy_helper.from_array(w, "w")])
    fp32 = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    calib = rng.uniform(0, 1, (4, c_in, 8, 8)).astype(np.float32)
    x = np.ones((2, c_in, 8, 8), np.float32)  # every input at the top of the calibrated range
    results = {}
    for acc in ("int32", "int16-pairs"):
        q = quantize_onnx(fp32, calib, "minmax", resolve(int8_accumulation=acc), show_progress=False)
        path = tmp_path / f"{acc}.onnx"
        onnx.save(q.model, str(path))
        results[acc] = (sqnr_db(_emulate(q.model, x), _avx2(path, x, runtime)),
                        saturation_check(q.model)["layers_that_can_saturate"])
    assert results["int16-pairs"][1] == 0 and results["int32"][1] == 1
    assert results["int16-pairs"][0] > 40, results  # equal up to the output's rounding
    if runtime == "openvino":
        # saturated. (ONNX Runtime's MLAS picks its conv kernel by shape and quantizers, and on this
        # layer takes a path without the 16-bit pair step; test_pairings_are_the_kernels_pairings
        # shows it saturating on the layers that take the pair path.)
        assert results["int32"][0] < 15, results


def test_saturation_check_reads_the_qdq_graph():
    codes = np.zeros((4, 6, 1, 1), np.int8)
    codes[:, 0], codes[:, 1] = 100, 60  # a same-sign pair summing to 160
    chk = saturation_check(_qdq_conv(codes, 0.01))
    assert chk["layers_that_can_saturate"] == 1 and chk["worst_pair_sum"] == 160
    codes[:, 1] = -60  # opposite signs never overflow
    assert saturation_check(_qdq_conv(codes, 0.01))["layers_that_can_saturate"] == 0
    assert worst_pair_sum(channel_rows(codes, 0), Layer("conv", 6, 1)) == 0


# ----------------------------------------------------------------------------- a trained model
@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_trained_fixture_keeps_accuracy_on_avx2_kernels(trained, tmp_path, method):
    """W8A8 for a saturating CPU: within 0.5 top-1 points of FP32 on OpenVINO's AVX2 kernels, and
    those kernels agree with the float emulation on >= 99.5% of top-1 answers."""
    _, fp32_path, calib, ev = trained
    fp32 = onnx.load(fp32_path)
    fp32_acc = float((_emulate(fp32, ev.x).argmax(-1) == ev.labels).mean())
    q = quantize_onnx(fp32, calib.x, method, resolve(target="cpu-openvino", method=method,
                                                     int8_accumulation="int16-pairs"), show_progress=False)
    assert saturation_check(q.model)["layers_that_can_saturate"] == 0
    path = tmp_path / "int8.onnx"
    onnx.save(q.model, str(path))
    kern = _avx2(path, ev.x, "openvino").argmax(-1)
    emu = _emulate(q.model, ev.x).argmax(-1)
    assert float((kern == emu).mean()) >= 0.995
    assert float((kern == ev.labels).mean()) >= fp32_acc - 0.005
