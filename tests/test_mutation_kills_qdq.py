"""QDQ export, read back from the written ONNX model: node wiring, scales and zero-points,
int8 weight codes, int32 biases, Clip for narrow activations, kept-float consumers, fresh names,
shared weights, dropped float initializers and opset conversion, and the numbers ONNX Runtime
computes from the file against a numpy simulation of the same quantizers.

Written against the survivors of mutation testing (benchmarks/mutation.py).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeforge.quant.placement import Plan, WeightSite
from edgeforge.quant.qdq import Names, build_qdq
from edgeforge.quant.quantizers import (QParams, dequantize, fake_quant, log_params, params_from_range, quantize,
                                        quantize_bias)

RNG = np.random.default_rng(7)
X = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
W = RNG.standard_normal((2, 2, 1, 1)).astype(np.float32)
B = np.float32([0.3, -0.2])
C2 = np.float32([[0.5], [1.5]]).reshape(2, 1, 1)


def _model(names=("conv", "relu", "conv2", "add"), opset=17, weight_inputs=False) -> onnx.ModelProto:
    """in:0 -> Conv(W, B) -> Relu -> r;  r -> Conv(W, B) -> out;  r + c2 -> sum (W, B shared)."""
    n_conv, n_relu, n_conv2, n_add = names
    nodes = [helper.make_node("Conv", ["in:0", "conv.w", "conv.b"], ["c"], name=n_conv),
             helper.make_node("Relu", ["c"], ["r"], name=n_relu),
             helper.make_node("Conv", ["r", "conv.w", "conv.b"], ["out"], name=n_conv2),
             helper.make_node("Add", ["r", "c2"], ["sum"], name=n_add)]
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    inits = [numpy_helper.from_array(W, "conv.w"), numpy_helper.from_array(B, "conv.b"),
             numpy_helper.from_array(C2, "c2")]
    inputs = [vi("in:0", [1, 2, 4, 4])]
    if weight_inputs:  # IR < 4 style: initializers listed as graph inputs too
        inputs += [vi("conv.w", [2, 2, 1, 1]), vi("conv.b", [2]), vi("c2", [2, 1, 1])]
    g = helper.make_graph(nodes, "g", inputs, [vi("out", [1, 2, 4, 4]), vi("sum", [1, 2, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _plan(conv="conv", conv2="conv2", kept=("add",), bias=True) -> Plan:
    ws = [WeightSite(conv, "conv.w", 0, "conv.b" if bias else None, "in:0"),
          WeightSite(conv2, "conv.w", 0, "conv.b" if bias else None, "r")]
    return Plan(acts={}, weights=ws, layers=[conv, conv2], kept_fp=list(kept), node_types={})


def _quantizers(r_bits=6, w_axis=0):
    act_q = {"in:0": params_from_range(X.min(), X.max(), 8, False, False),
             "r": params_from_range(0.0, 2.5, r_bits, False, False)}
    amax = np.abs(W).reshape(2, -1).max(1)
    w_q = params_from_range(-amax, amax, 8, True, True, axis=0) if w_axis == 0 else \
        params_from_range(-np.abs(W).max(), np.abs(W).max(), 8, True, True)
    return act_q, {"conv.w": w_q}


def _conv1x1(x, w, b):
    return np.einsum("oi,nihw->nohw", w.reshape(2, 2), x) + b.reshape(1, 2, 1, 1)


def _inits(m):
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _node(m, name):
    (n,) = [n for n in m.graph.node if n.name == name]
    return n


def _run(m):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"in:0": X})


def test_wiring_names_and_values_read_back():
    act_q, w_q = _quantizers()
    m = build_qdq(_model(), _plan(), act_q, w_q)
    onnx.checker.check_model(m)
    inits = _inits(m)
    qin, qr, qw = act_q["in:0"], act_q["r"], w_q["conv.w"]
    # activation of a graph input: Q/DQ at the front, sanitised names, uint8 zero-point
    q = _node(m, "in_0_QuantizeLinear")
    assert list(q.input) == ["in:0", "in_0_q_scale", "in_0_q_zero_point"] and list(q.output) == ["in_0_quantized"]
    dq = _node(m, "in_0_DequantizeLinear")
    assert list(dq.input) == ["in_0_quantized", "in_0_q_scale", "in_0_q_zero_point"]
    assert list(dq.output) == ["in_0_dequantized"]
    assert inits["in_0_q_scale"].dtype == np.float32 and inits["in_0_q_scale"] == qin.scale
    assert inits["in_0_q_zero_point"].dtype == np.uint8 and inits["in_0_q_zero_point"] == qin.zero_point
    # 6-bit activation: Clip to its float range, then Q/DQ in an 8-bit container
    clip = _node(m, "r_Clip")
    assert list(clip.input) == ["r", "r_clip_lo", "r_clip_hi"] and list(clip.output) == ["r_clipped"]
    lo, hi = qr.float_range()
    assert inits["r_clip_lo"] == np.float32(lo) and inits["r_clip_hi"] == np.float32(hi)
    assert inits["r_clip_lo"].dtype == np.float32 and inits["r_clip_hi"].dtype == np.float32
    assert list(_node(m, "r_QuantizeLinear").input) == ["r_clipped", "r_q_scale", "r_q_zero_point"]
    # consumers: quantized layers read dequantized tensors, the kept-float Add reads the float one
    conv, conv2, add = _node(m, "conv"), _node(m, "conv2"), _node(m, "add")
    assert list(conv.input) == ["in_0_dequantized", "conv_w_dequantized", "conv_bias_dequantized"]
    assert list(conv2.input) == ["r_dequantized", "conv_w_1_dequantized", "conv2_bias_dequantized"]
    assert list(add.input) == ["r", "c2"]
    # the shared weight: stored once as int8 codes, one per-channel DequantizeLinear per layer
    assert inits["conv_w_quantized"].dtype == np.int8
    np.testing.assert_array_equal(inits["conv_w_quantized"], quantize(W, qw))
    np.testing.assert_array_equal(inits["conv_w_scale"], qw.scale)
    assert inits["conv_w_zero_point"].dtype == np.int8 and inits["conv_w_zero_point"].tolist() == [0, 0]
    for name in ("conv_w_DequantizeLinear", "conv_w_1_DequantizeLinear"):
        n = _node(m, name)
        assert list(n.input) == ["conv_w_quantized", "conv_w_scale", "conv_w_zero_point"]
        assert [(a.name, a.i) for a in n.attribute] == [("axis", 0)]
    assert [i.name for i in m.graph.initializer if i.name.endswith("_quantized") and i.data_type == TensorProto.INT8
            ] == ["conv_w_quantized"]
    # int32 biases, one per layer, with scale s_in * s_w and zero-point 0
    for layer, s_in in (("conv", qin.scale), ("conv2", qr.scale)):
        bq, bs = quantize_bias(B, float(s_in), qw.scale)
        assert inits[f"{layer}_bias_quantized"].dtype == np.int32
        np.testing.assert_array_equal(inits[f"{layer}_bias_quantized"], bq)
        np.testing.assert_array_equal(inits[f"{layer}_bias_scale"], bs)
        assert inits[f"{layer}_bias_zero_point"].dtype == np.int32
        assert inits[f"{layer}_bias_zero_point"].tolist() == [0, 0]
        n = _node(m, f"{layer}_bias_DequantizeLinear")
        assert list(n.input) == [f"{layer}_bias_quantized", f"{layer}_bias_scale", f"{layer}_bias_zero_point"]
        assert list(n.output) == [f"{layer}_bias_dequantized"]
        assert [(a.name, a.i) for a in n.attribute] == [("axis", 0)]
    # float weight and bias no longer read: dropped; c2 (read by the kept Add) stays
    assert "conv.w" not in inits and "conv.b" not in inits and "c2" in inits
    # order: prologue (graph-input Q/DQ, weights, biases), then each node followed by its Q/DQ
    order = [n.name for n in m.graph.node]
    assert order[:2] == ["in_0_QuantizeLinear", "in_0_DequantizeLinear"]
    i = order.index("relu")
    assert order[i + 1:i + 4] == ["r_Clip", "r_QuantizeLinear", "r_DequantizeLinear"]
    assert set(order[:order.index("conv")]) == {
        "in_0_QuantizeLinear", "in_0_DequantizeLinear", "conv_w_DequantizeLinear", "conv_bias_DequantizeLinear",
        "conv_w_1_DequantizeLinear", "conv2_bias_DequantizeLinear"}


def test_onnx_runtime_computes_the_simulated_numbers():
    act_q, w_q = _quantizers()
    m = build_qdq(_model(), _plan(), act_q, w_q)
    out, sm = _run(m)
    qin, qr, qw = act_q["in:0"], act_q["r"], w_q["conv.w"]
    wd = dequantize(quantize(W, qw), qw)
    b1 = dequantize(*_bias(qin, qw))
    b2 = dequantize(*_bias(qr, qw))
    r = np.maximum(_conv1x1(fake_quant(X, qin), wd, b1), 0)
    rq = fake_quant(np.clip(r, *qr.float_range()), qr)
    np.testing.assert_allclose(out, _conv1x1(rq, wd, b2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sm, r + C2, rtol=1e-5, atol=1e-6)  # the kept Add sees float r


def _bias(qin, qw):
    bq, bs = quantize_bias(B, float(qin.scale), qw.scale)
    return bq, QParams(bs, np.zeros(2, np.int64), 8, True, True, 0)


def test_per_tensor_weight_8bit_activation_and_signed_zero_point():
    act_q, w_q = _quantizers(r_bits=8, w_axis=None)
    act_q["r"] = params_from_range(0.0, 2.5, 8, False, True)
    m = build_qdq(_model(), _plan(), act_q, w_q)
    onnx.checker.check_model(m)
    inits = _inits(m)
    assert not [n for n in m.graph.node if n.op_type == "Clip"]
    assert not any(k.startswith("r_clip") for k in inits)
    assert list(_node(m, "r_QuantizeLinear").input) == ["r", "r_q_scale", "r_q_zero_point"]
    assert inits["r_q_zero_point"].dtype == np.int8 and inits["r_q_zero_point"] == -128
    assert [a.name for a in _node(m, "conv_w_DequantizeLinear").attribute] == []
    assert inits["conv_w_scale"].shape == ()
    bq, _ = quantize_bias(B, float(act_q["in:0"].scale), w_q["conv.w"].scale)
    np.testing.assert_array_equal(inits["conv_bias_quantized"], bq)
    out, _ = _run(m)
    assert np.isfinite(out).all()


def test_bias_left_float_when_it_cannot_be_int32():
    act_q, w_q = _quantizers()
    # no bias site, and a layer whose activation has no quantizer: the bias stays float
    m = build_qdq(_model(), _plan(bias=False), act_q, w_q)
    assert not any(k.endswith("_bias_quantized") for k in _inits(m))
    assert list(_node(m, "conv").input)[2] == "conv.b" and "conv.b" in _inits(m)
    only_r = {"r": act_q["r"]}
    m = build_qdq(_model(), _plan(), only_r, w_q)
    inits = _inits(m)
    assert "conv_bias_quantized" not in inits and "conv2_bias_quantized" in inits
    assert list(_node(m, "conv").input) == ["in:0", "conv_w_dequantized", "conv.b"]
    assert "conv.b" in inits


def test_2d_gemm_bias_stays_float():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    w = RNG.standard_normal((3, 2)).astype(np.float32)
    for c, fits in ((np.float32([[0.1, 0.2]]), False), (np.float32([0.1, 0.2]), True)):
        g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc")], "g", [x], [y],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        qx = params_from_range(-1.0, 1.0, 8, False, False)
        qw = params_from_range(-1.0, 1.0, 8, True, True)  # per-tensor: any 1-D bias fits
        plan = Plan({}, [WeightSite("fc", "w", None, "c", "x")], ["fc"], [], {})
        out = build_qdq(m, plan, {"x": qx}, {"w": qw})
        inits = _inits(out)
        assert ("fc_bias_quantized" in inits) is fits
        assert (list(_node(out, "fc").input)[2] == "c") is not fits
    # per-channel weight scale whose length differs from the bias: float
    qw = params_from_range(-np.ones(3), np.ones(3), 8, True, True, axis=0)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc")], "g", [x], [y],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32([0.1, 0.2]), "c")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out = build_qdq(m, Plan({}, [WeightSite("fc", "w", 0, "c", "x")], ["fc"], [], {}), {"x": qx}, {"w": qw})
    assert "fc_bias_quantized" not in _inits(out)


def test_bias_shift_moves_the_int32_levels():
    act_q, w_q = _quantizers()
    qin, qw = act_q["in:0"], w_q["conv.w"]
    shift = np.float64([1.0, -1.0])
    m = build_qdq(_model(), _plan(), act_q, w_q, bias_shift={"conv": shift})
    inits = _inits(m)
    bq, _ = quantize_bias(B, float(qin.scale), qw.scale, shift)
    plain, _ = quantize_bias(B, float(qin.scale), qw.scale)
    assert not np.array_equal(bq, plain)
    np.testing.assert_array_equal(inits["conv_bias_quantized"], bq)
    bq2, _ = quantize_bias(B, float(act_q["r"].scale), qw.scale)
    np.testing.assert_array_equal(inits["conv2_bias_quantized"], bq2)  # no shift for conv2


def test_unnamed_layers_sharing_a_weight_are_told_apart_by_position():
    act_q, w_q = _quantizers()
    m = build_qdq(_model(names=("", "relu", "", "add")), _plan(conv="", conv2=""), act_q, w_q)
    onnx.checker.check_model(m)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert list(convs[0].input) == ["in_0_dequantized", "conv_w_dequantized", "Conv_bias_dequantized"]
    assert list(convs[1].input) == ["r_dequantized", "conv_w_1_dequantized", "Conv_bias_1_dequantized"]
    ref = build_qdq(_model(), _plan(), act_q, w_q)
    np.testing.assert_array_equal(_run(m)[0], _run(ref)[0])


def test_plan_errors():
    act_q, w_q = _quantizers()
    bad = Plan({}, [WeightSite("relu", "conv.w", 0)], ["relu"], [], {})
    with pytest.raises(ValueError, match=r"plan: layer 'relu' does not read weight 'conv.w'"):
        build_qdq(_model(), bad, act_q, w_q)
    three = Plan({}, _plan().weights + [WeightSite("conv", "conv.w", 0)], ["conv", "conv2"], [], {})
    with pytest.raises(ValueError, match=r"plan: layer 'conv' does not read weight 'conv.w'"):
        build_qdq(_model(), three, act_q, w_q)  # its weight slot is already rewired
    with pytest.raises(ValueError, match=r"r: a log2 quantizer cannot be written as QuantizeLinear"):
        build_qdq(_model(), _plan(), {"r": log_params(1.0, 4)}, w_q)


def test_names_are_fresh_and_sanitised():
    assert Names.clean("blocks.0/attn:1") == "blocks_0_attn_1"
    assert Names.clean("::") == "t" and Names.clean("_a_") == "a" and Names.clean("a__b") == "a__b"
    n = Names({"x_q", "y_q_1"})
    assert n.base("x", ("_q", "_s")) == "x_1"
    assert n.base("x", ("_q", "_s")) == "x_2"  # x_1's suffixes are now taken
    assert n.base("x", ("_other",)) == "x"  # only the suffixes asked for count
    assert n.base("y_q", ("_1",)) == "y_q_1"  # 'y_q' + '_1' is taken: stem 'y_q_1' (+ '_1' is free)
    names = Names(set())
    assert names.base("a b", ("",)) == "a_b" and names.base("a b", ("",)) == "a_b_1"
    # a graph that already holds the names QDQ would write gets suffixed ones
    act_q, w_q = _quantizers()
    model = _model()
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0), "in_0_q_scale"))
    model.graph.node.append(helper.make_node("Identity", ["c2"], ["conv_w_dequantized"], name="r_Clip"))
    m = build_qdq(model, _plan(), act_q, w_q)
    onnx.checker.check_model(m)
    assert list(_node(m, "conv").input)[0] == "in_0_1_dequantized"
    assert list(_node(m, "conv").input)[1] == "conv_w_1_dequantized"  # conv_w_dequantized was taken
    assert list(_node(m, "conv2").input)[:2] == ["r_1_dequantized", "conv_w_2_dequantized"]


def test_dropped_initializers_leave_the_graph_inputs_too():
    act_q, w_q = _quantizers()
    m = build_qdq(_model(weight_inputs=True), _plan(), act_q, w_q)
    assert [i.name for i in m.graph.input] == ["in:0", "c2"]
    onnx.checker.check_model(m)
    # nothing dropped: the inputs stay as they were
    m = build_qdq(_model(weight_inputs=True), Plan({}, [], [], [], {}), {}, {})
    assert [i.name for i in m.graph.input] == ["in:0", "conv.w", "conv.b", "c2"]
    assert {i.name for i in m.graph.initializer} == {"conv.w", "conv.b", "c2"}


def test_initializers_read_by_a_subgraph_or_output_are_kept():
    act_q, w_q = _quantizers()
    model = _model()
    then = helper.make_graph([helper.make_node("Identity", ["conv.b"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    els = helper.make_graph([helper.make_node("Neg", ["conv.b"], ["e"])], "else", [],
                            [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["bb"], then_branch=then, else_branch=els))
    model.graph.output.append(helper.make_tensor_value_info("bb", TensorProto.FLOAT, [2]))
    model.graph.output.append(helper.make_tensor_value_info("conv.w", TensorProto.FLOAT, [2, 2, 1, 1]))
    m = build_qdq(model, _plan(), act_q, w_q)
    inits = _inits(m)
    assert "conv.b" in inits and "conv.w" in inits
    onnx.checker.check_model(m)
    outs = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"in:0": X})
    np.testing.assert_array_equal(outs[2], B)
    np.testing.assert_array_equal(outs[3], W)


def test_old_opset_is_converted_not_relabelled():
    act_q, w_q = _quantizers()
    m = build_qdq(_model(opset=11), _plan(), act_q, w_q)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 13)]
    onnx.checker.check_model(m)
    np.testing.assert_allclose(_run(m)[0], _run(build_qdq(_model(), _plan(), act_q, w_q))[0], rtol=1e-6)
    assert [o.version for o in build_qdq(_model(opset=17), _plan(), act_q, w_q).opset_import] == [17]
    assert [o.version for o in build_qdq(_model(opset=13), _plan(), act_q, w_q).opset_import] == [13]
    assert [o.version for o in build_qdq(_model(opset=17), _plan(), act_q, w_q, min_opset=19).opset_import] == [19]
    # the input model is left as it was
    src = _model(opset=11)
    build_qdq(src, _plan(), act_q, w_q)
    assert [o.version for o in src.opset_import] == [11] and len(src.graph.node) == 4


def test_unconvertible_opset_is_refused_with_the_reason():
    act_q, w_q = _quantizers()
    m = _model(opset=11)
    m.graph.node.append(helper.make_node("NoSuchOp", ["c2"], ["z"], name="z"))
    with pytest.raises(ValueError, match=r"opset 11 model: cannot convert it to opset 13, which QDQ with per-channel "
                                         r"weights needs .*; export with opset >= 13"):
        build_qdq(m, _plan(), act_q, w_q)


# ----------------------------------------------------------------------------- more edges
def _ort_quantize_linear(x: np.ndarray, scale: float) -> np.ndarray:
    g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, list(x.shape))],
                          [numpy_helper.from_array(np.float32(scale), "s"), numpy_helper.from_array(np.int8(0), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_weight_codes_match_onnx_quantize_linear_at_rounding_ties():
    """float32 w / s lands on .5 where float64 does not: the stored codes are ORT's (float32) ones."""
    w = np.ascontiguousarray(np.float32([0.35, 0.75, 0.85, 0.95]).reshape(2, 2, 1, 1))
    model = _model()
    for init in model.graph.initializer:
        if init.name == "conv.w":
            init.CopyFrom(numpy_helper.from_array(w, "conv.w"))
    act_q, _ = _quantizers()
    qw = QParams(np.asarray(0.1, np.float32), np.asarray(0, np.int64), 8, True, True, None)
    m = build_qdq(model, _plan(), act_q, {"conv.w": qw})
    codes = _inits(m)["conv_w_quantized"]
    np.testing.assert_array_equal(codes, _ort_quantize_linear(w, 0.1))
    assert codes.ravel().tolist() == [4, 8, 8, 10]


