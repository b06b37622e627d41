"""Export parity: the error figures, the pass/fail edges of tol, floor and min_cosine, and the ONNX
Runtime session it runs, on real ONNX files in real ONNX Runtime.

Written against the survivors of mutation testing (benchmarks/mutation.py).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeforge.errors import NotAvailable
from edgeforge.export.parity import ParityResult, check_parity, compare_outputs, has_custom_domain, ort_cpu_session


def _save(tmp_path, nodes, inputs, outputs, name="m.onnx", opsets=(("", 17),)) -> str:
    g = helper.make_graph(nodes, "g", inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = 8
    path = tmp_path / name
    onnx.save(m, str(path))
    return str(path)


@pytest.fixture
def double_and_inc(tmp_path) -> str:
    """Y = 2 X, Z = X + 1 (two outputs), X float32 [4]."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Constant", [], ["c2"], value=two), helper.make_node("Constant", [], ["c1"], value=one),
             helper.make_node("Mul", ["X", "c2"], ["Y"]), helper.make_node("Add", ["X", "c1"], ["Z"])]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [4])  # noqa: E731
    return _save(tmp_path, nodes, [vi("X")], [vi("Y"), vi("Z")])


X = np.float32([1, 2, 3, 4])


# ----------------------------------------------------------------------------- compare_outputs
def test_compare_outputs_figures_over_all_outputs_together():
    err, ref_max, cos = compare_outputs([np.float32([3, 0]), np.float32([[0], [-4]])],
                                        [np.float32([3, 1]), np.float32([[0], [-4]])])
    assert err == 1.0 and ref_max == 4.0
    assert cos == pytest.approx(25 / (5 * math.sqrt(26)), abs=1e-15)


def test_compare_outputs_sizes_nonfinite_and_zero_outputs():
    with pytest.raises(ValueError, match=r"output sizes differ: reference \(3,\), onnx \(2,\)"):
        compare_outputs([np.zeros(3)], [np.zeros(2)])
    err, ref_max, cos = compare_outputs([np.float32([1, -5])], [np.float32([1, np.nan])])
    assert err == float("inf") and ref_max == 5.0 and math.isnan(cos)
    err, ref_max, _ = compare_outputs([np.float32([0.5, -0.25])], [np.float32([np.nan, 0])])
    assert err == float("inf") and ref_max == 0.5  # the reference's own scale, even below 1
    err, _, cos = compare_outputs([np.float32([1, -5])], [np.float32([np.inf, 1])])
    assert err == float("inf") and math.isnan(cos)
    assert compare_outputs([np.zeros(3)], [np.zeros(3)]) == (0.0, 0.0, 1.0)
    assert compare_outputs([np.zeros(2)], [np.float32([0, 1e-3])]) == (pytest.approx(1e-3), 0.0, 0.0)
    assert compare_outputs([np.float32([1, 0])], [np.zeros(2)])[2] == 0.0
    assert compare_outputs([np.float32([])], [np.float32([])]) == (0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- check_parity
def test_identical_outputs_pass_with_exact_figures(double_and_inc):
    r = check_parity(double_and_inc, [{"X": X}, {"X": X + 1}], [[2 * X, X + 1], [2 * X + 2, X + 2]],
                     tol=0.0, floor=1e-6, min_cosine=1.0)
    assert isinstance(r, ParityResult)
    assert (r.max_abs_err, r.max_abs_ref, r.rel_err, r.num_inputs, r.passed) == (0.0, 10.0, 0.0, 2, True)
    assert r.cosine == pytest.approx(1.0, abs=1e-15)
    assert (r.tol, r.floor, r.min_cosine, r.provider) == (0.0, 1e-6, 1.0, "CPUExecutionProvider")
    assert r.to_dict() == {"max_abs_err": 0.0, "max_abs_ref": 10.0, "rel_err": 0.0, "cosine": r.cosine,
                           "num_inputs": 2, "tol": 0.0, "floor": 1e-6, "min_cosine": 1.0, "passed": True,
                           "provider": "CPUExecutionProvider"}


def test_tolerance_edge_is_inclusive(double_and_inc):
    ref = [[np.float64([2, 4, 6, 8.5])]]  # only the first output is compared: refs has one entry
    rel = 0.5 / 8.5
    r = check_parity(double_and_inc, [{"X": X}], ref, tol=rel, floor=1e-6, min_cosine=0.0)
    assert (r.max_abs_err, r.max_abs_ref, r.rel_err, r.passed) == (0.5, 8.5, rel, True)
    r = check_parity(double_and_inc, [{"X": X}], ref, tol=np.nextafter(rel, 0), floor=1e-6, min_cosine=0.0)
    assert not r.passed and r.rel_err == rel


def test_floor_bounds_the_relative_error_of_small_outputs(double_and_inc):
    ref = [[np.float64([2, 4, 6, 8.5])]]
    r = check_parity(double_and_inc, [{"X": X}], ref, tol=0.01, floor=100.0, min_cosine=0.0)
    assert r.rel_err == 0.5 / 100.0 and r.passed and r.floor == 100.0
    r = check_parity(double_and_inc, [{"X": X}], ref, tol=0.01, floor=8.0, min_cosine=0.0)
    assert r.rel_err == 0.5 / 8.5 and not r.passed


def test_min_cosine_edge_is_inclusive(double_and_inc):
    ref = [[np.float64([2, 4, 8, 6])]]  # same magnitudes, two values swapped: cosine < 1
    r = check_parity(double_and_inc, [{"X": X}], ref, tol=1.0, floor=1.0, min_cosine=0.0)
    cos = (4 + 16 + 48 + 48) / 120
    assert r.cosine == pytest.approx(cos, abs=1e-15) and r.passed
    assert check_parity(double_and_inc, [{"X": X}], ref, tol=1.0, floor=1.0, min_cosine=r.cosine).passed
    assert not check_parity(double_and_inc, [{"X": X}], ref, tol=1.0, floor=1.0,
                            min_cosine=np.nextafter(r.cosine, 2)).passed


def test_nonfinite_onnx_output_fails(tmp_path):
    nodes = [helper.make_node("Log", ["X"], ["Y"])]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [4])  # noqa: E731
    path = _save(tmp_path, nodes, [vi("X")], [vi("Y")])
    r = check_parity(path, [{"X": np.float32([1, 1, 1, -1])}], [[np.zeros(4)]], tol=1e9, floor=1.0, min_cosine=-1.0)
    assert r.max_abs_err == float("inf") and not r.passed


