"""The QDQ writer on graph shapes the recipes' exports rarely produce, and on both forms of a real
export (the unslimmed TorchScript graph, which shares equal initializers between layers, and
onnxslim's): every name written is unique, onnx.checker passes, and ONNX Runtime (full
optimisation and none) and OpenVINO run the result and agree with the FP32 model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeforge.quant.calibrate import session
from edgeforge.quant.engine import quantize_onnx
from edgeforge.quant.quantizers import cosine
from edgeforge.quant.scheme import resolve

RNG = np.random.default_rng(0)


def _w(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.normal(size=shape) * scale).astype(np.float32), name)


def _model(nodes, inits, inp="x", shape=(1, 4, 8, 8), outs=(("y", None),), opset=17, ir=None):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(inp, TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    if ir is not None:
        m.ir_version = ir
    m = onnx.shape_inference.infer_shapes(m)  # output shapes (full_check wants them)
    del m.graph.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    return m


def _run(model: onnx.ModelProto, x: np.ndarray, optimize: str) -> list[np.ndarray]:
    s = session(model, optimize=optimize)
    name = s.get_inputs()[0].name
    return [np.concatenate(v) for v in zip(*(s.run(None, {name: x[i:i + 1]}) for i in range(len(x))))]


def _run_openvino(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    c = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU")
    outs = [c(x[i:i + 1]) for i in range(len(x))]
    return [np.concatenate([o[k] for o in outs]) for k in range(len(c.outputs))]


def check_quantizes(model: onnx.ModelProto, shape=(4, 8, 8), keep_fp=(), min_cos=0.99):
    """Quantize for ONNX Runtime and OpenVINO; check names, validity and agreement with FP32."""
    x = RNG.normal(size=(10, *shape)).astype(np.float32)
    ref = _run(model, x, "disable")
    qs = {}
    for target in ("cpu-ort", "cpu-openvino"):
        q = quantize_onnx(model, x[:6], "minmax", resolve("w8a8", target), keep_fp=list(keep_fp),
                          show_progress=False)
        m = q.model
        onnx.checker.check_model(m, full_check=True)
        g = m.graph
        names = Counter(n.name for n in g.node)
        assert all(names[k] == 1 for k in names), [k for k, c in names.items() if c > 1]
        produced = Counter([o for n in g.node for o in n.output] + [i.name for i in g.initializer] +
                           [i.name for i in g.input])
        assert all(c == 1 for c in produced.values()), [k for k, c in produced.items() if c > 1]
        runs = {"ort-all": _run(m, x, "all"), "ort-none": _run(m, x, "disable")}
        if target == "cpu-openvino":
            runs = {"openvino": _run_openvino(m, x)}
        for how, outs in runs.items():
            for r, o in zip(ref, outs):
                assert o.shape == r.shape
                assert cosine(r, o) > min_cos, (target, how, cosine(r, o))
        qs[target] = q
    return qs["cpu-ort"]


def _qdq_count(m: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))


def test_weight_and_bias_shared_by_two_convs_with_different_input_scales():
    # the failure in the field: `onnx::Conv_2730` feeds two Conv nodes (the TorchScript exporter
    # dedups equal initializers), here with inputs of very different ranges
    nodes = [helper.make_node("Conv", ["x", "onnx::Conv_2730", "b"], ["c1"], pads=[1] * 4, name="/c1/Conv"),
             helper.make_node("Relu", ["c1"], ["r1"], name="/r1/Relu"),
             helper.make_node("Mul", ["r1", "k"], ["r1s"], name="/mul/Mul"),
             helper.make_node("Conv", ["r1s", "onnx::Conv_2730", "b"], ["c2"], pads=[1] * 4, name="/c2/Conv"),
             helper.make_node("Conv", ["c2", "onnx::Conv_2730"], ["y"], pads=[1] * 4, name="/c3/Conv")]
    m = _model(nodes, [_w("onnx::Conv_2730", 4, 4, 3, 3), _w("b", 4), numpy_helper.from_array(
        np.float32(8.0), "k")])
    q = check_quantizes(m)
    g = q.model.graph
    inits = {i.name: i for i in g.initializer}
    int8 = [n for n, i in inits.items() if i.data_type == TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8) == 1  # the shared weight is stored once ...
    w_dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in int8]
    assert len(w_dq) == 3  # ... with a DequantizeLinear per layer
    biases = [i for i in g.initializer if i.name.endswith("_bias_quantized")]
    assert len(biases) == 2  # the shared bias: one int32 copy per layer (input scales differ)
    assert not np.array_equal(numpy_helper.to_array(biases[0]), numpy_helper.to_array(biases[1]))
    assert "onnx::Conv_2730" not in inits and "b" not in inits  # no float copy left


def test_weight_shared_by_gemms_and_matmuls():
    nodes = [helper.make_node("Gemm", ["x", "W", "gb"], ["g1"], transB=1, name="g1"),
             helper.make_node("Relu", ["g1"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W", "gb"], ["g2"], transB=1, name="g2"),
             helper.make_node("MatMul", ["g2", "M"], ["m1"], name="m1"),
             helper.make_node("Tanh", ["m1"], ["t"], name="tanh"),
             helper.make_node("MatMul", ["t", "M"], ["y"], name="m2")]
    m = _model(nodes, [_w("W", 8, 8), _w("gb", 8), _w("M", 8, 8)], shape=(1, 8))
    q = check_quantizes(m, shape=(8,))
    assert _qdq_count(q.model)["DequantizeLinear"] >= 4 + 2 + len(q.act_q)


def test_initializer_read_as_weight_and_as_add_operand():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "W"], ["a"], name="add"),  # W as a plain operand
             helper.make_node("Relu", ["a"], ["y"], name="relu")]
    m = _model(nodes, [_w("W", 8, 8)], shape=(1, 8, 8))
    q = check_quantizes(m, shape=(8, 8))
    g = q.model.graph
    add = next(n for n in g.node if n.op_type == "Add")
    assert "W" in add.input and "W" in {i.name for i in g.initializer}  # the Add still reads float W
    mm = next(n for n in g.node if n.op_type == "MatMul")
    assert "W" not in mm.input


def test_activation_feeding_quantized_and_kept_layers_and_conv_outputs_as_graph_outputs():
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="/q/Conv"),
             helper.make_node("Conv", ["x", "w2", "b2"], ["y2"], pads=[1] * 4, name="/kept/Conv"),
             helper.make_node("Conv", ["c1", "w3"], ["y"], name="/out/Conv")]
    m = _model(nodes, [_w("w1", 4, 4, 3, 3), _w("b1", 4), _w("w2", 4, 4, 3, 3), _w("b2", 4),
                       _w("w3", 4, 4, 1, 1)], outs=(("y", None), ("y2", None), ("c1", None)))
    q = check_quantizes(m, keep_fp=["/kept/Conv"])
    g = q.model.graph
    kept = next(n for n in g.node if n.name == "/kept/Conv")
    assert kept.input[0] == "x" and kept.input[1] == "w2"  # float input and weight
    quant = next(n for n in g.node if n.name == "/q/Conv")
    assert quant.input[0] != "x"  # the graph input reaches the quantized Conv through Q/DQ
    assert [o.name for o in g.output] == ["y", "y2", "c1"]


def test_odd_names_unnamed_nodes_and_name_clashes():
    # ':' and '.' in names, no node names at all, and stems that sanitise to the same string as
    # each other and as tensors already in the graph
    nodes = [helper.make_node("Conv", ["input:0", "model.conv.weight", "model.conv.bias"], ["a/b"], pads=[1] * 4),
             helper.make_node("Relu", ["a/b"], ["a_b"]),
             helper.make_node("Conv", ["a_b", "model.conv.weight"], ["a:b"], pads=[1] * 4),
             helper.make_node("Add", ["a:b", "a/b"], ["a_b_quantized"]),
             helper.make_node("Conv", ["a_b_quantized", "model_conv_weight"], ["out:0"])]
    m = _model(nodes, [_w("model.conv.weight", 4, 4, 3, 3), _w("model.conv.bias", 4),
                       _w("model_conv_weight", 4, 4, 1, 1)], inp="input:0", outs=(("out:0", None),))
    q = check_quantizes(m)
    assert len(q.plan.layers) == 3


def test_ir3_model_listing_initializers_as_inputs():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4, name="c1"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["y"], pads=[1] * 4, name="c2")]
    m = _model(nodes, [_w("w", 4, 4, 3, 3), _w("b", 4)])
    for i in m.graph.initializer:  # old exporters list every initializer as a graph input too
        m.graph.input.append(helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)))
    q = check_quantizes(m)
    assert [i.name for i in q.model.graph.input] == ["x"]  # dropped float weights left the inputs


def test_opset_11_model_is_converted_not_relabelled():
    # Squeeze takes `axes` as an attribute before opset 13 and as an input from 13: per-channel
    # DequantizeLinear needs 13, so the writer converts the model rather than bump the number
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Squeeze", ["r"], ["s"], axes=[2, 3], name="sq"),
             helper.make_node("Gemm", ["s", "fc"], ["y"], transB=1, name="fc")]
    m = _model(nodes, [_w("w", 4, 4, 8, 8), _w("b", 4), _w("fc", 3, 4)], opset=11)
    q = check_quantizes(m)
    assert next(o.version for o in q.model.opset_import if o.domain in ("", "ai.onnx")) >= 13


# ---------------------------------------------------------------- real exports, both forms
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
# timm's RegNetX zero-initialises each block's last BN: folded into the convs at export, equal
# all-zero weights that the TorchScript exporter dedups into one initializer read by several
# Conv nodes in its unslimmed graph (onnxslim's graph has none): the field failure's shape.
REGNET = """family: regnet_shared
description: timm RegNetX-200MF, random init, 64x64, 10 classes (shared initializers when unslimmed)
input: {shape: [3, 64, 64]}
builder: timm:regnetx_002
builder_args: {num_classes: 10}
export: {opset: 17, batch: 1, transforms: []}
"""


def _export(recipe, out, slim: bool, monkeypatch, weights=None):
    """`edgeforge export` as the field ran it: slimmed, or unslimmed (ORT timed onnxslim's slower)."""
    from edgeforge.export import pipeline
    from edgeforge.export.simplify import SimplifyResult

    if not slim:
        n = lambda m: len(m.graph.node)  # noqa: E731
        monkeypatch.setattr(pipeline, "simplify", lambda raw, *a, **k: (raw, SimplifyResult(
            False, n(raw), n(raw), reason="test: the unslimmed graph, as when ORT times onnxslim's slower")))
    res = pipeline.export_recipe(recipe, out_dir=out, weights=weights, custom_ops="decompose",
                                 check_simplify_latency=False)
    monkeypatch.undo()
    assert res.entry["onnx"]["simplify"]["applied"] is slim
    return res


def _shared_weights(m: onnx.ModelProto) -> int:
    from edgeforge.quant.engine import prepare

    p, _ = prepare(m)
    inits = {i.name for i in p.graph.initializer}
    c = Counter(n.input[1] for n in p.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits)
    return sum(1 for v in c.values() if v > 1)


@pytest.mark.parametrize("slim", [False, True], ids=["unslimmed", "slimmed"])
def test_real_export_with_shared_conv_weights_quantizes_via_the_cli(run_cli, tmp_path, monkeypatch, slim):
    recipe = tmp_path / "regnet.yaml"
    recipe.write_text(REGNET)
    art = tmp_path / "art"
    res = _export(str(recipe), art, slim, monkeypatch)
    m = onnx.load(str(res.onnx_path))
    if not slim:
        assert _shared_weights(m) >= 2  # the shape that crashed
    code, out, err = run_cli("quantize", art, "--calib", "natural", "--num-samples", "8", "--no-analysis")
    assert code == 0, err + out
    qpath = art / "int8-minmax" / "model.onnx"
    q = onnx.load(str(qpath))
    onnx.checker.check_model(q, full_check=True)
    assert len({n.name for n in q.graph.node}) == len(q.graph.node)
    x = RNG.normal(size=(4, 3, 64, 64)).astype(np.float32)
    ref = _run(m, x, "disable")[0]
    for outs in (_run(q, x, "all"), _run(q, x, "disable")):
        assert cosine(ref, outs[0]) > 0.98
    qjson = __import__("json").loads((art / "int8-minmax" / "quant.json").read_text())
    assert "agreement_torch_sim_ort" in qjson["accuracy"] or qjson["accuracy"]["torch_sim"].startswith("not run")


@pytest.mark.parametrize("slim", [False, True], ids=["unslimmed", "slimmed"])
def test_trained_fixture_both_forms_keep_accuracy_in_ort_and_openvino(tmp_path, monkeypatch, slim):
    import json

    from edgeforge import recipes
    from edgeforge.data.calib import CalibDef, Source, load_calib

    meta_path = ROOT / "fixtures" / "efficientformer_v2_digits.json"
    if not meta_path.is_file():
        pytest.skip("fixture not trained: run scripts/train_fixtures.py")
    meta = json.loads(meta_path.read_text())
    recipe = recipes.load(str(ROOT / meta["recipe"]))
    res = _export(recipe, tmp_path / "art", slim, monkeypatch, weights=str(ROOT / meta["weights"]))
    m = onnx.load(str(res.onnx_path))
    spec = recipe.spec.input
    calib = load_calib("digits", spec, 16)
    ev = load_calib(CalibDef(name="digits-eval", source=Source(kind="digits", split="eval"), count=100), spec)
    fp = _run(m, ev.x, "disable")[0].argmax(-1)
    for target in ("cpu-ort", "cpu-openvino"):
        q = quantize_onnx(m, calib.x, "minmax", resolve("w8a8", target), show_progress=False).model
        onnx.checker.check_model(q, full_check=True)
        runs = [_run(q, ev.x, "disable")[0]] + ([_run(q, ev.x, "all")[0]] if target == "cpu-ort"
                                                else [_run_openvino(q, ev.x)[0]])
        for o in runs:
            # FP32 vs INT8 top-1 agreement: quantization error, not a broken graph (which gives ~0.1)
            assert float((o.argmax(-1) == fp).mean()) >= 0.9, target


# ---------------------------------------------------------------- the optional torch simulation
def test_simulation_of_shared_layers_and_parents_reading_a_layer_weight():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from edgeforge.quant.torch_sim import quantize

    class Shared(nn.Module):  # one Conv called twice
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 3, 3, padding=1), nn.Linear(3, 4)

        def forward(self, x):
            return self.head(self.conv(torch.relu(self.conv(x))).mean((2, 3)))

    class ReadsWeight(Shared):  # the parent reads self.conv.weight itself
        def forward(self, x):
            return self.head((self.conv(x) + F.conv2d(x, self.conv.weight, None, padding=1)).mean((2, 3)))

    x = RNG.normal(size=(4, 3, 8, 8)).astype(np.float32)
    for cls in (Shared, ReadsWeight):
        torch.manual_seed(0)
        model = cls().eval()
        sim = quantize(model, x, "minmax")  # raised 'QuantWeight' object has no attribute 'weight'
        assert len(sim.weight_quantizers) == 2  # conv (once, though called twice) and head
        with torch.no_grad():
            assert cosine(model(torch.from_numpy(x)).numpy(), sim(torch.from_numpy(x)).numpy()) > 0.98


def test_a_simulation_that_cannot_run_says_why_and_the_quantization_finishes(tmp_path, monkeypatch):
    import json

    from test_quant_support import make_artifact, tiny_model

    from edgeforge.quant import pipeline, torch_sim
    from edgeforge.quant.pipeline import quantize_artifact

    def broken(*a, **k):
        raise AttributeError("'QuantWeight' object has no attribute 'weight'")

    monkeypatch.setattr(pipeline, "torch_model_for", lambda exp: tiny_model())
    monkeypatch.setattr(torch_sim, "quantize", broken)
    art = make_artifact(tmp_path / "art")
    res = quantize_artifact(art, num_samples=4, analyze=False, show_progress=False)
    acc = json.loads(res.quant_json.read_text())["accuracy"]
    assert acc["torch_sim"] == ("not run: the torch simulation raised AttributeError: "
                                "'QuantWeight' object has no attribute 'weight'")
    assert res.onnx_path.is_file() and "agreement_fp32_int8" in acc