def test_scales_are_written_as_float32_whatever_the_quantizer_holds():
    act_q, w_q = _quantizers()
    qin = act_q["in:0"]
    act_q["in:0"] = QParams(np.asarray(float(qin.scale), np.float64), qin.zero_point, 8, False, False)
    m = build_qdq(_model(), _plan(), act_q, w_q)
    s = _inits(m)["in_0_q_scale"]
    assert s.dtype == np.float32 and s == qin.scale
    onnx.checker.check_model(m)
    assert np.isfinite(_run(m)[0]).all()


def test_a_quantized_tensor_without_consumers_gets_its_pair():
    act_q, w_q = _quantizers()
    act_q["sum"] = params_from_range(-1.0, 4.0, 8, False, False)  # a graph output nothing reads
    m = build_qdq(_model(), _plan(), act_q, w_q)
    onnx.checker.check_model(m)
    assert list(_node(m, "sum_QuantizeLinear").input)[0] == "sum"
    assert [o.name for o in m.graph.output] == ["out", "sum"]


def test_a_layer_without_int32_bias_does_not_stop_the_next_layers():
    act_q, w_q = _quantizers()
    m = build_qdq(_model(), _plan(bias=False), act_q, w_q)
    assert list(_node(m, "conv2").input) == ["r_dequantized", "conv_w_1_dequantized", "conv.b"]
    # a 2-D Gemm C (left float) before a layer whose bias can be int32
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    w2 = np.float32([[1.0, -0.5], [0.25, 2.0]])
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w1", "c1"], ["h"], name="fc1"),
                           helper.make_node("Gemm", ["h", "w2", "c2"], ["y"], name="fc2")], "g", [x], [y],
                          [numpy_helper.from_array(w2, "w1"), numpy_helper.from_array(np.float32([[0.1, 0.2]]), "c1"),
                           numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.float32([0.3, 0.4]), "c2")])
    gm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    qa = params_from_range(-3.0, 3.0, 8, False, False)
    qw = params_from_range(-2.0, 2.0, 8, True, True)
    plan = Plan({}, [WeightSite("fc1", "w1", None, "c1", "x"), WeightSite("fc2", "w2", None, "c2", "h")],
                ["fc1", "fc2"], [], {})
    out = build_qdq(gm, plan, {"x": qa, "h": qa}, {"w1": qw, "w2": qw})
    assert list(_node(out, "fc1").input) == ["x_dequantized", "w1_dequantized", "c1"]
    assert list(_node(out, "fc2").input) == ["h_dequantized", "w2_dequantized", "fc2_bias_dequantized"]