# ----------------------------------------------------------------------------- the session
def test_session_threads_and_plain_models(double_and_inc):
    s = ort_cpu_session(double_and_inc, threads=1)
    assert s.get_session_options().intra_op_num_threads == 1
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert ort_cpu_session(double_and_inc).get_session_options().intra_op_num_threads == 0
    y, z = s.run(None, {"X": X})
    assert y.tolist() == [2, 4, 6, 8] and z.tolist() == [2, 3, 4, 5]
    assert not has_custom_domain(double_and_inc)


def test_custom_domain_detection_and_session(tmp_path):
    from edgeforge.ops.native import ort_library_path

    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    node = helper.make_node("LinearScan", ["a", "b"], ["h", "h_last"], domain="edgeforge", reverse=0,
                            plugin_version="1", plugin_namespace="edgeforge")
    path = _save(tmp_path, [node], [vi("a", [1, 4, 2]), vi("b", [1, 4, 2])], [vi("h", [1, 4, 2]), vi("h_last", [1, 2])],
                 opsets=(("", 17), ("edgeforge", 1)))
    assert has_custom_domain(path) and not has_custom_domain(path, "com.microsoft")
    ms = helper.make_node("Gelu", ["a"], ["h"], domain="com.microsoft")
    ms_path = _save(tmp_path, [ms], [vi("a", [2])], [vi("h", [2])], name="ms.onnx",
                    opsets=(("", 17), ("com.microsoft", 1)))
    assert has_custom_domain(ms_path, "com.microsoft") and not has_custom_domain(ms_path)
    if ort_library_path() is None:
        with pytest.raises(NotAvailable, match=r"edgeforge:: custom ops; ONNX Runtime needs the edgeforge kernel "
                                               r"library: run `edgeforge plugins build`"):
            ort_cpu_session(path)
    else:
        s = ort_cpu_session(path)  # the custom-op library is registered: the session builds
        assert [o.name for o in s.get_outputs()] == ["h", "h_last"]


def test_figures_are_computed_in_float64_for_huge_float32_outputs():
    """A randomly initialised model can output ~1e20: products overflow float32, not float64."""
    big = np.float32([1e20, -3e20, 2e20])
    err, ref_max, cos = compare_outputs([big], [big])
    assert err == 0.0 and ref_max == pytest.approx(3e20) and cos == pytest.approx(1.0, abs=1e-12)
    err, _, cos = compare_outputs([big], [big * np.float32(1.5)])
    assert err == pytest.approx(1.5e20, rel=1e-6) and cos == pytest.approx(1.0, abs=1e-12)


def test_custom_domain_check_does_not_read_external_weights(tmp_path):
    """The check reads the graph only: a multi-GB model's external data is never loaded for it."""
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "big.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="big.data",
              size_threshold=0)
    (tmp_path / "big.data").unlink()  # were it read, this would fail
    assert has_custom_domain(path) is False

