"""`edgeforge quantize --max-drop X`: accuracy-budgeted mixed precision (edgeforge.quant.mixed_precision)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from test_quant_support import INPUT, make_artifact

from edgeforge.artifacts import Manifest
from edgeforge.errors import BadInput
from edgeforge.quant import methods as qmethods
from edgeforge.quant import mixed_precision as mp

def _top1_points(model, ev) -> float:
    from edgeforge.quant.calibrate import run_outputs

    out = run_outputs(model, ev.x, ["logits"], optimize="all")["logits"]
    return 100.0 * (float((out.argmax(-1) == ev.labels).mean()))


def _weight_is_float(model: onnx.ModelProto, node_name: str) -> bool:
    inits = {i.name for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    return node.input[1] in inits  # a float initializer, not a DequantizeLinear output


def test_harsh_budget_keeps_fewest_layers(trained):
    """w4a4 costs points of top-1 on the trained digits fixture; --max-drop 0.5 leaves the fewest
    most sensitive layers in float: the model returned is within budget, without its last kept
    layer (quantized again from scratch with --keep-fp) it is not."""
    from edgeforge.quant.engine import quantize_onnx
    from edgeforge.quant.scheme import resolve

    _, fp32_path, calib, ev = trained  # 32 calibration digits, 200 labelled held-out digits
    fp32 = onnx.load(fp32_path)
    scheme = resolve("w4a4", method="mse")
    q = quantize_onnx(fp32, calib.x, "mse", scheme, show_progress=False)
    res = mp.choose(mp.edgeforge_rebuilder(q, [], False), fp32, ev, 0.5, export_entry={}, show_progress=False)
    rep = res.report
    assert rep["metric"] == "top1" and rep["eval_count"] == len(ev.x) and rep["met"] is True
    assert rep["int8_value"] > 1.0  # measured 4.8 points on the 500 digits of the pipeline's split (AMD EPYC)
    kept = [k["layer"] for k in rep["kept_fp"]]
    assert kept == res.kept and 1 <= len(kept) < rep["candidates"]
    assert rep["final_value"] <= 0.5
    # the search's own record: k within budget, k - 1 over, layers added in ranking order
    assert rep["verified"]["k"] == len(kept) and rep["verified"]["k_minus_1_value"] > 0.5
    by_k = {s["float_layers"]: s for s in rep["steps"]}
    assert by_k[len(kept)]["within_budget"] and not by_k[len(kept) - 1]["within_budget"]
    ranking = [r["layer"] for r in rep["ranking"]]
    assert kept == ranking[:len(kept)] and sorted(ranking) == sorted(q.plan.layers)
    assert all(s["added"] == ranking[s["float_layers"] - 1] for s in rep["steps"][1:])
    # the model returned: kept layers float, its drop measured again is the one recorded
    assert sorted(res.built.plan.kept_fp) == sorted(kept)
    assert all(_weight_is_float(res.model, k) for k in kept if k.endswith(("/Conv", "/Gemm")))
    fp32_acc = _top1_points(fp32, ev)
    drop = fp32_acc - _top1_points(res.model, ev)
    assert drop == pytest.approx(rep["final_value"], abs=1e-6) and drop <= 0.5
    # independently: `--keep-fp` of all but the last layer added, recalibrated from scratch, is over budget
    fewer = quantize_onnx(fp32, calib.x, "mse", scheme, keep_fp=kept[:-1], show_progress=False)
    assert fp32_acc - _top1_points(fewer.model, ev) > 0.5
    lat = rep["latency"]
    assert lat["int8_p50_ms"] > 0 and lat["mixed_p50_ms"] > 0 and lat["threads"] == 1


def test_in_budget_keeps_none(tmp_path, run_cli):
    art = make_artifact(tmp_path / "art")
    args = ("quantize", art, "--calib", "natural", "--num-samples", "8", "--method", "minmax", "--max-drop", "0.5",
            "--no-analysis", "--no-sim")
    code, out, err = run_cli(*args)
    assert code == 0, err
    q = json.loads((art / "int8-minmax-maxdrop0.5" / "quant.json").read_text())
    m = q["mixed_precision"]
    assert m["metric"] == "agreement" and m["met"] and m["kept_fp"] == [] and len(m["steps"]) == 1
    assert m["ranking"] == [] and m["int8_value"] <= 0.5
    assert "mixed precision: --max-drop 0.5" in out and "none (all INT8" in out
    assert "int8-minmax" not in Manifest(art).steps  # the plain step is another folder
    assert Manifest(art).step("int8-minmax-maxdrop0.5")["mixed_precision"]["kept_fp"] == []
    code, out, _ = run_cli(*args)
    assert code == 0 and "up to date" in out and "mixed precision" in out


def test_cli_shows_kept_layers_composes_with_keep_fp_and_ort(tmp_path, run_cli):
    art = make_artifact(tmp_path / "art")
    base = ("quantize", art, "--calib", "natural", "--num-samples", "8", "--no-analysis", "--no-sim")
    code, out, err = run_cli(*base, "--method", "minmax", "--bits", "w4a4", "--max-drop", "0.5",
                             "--max-drop-metric", "cosine")
    assert code == 0, err
    q = json.loads((art / "int8-minmax-w4a4-maxdrop0.5-cosine" / "quant.json").read_text())["mixed_precision"]
    assert q["metric"] == "cosine" and q["int8_value"] > 0.5 and q["met"] and q["final_value"] <= 0.5
    assert q["kept_fp"] and "layers kept in float" in out
    assert all(k["module"] in out for k in q["kept_fp"])
    assert "latency p50" in out and q["latency"]["int8_p50_ms"] > 0 and q["latency"]["mixed_p50_ms"] > 0
    # --keep-fp composes: the user's layer is float and not a candidate
    first = q["kept_fp"][0]["module"]
    code, out, err = run_cli(*base, "--method", "minmax", "--bits", "w4a4", "--max-drop", "0.5",
                             "--max-drop-metric", "cosine", "--keep-fp", first, "--force")
    assert code == 0, err
    q2 = json.loads((art / "int8-minmax-w4a4-maxdrop0.5-cosine" / "quant.json").read_text())
    assert q2["mixed_precision"]["user_keep_fp"] == [first]
    assert first not in [r["module"] for r in q2["mixed_precision"]["ranking"]]
    assert q2["mixed_precision"]["candidates"] == q["candidates"] - 1
    # ONNX Runtime's quantize_static composes too (layers floated by surgery on its QDQ model); a
    # zero cosine budget cannot be met (its quantized Add/pool remain): everything in float, exit 1
    code, out, err = run_cli(*base, "--method", "ort", "--max-drop", "0", "--max-drop-metric", "cosine")
    assert code == 1 and "not met" in err
    qo = json.loads((art / "int8-ort-maxdrop0-cosine" / "quant.json").read_text())["mixed_precision"]
    assert not qo["met"] and len(qo["kept_fp"]) == qo["candidates"] > 0 and qo["final_value"] < qo["int8_value"]
    model = onnx.load(str(art / "int8-ort-maxdrop0-cosine" / "model.onnx"))
    assert all(_weight_is_float(model, k["layer"]) for k in qo["kept_fp"] if k["op"] in ("Conv", "Gemm"))


def test_bad_input_exits_2(tmp_path, run_cli):
    art = make_artifact(tmp_path / "art")
    base = ("quantize", art, "--calib", "natural", "--num-samples", "4", "--no-analysis", "--no-sim")
    for bad in ("-1", "nan", "abc"):
        code, _, err = run_cli(*base, "--max-drop", bad)
        assert code == 2 and "--max-drop" in err, (bad, err)
    code, _, err = run_cli(*base, "--max-drop", "0.5", "--max-drop-metric", "top1")
    assert code == 2 and "labelled" in err
    assert sorted(p.name for p in art.iterdir() if not p.name.startswith(".")) == ["fp32", "manifest.json"]
    from edgeforge.quant.pipeline import quantize_artifact

    with pytest.raises(BadInput, match="max-drop"):
        quantize_artifact(art, calib="natural", max_drop=-0.1)
    with pytest.raises(BadInput, match="max-drop-metric"):
        mp.check_max_drop(0.5, "sqnr")


@pytest.mark.parametrize("method", [m for m in qmethods.names() if qmethods.get(m).engine == "edgeforge"])
def test_every_method_rebuilds_from_its_quantizers(method):
    """For each registered method: nothing in float rebuilds the method's own model, and the
    search keeps layers float in the model it returns (no recalibration per candidate)."""
    from edgeforge.data.preprocess import Preprocess
    from edgeforge.quant.engine import quantize_onnx
    from edgeforge.quant.pipeline import eval_split
    from edgeforge.quant.scheme import resolve
    from test_quant_support import calib_x, export_onnx, tiny_model

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as td:
        path = export_onnx(tiny_model(), Path(td) / "m.onnx")
        fp32 = onnx.load(str(path))
    x = calib_x(8)
    q = quantize_onnx(fp32, x, method, resolve("w4a4", method=method), show_progress=False)
    rb = mp.edgeforge_rebuilder(q, [], False)
    assert rb.build([]) is q and rb.layers == q.plan.layers
    ev = eval_split("natural", Preprocess(3, 32, 32, tuple(INPUT["mean"]), tuple(INPUT["std"])), count=8)
    res = mp.choose(rb, fp32, ev, 0.0, "cosine", show_progress=False, measure_latency=False)
    rep = res.report
    assert rep["steps"][0]["float_layers"] == 0 and rep["kept_fp"]
    assert sorted(res.built.plan.kept_fp) == sorted(res.kept) and set(res.built.plan.layers).isdisjoint(res.kept)
    assert all(_weight_is_float(res.model, k) for k in res.kept if rb.op_types[k] in ("Conv", "Gemm"))
    assert rep["final_value"] <= rep["int8_value"] + 1e-9


def test_metric_definitions():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0], [2.0, 1.0, 0.0]])
    out = ref.copy()
    out[1] = [2.5, 2.0, 1.0]  # one flip
    labels = np.array([0, 1, 0, 0])  # fp32 right on 3 of 4, quantized on 2
    assert mp.metric_value("top1", ref, out, labels) == pytest.approx(25.0)
    assert mp.metric_value("agreement", ref, out, None) == pytest.approx(25.0)
    cos = (ref[1] @ out[1]) / np.linalg.norm(ref[1]) / np.linalg.norm(out[1])
    assert mp.metric_value("cosine", ref, out, None) == pytest.approx(100 * (1 - cos) / 4)
    emb = {"resolved_recipe": {"builder_args": {"num_classes": 0}}}
    assert mp.resolve_metric("auto", None, emb, ref)[0] == "cosine"
    assert mp.resolve_metric("auto", None, {}, ref)[0] == "agreement"
    assert mp.resolve_metric("auto", labels, emb, ref)[0] == "top1"
    assert mp.step_suffix(0.5) == "-maxdrop0.5" and mp.step_suffix(1.0, "cosine") == "-maxdrop1-cosine"


def test_target_kernels():
    """The budget is measured with the target's runtime: OpenVINO for cpu-openvino (when installed),
    ONNX Runtime otherwise, and a runtime that does not run here says so."""
    assert mp.TargetKernels("onnxruntime").runtime == "onnxruntime"
    trt = mp.TargetKernels("tensorrt")
    assert trt.runtime == "onnxruntime" and "tensorrt" in trt.note
    try:
        import openvino  # noqa: F401
    except ImportError:
        assert "OpenVINO is not installed" in mp.TargetKernels("openvino").note
    else:
        assert mp.TargetKernels("openvino").runtime == "openvino"