def test_duplicate_named_layers_without_bias_each_get_their_weight():
    act_q, w_q = _quantizers()
    m = build_qdq(_model(names=("dup", "relu", "dup", "add")), _plan(conv="dup", conv2="dup", bias=False), act_q, w_q)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert [c.input[1] for c in convs] == ["conv_w_dequantized", "conv_w_1_dequantized"]
    assert "conv.w" not in _inits(m)


def _baseline_written_names() -> list[str]:
    act_q, w_q = _quantizers()
    src, m = _model(), build_qdq(_model(), _plan(), act_q, w_q)
    before = {n.name for n in src.graph.node} | {o for n in src.graph.node for o in n.output} | \
        {i.name for i in src.graph.initializer}
    after = {n.name for n in m.graph.node} | {o for n in m.graph.node for o in n.output} | \
        {i.name for i in m.graph.initializer}
    return sorted(after - before)


@pytest.mark.parametrize("taken", _baseline_written_names())
def test_every_written_name_is_new_to_the_graph(taken):
    """A graph that already uses a name QDQ export would write (as a node and its output) keeps it:
    the export picks another, and the model still computes the same numbers."""
    act_q, w_q = _quantizers()
    model = _model()
    model.graph.node.append(helper.make_node("Identity", ["c2"], [taken], name=taken))
    model.graph.output.append(helper.make_tensor_value_info(taken, TensorProto.FLOAT, [2, 1, 1]))
    m = build_qdq(model, _plan(), act_q, w_q)
    names = [n.name for n in m.graph.node]
    assert len(names) == len(set(names)), "duplicate node names"
    produced = [o for n in m.graph.node for o in n.output] + [i.name for i in m.graph.initializer]
    assert len(produced) == len(set(produced)), "a tensor defined twice"
    (ident,) = [n for n in m.graph.node if n.op_type == "Identity" and n.name == taken]
    assert list(ident.input) == ["c2"] and list(ident.output) == [taken]
    onnx.checker.check_model(m)
    out = _run(m)
    np.testing.assert_array_equal(out[0], _reference_out())
    np.testing.assert_array_equal(out[2], C2)


