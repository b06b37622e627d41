"""LinearScan parity over every implementation present (torch reference first), property-based
cases, and bad-input errors. fp32 tolerance: 1e-5 relative to the output's scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeforge.ops import OpInputError, build, native
from edgeforge.ops import implementations as impls

TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def native_build():
    # No-op (about a second) once `make plugins` or an earlier test module has built it.
    return build.build(fetch=False)


def _case(B, T, C, seed, lo=0.5, hi=1.0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(lo, hi, (B, T, C)).astype(np.float32), rng.normal(size=(B, T, C)).astype(np.float32),
            rng.normal(size=(B, C)).astype(np.float32))


# (B, T, C, reverse, with_h0): T = 1, short, T = 64 at the benchmark width, long T, odd sizes.
CASES = [(1, 1, 4, False, False), (2, 1, 3, True, True), (2, 7, 5, False, True), (1, 64, 768, False, False),
         (3, 17, 33, True, False), (1, 300, 8, False, True), (1, 300, 8, True, True)]


@pytest.mark.parametrize("impl", [pytest.param(i, marks=pytest.mark.gpu) if i == "tensorrt" else i
                                  for i in impls.SCAN_IMPLS if i != "torch"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-T{}-C{}-rev{:d}-h0{:d}".format(*c))
def test_linear_scan_parity(impl, case, skip_unless_impl, rel_err):
    skip_unless_impl(impl)
    B, T, C, reverse, with_h0 = case
    if impl == "onnx-parallel" and T > 64:
        pytest.skip("the O(T^2) parallel form is meant for T <= 64 (fp32 cumsum differences lose digits beyond)")
    a, b, h0 = _case(B, T, C, seed=T * 7 + C)
    h0 = h0 if with_h0 else None
    ref_h, ref_last = impls.linear_scan("torch", a, b, h0, reverse)
    h, last = impls.linear_scan(impl, a, b, h0, reverse)
    assert h.shape == (B, T, C) and last.shape == (B, C)
    assert rel_err(h, ref_h) <= TOL
    assert rel_err(last, ref_last) <= TOL
    np.testing.assert_array_equal(last, h[:, 0 if reverse else -1])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 3), T=st.integers(1, 40), C=st.integers(1, 17), reverse=st.booleans(),
       with_h0=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_scan_property(B, T, C, reverse, with_h0, seed, rel_err):
    # Any real decay, including negative and slightly expanding ones (|a| <= 1.1).
    a, b, h0 = _case(B, T, C, seed, lo=-1.1, hi=1.1)
    h0 = h0 if with_h0 else None
    ref_h, ref_last = impls.linear_scan("torch", a, b, h0, reverse)
    for impl in ("numpy", "onnx-unrolled", "cpu-core", "ort-kernel"):
        if impls.unavailable(impl):
            continue
        h, last = impls.linear_scan(impl, a, b, h0, reverse)
        assert rel_err(h, ref_h) <= TOL, impl
        assert rel_err(last, ref_last) <= TOL, impl


def test_linear_scan_decompositions_fp16(rel_err):
    """fp16 where the implementation supports it: the unrolled decomposition on ONNX Runtime CPU."""
    from edgeforge.ops import decompose

    a, b, _ = _case(2, 9, 16, seed=3)
    model = decompose.linear_scan_model(2, 9, 16, "unrolled", dtype=np.float16)
    h, last = impls.ort_session(model.SerializeToString(), custom_ops=False).run(
        None, {"a": a.astype(np.float16), "b": b.astype(np.float16)})
    ref_h, ref_last = impls.linear_scan("torch", a, b)
    assert h.dtype == np.float16 and rel_err(h.astype(np.float32), ref_h) <= 1e-2


def test_reverse_is_the_flipped_scan():
    a, b, h0 = _case(2, 11, 6, seed=5)
    h_rev, last_rev = impls.linear_scan("torch", a, b, h0, reverse=True)
    h_fwd, last_fwd = impls.linear_scan("torch", a[:, ::-1], b[:, ::-1], h0)
    np.testing.assert_allclose(h_rev, h_fwd[:, ::-1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(last_rev, last_fwd, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- bad input
def test_torch_api_rejects_bad_shapes():
    from edgeforge import ops

    a = torch.rand(2, 5, 3)
    with pytest.raises(OpInputError, match="same shape"):
        ops.linear_scan(a, torch.rand(2, 4, 3))
    with pytest.raises(OpInputError, match="3-D"):
        ops.linear_scan(a[0], a[0])
    with pytest.raises(OpInputError, match=r"h0 must be \(B, C\)"):
        ops.linear_scan(a, a, torch.zeros(2, 4))


@pytest.mark.parametrize("impl", ["numpy", "cpu-core", *(f"cpu-core@{p}" for p in native.ISA_PATHS)])
def test_non_finite_inputs_are_rejected(impl, skip_unless_impl):
    skip_unless_impl(impl)
    a, b, h0 = _case(1, 4, 3, seed=1)
    b[0, 2, 1] = np.nan
    with pytest.raises(OpInputError, match="non-finite"):
        impls.linear_scan(impl, a, b)
    h0[0, 0] = np.inf
    with pytest.raises(OpInputError, match="h0 has a non-finite"):
        impls.linear_scan(impl, a, np.nan_to_num(b), h0)


def test_ort_kernel_reports_bad_input_clearly(skip_unless_impl):
    skip_unless_impl("ort-kernel")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgeforge.ops import schema

    # Symbolic shapes so that ONNX Runtime lets mismatched tensors reach the kernel.
    ins = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["B", "T", "C"]),
           helper.make_tensor_value_info("b", TensorProto.FLOAT, ["B", "T2", "C"])]
    node = helper.make_node(schema.LINEAR_SCAN, ["a", "b"], ["h", "h_last"], domain=schema.DOMAIN,
                            **schema.linear_scan_attrs(False))
    outs = [helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("h_last", TensorProto.FLOAT, None)]
    model = helper.make_model(helper.make_graph([node], "g", ins, outs),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(schema.DOMAIN, 1)])
    model.ir_version = 9
    sess = impls.ort_session(model.SerializeToString(), custom_ops=True)
    a = np.ones((1, 4, 3), np.float32)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="same shape|both be"):
        sess.run(None, {"a": a, "b": np.ones((1, 5, 3), np.float32)})
    bad = a.copy()
    bad[0, 1, 2] = np.inf
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="input a has a non-finite"):
        sess.run(None, {"a": bad, "b": a})
