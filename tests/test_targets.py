"""Target profiles: every required profile loads with sourced figures; reachability says why not;
INT8 models are checked against a target's quantization constraints."""

from __future__ import annotations

import pytest

from edgeforge import targets
from edgeforge.errors import BadInput
from edgeforge.targets.constraints import summarize_qdq, violations

REQUIRED = {"cpu-ort", "cpu-openvino", "jetson-orin-nano", "jetson-agx-orin", "gpu-tensorrt", "apple-ane", "rpi5-ort"}


def test_required_profiles_load_with_sourced_peaks():
    loaded = {t.name: t for t in targets.all_targets()}
    assert REQUIRED <= set(loaded)
    for t in loaded.values():
        assert t.precisions and t.runtime and t.description
        assert t.quantization.quantizers, t.name
        peak = t.peak_figures()
        assert peak.source, t.name
        if t.peak.estimate is None:
            assert peak.fp32_gflops or peak.fp16_gflops, t.name
            assert peak.memory_bandwidth_gbs, t.name
        if t.reach.kind == "agent":
            assert t.reach.url_env, t.name
    assert targets.DEFAULT_TARGET == "cpu-ort" and loaded["cpu-ort"].reach.kind == "local"
    assert loaded["gpu-tensorrt"].quantization.symmetric_only
    assert loaded["jetson-orin-nano"].quantization.activation_dtype == "int8"


def test_runtime_options_per_precision():
    t = targets.load("jetson-orin-nano")
    assert t.runtime_options("int8-qhyvit")["precision"] == "int8"
    assert t.runtime_options("fp16")["precision"] == "fp16"
    assert targets.load("cpu-openvino").runtime_options("int8-minmax")["precision_hint"] == "f32"
    with pytest.raises(BadInput, match="offers precisions"):
        targets.load("cpu-ort").runtime_options("fp16")
    with pytest.raises(BadInput, match="int8-<method>"):
        targets.precision_family("int4")


def test_bad_profiles_name_the_field(tmp_path):
    with pytest.raises(BadInput, match="unknown target 'nope'; known targets: .*cpu-ort"):
        targets.load("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("description: x\nruntime: tflite\nprecisions: [fp32]\n")
    with pytest.raises(BadInput, match=r"bad.yaml: runtime: "):
        targets.load(bad)
    unsourced = tmp_path / "unsourced.yaml"
    unsourced.write_text("description: x\nruntime: onnxruntime\nprecisions: [fp32]\npeak: {fp32_gflops: 10}\n")
    with pytest.raises(BadInput, match="source"):
        targets.load(unsourced)


def test_reachability_says_why(monkeypatch):
    ok, how = targets.reachability(targets.load("cpu-ort"))
    assert ok and how == "local"
    monkeypatch.delenv("EDGEFORGE_AGENT_JETSON_ORIN_NANO", raising=False)
    ok, why = targets.reachability(targets.load("jetson-orin-nano"))
    assert not ok and "EDGEFORGE_AGENT_JETSON_ORIN_NANO" in why and "--device" in why
    ok, why = targets.reachability(targets.load("jetson-orin-nano"), device_url="http://127.0.0.1:9")
    assert not ok and "unreachable" in why
    # a local target is reachable exactly when its runtime imports here, and says why not otherwise
    from edgeforge.errors import NotAvailable
    from edgeforge.runtimes.tensorrt import import_tensorrt

    try:
        import_tensorrt()
        expected = (True, "local")
    except NotAvailable as e:
        expected = (False, str(e))
        assert "TensorRT" in str(e) or "CUDA" in str(e)
    assert targets.reachability(targets.load("gpu-tensorrt")) == expected


def test_host_peak_estimate_is_labelled(monkeypatch):
    from edgeforge.targets import host
    from edgeforge.targets.host import host_peak

    p = host_peak()
    assert p.estimate == "host" and ("estimate for this host" in p.source or "not estimated" in p.source)
    if p.fp32_gflops:
        assert p.int8_gops >= p.fp32_gflops and f"{host.cpu_count()} usable cores" in p.source
    # a host whose clock is unknown gets no numbers, only the reason, still labelled as the host's
    monkeypatch.setattr(host, "_max_ghz", lambda: None)
    p = host_peak()
    assert p.estimate == "host" and "not estimated" in p.source
    assert p.fp32_gflops is None and p.int8_gops is None


def test_qdq_constraints(tiny_art):
    trt = targets.load("gpu-tensorrt").quantization
    ort = targets.load("cpu-ort").quantization
    asym = summarize_qdq(tiny_art / "int8-ort" / "model.onnx")
    assert asym.weights and asym.weights_per_channel == asym.weights
    assert asym.activation_dtypes == ["uint8"] and asym.asymmetric_tensors
    problems = violations(asym, trt)
    assert any("symmetric-only" in p for p in problems) and any("int8 activations" in p for p in problems)
    assert violations(asym, ort) == []
    sym = summarize_qdq(tiny_art / "int8-ortsym" / "model.onnx")
    assert sym.activation_dtypes == ["int8"] and not sym.asymmetric_tensors
    assert violations(sym, trt) == []
    fp32 = summarize_qdq(tiny_art / "fp32" / "model.onnx")
    assert "not an INT8 QDQ model" in violations(fp32, ort)[0]


def test_targets_cli(run_cli, monkeypatch):
    monkeypatch.delenv("EDGEFORGE_AGENT_RPI5", raising=False)
    code, out, _ = run_cli("targets")
    assert code == 0
    # each target's row says in its last column whether it is reachable, as reachability() decides
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] and cells[1] not in rows:
            rows[cells[1]] = cells[-2]
    assert REQUIRED <= set(rows), out
    for name in REQUIRED:
        ok, _ = targets.reachability(targets.load(name))
        assert rows[name].startswith("yes" if ok else "no"), (name, rows[name])
    assert rows["cpu-ort"].startswith("yes") and rows["rpi5-ort"].startswith("no")


def test_uint8_zero_point_128_counts_as_symmetric(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp128"),
             numpy_helper.from_array(np.array(3, np.uint8), "zp3")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp128"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s", "zp128"], ["y1"]),
             helper.make_node("QuantizeLinear", ["y1", "s", "zp3"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s", "zp3"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "q.onnx"))
    s = summarize_qdq(tmp_path / "q.onnx")
    assert s.activations == 2 and s.activation_dtypes == ["uint8"]
    assert set(s.asymmetric_tensors) == {"y1", "q2"}  # only the zero-point-3 pair