@functools.lru_cache(maxsize=1)
def _reference_out() -> np.ndarray:
    act_q, w_q = _quantizers()
    return _run(build_qdq(_model(), _plan(), act_q, w_q))[0]


def test_names_inside_subgraphs_are_taken_too():
    act_q, w_q = _quantizers()
    model = _model()
    body = helper.make_graph([helper.make_node("Identity", ["c2"], ["in_0_q_scale"], name="inner")], "then", [],
                             [helper.make_tensor_value_info("in_0_q_scale", TensorProto.FLOAT, [2, 1, 1])])
    body2 = helper.make_graph([helper.make_node("Identity", ["c2"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 1, 1])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["bb"], then_branch=body, else_branch=body2))
    m = build_qdq(model, _plan(), act_q, w_q)
    assert list(_node(m, "conv").input)[0] == "in_0_1_dequantized"


def test_initializers_read_in_a_graphs_attribute_are_kept():
    act_q, w_q = _quantizers()
    model = _model()
    body = helper.make_graph([helper.make_node("Identity", ["conv.b"], ["t"])], "body", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    node = helper.make_node("Branches", ["c2"], ["z"], domain="custom.ops")
    node.attribute.append(helper.make_attribute("bodies", [body]))
    assert node.attribute[0].type == onnx.AttributeProto.GRAPHS
    model.graph.node.append(node)
    m = build_qdq(model, _plan(), act_q, w_q)
    assert "conv.b" in _inits(m)


def test_clean_keeps_letters_of_both_cases():
    assert Names.clean("MyLayer.W") == "MyLayer_W"
    assert Names.clean("X.a") == "X_a" and Names.clean("_X_") == "X"


def test_opset_of_the_ai_onnx_domain_spelled_out_is_raised_too():
    act_q, w_q = _quantizers()
    src = _model(opset=11)
    src.opset_import[0].domain = "ai.onnx"
    m = build_qdq(src, _plan(), act_q, w_q)
    assert [o.version for o in m.opset_import] == [13]


def test_a_model_without_a_default_domain_opset_is_not_converted():
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])  # noqa: E731
    g = helper.make_graph([helper.make_node("Op", ["x"], ["y"], domain="custom.ops")], "g", [vi("x")], [vi("y")])
    src = helper.make_model(g, opset_imports=[helper.make_opsetid("custom.ops", 1)])
    m = build_qdq(src, Plan({}, [], [], [], {}), {}, {})
    assert [(o.domain, o.version) for o in m.opset_import] == [("custom.ops", 1)]
    assert [n.op_type for n in m.graph.node] == ["Op"]


def test_plan_names_missing_from_the_graph():
    act_q, w_q = _quantizers()
    with pytest.raises(ValueError, match=r"plan: layer 'gone' does not read weight 'conv.w'"):
        build_qdq(_model(), Plan({}, [WeightSite("gone", "conv.w", 0)], ["gone"], [], {}), act_q, w_q)
    # a kept-float layer the graph does not have keeps nothing else float
    m = build_qdq(_model(), _plan(kept=("gone",)), act_q, w_q)
    assert list(_node(m, "add").input) == ["r_dequantized", "c2"]


def test_initializers_read_in_nested_subgraphs_are_kept():
    act_q, w_q = _quantizers()
    model = _model()
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])  # noqa: E731
    inner_then = helper.make_graph([helper.make_node("Identity", ["conv.b"], ["t2"])], "it", [], [vi("t2")])
    inner_else = helper.make_graph([helper.make_node("Neg", ["conv.b"], ["e2"])], "ie", [], [vi("e2")])
    outer_then = helper.make_graph([helper.make_node("If", ["cond"], ["t"], then_branch=inner_then,
                                                     else_branch=inner_else)], "ot", [], [vi("t")])
    outer_else = helper.make_graph([helper.make_node("Identity", ["c2"], ["e"])], "oe", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 1, 1])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["bb"], then_branch=outer_then, else_branch=outer_else))
    m = build_qdq(model, _plan(), act_q, w_q)
    assert "conv.b" in _inits(m)


def test_8bit_activation_reserves_no_clip_names():
    act_q, w_q = _quantizers(r_bits=8)
    model = _model()
    model.graph.node.append(helper.make_node("Identity", ["c2"], ["r_clipped"], name="r_Clip"))
    m = build_qdq(model, _plan(), act_q, w_q)
    assert list(_node(m, "r_QuantizeLinear").input) == ["r", "r_q_scale", "r_q_zero_point"]
