"""GatedAttention parity over every implementation present (torch reference first), stability of
the forget-gate form on long sequences, and bad-input errors. fp32 tolerance: 1e-5 relative to
the output's scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeforge.ops import OpInputError, build, native
from edgeforge.ops import implementations as impls

TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def native_build():
    return build.build(fetch=False)


def _case(B, H, N, M, D, Dv, bias_shape=None, log_f=False, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, H, N, D)).astype(np.float32)
    k = rng.normal(size=(B, H, M, D)).astype(np.float32)
    v = rng.normal(size=(B, H, M, Dv)).astype(np.float32)
    bias = None if bias_shape is None else rng.normal(size=bias_shape).astype(np.float32)
    lf = np.log(rng.uniform(0.7, 1.0, (B, H, N))).astype(np.float32) if log_f else None
    return q, k, v, bias, lf


def _rmt_decay(H, side):
    """RMT's Manhattan decay table (H, N, N) for a side x side grid."""
    ys, xs = np.divmod(np.arange(side * side), side)
    dist = np.abs(ys[:, None] - ys[None]) + np.abs(xs[:, None] - xs[None])
    gamma = 1 - 2.0 ** -(2 + 6 * np.arange(H) / H)
    return (dist[None] * np.log(gamma)[:, None, None]).astype(np.float32)


# name: (B, H, N, M, D, Dv, bias shape, log_f, causal)
CASES = {
    "single": (1, 1, 1, 1, 4, 4, None, False, False),
    "N!=M": (2, 3, 5, 9, 8, 6, None, False, False),
    "N!=M-causal": (1, 2, 5, 9, 8, 8, None, False, True),
    "bias-full": (2, 2, 7, 7, 16, 16, (2, 2, 7, 7), False, False),
    "bias-broadcast": (1, 3, 6, 10, 8, 4, (6, 1), False, True),
    "rmt-decay-49": (1, 4, 49, 49, 16, 16, "rmt", False, False),
    "fox-log_f": (2, 2, 33, 33, 8, 8, None, True, False),
    "fox-log_f+bias": (1, 2, 70, 70, 16, 8, (2, 70, 70), True, True),
    "long-196": (1, 2, 196, 196, 32, 32, None, True, False),
    # Ragged edges of the CPU tiling: row blocks of 32 with a 1..7-row tail, key tiles of 32 with a
    # 16-key tile and a 1..15-key column tail, more than one 1024-key tile per row.
    "ragged-41x47": (1, 2, 41, 47, 24, 40, (2, 41, 47), False, False),
    "ragged-causal-37x61": (1, 1, 37, 61, 8, 17, None, False, True),
    "multi-tile-1100": (1, 1, 5, 1100, 16, 16, (5, 1100), False, True),
}


@pytest.mark.parametrize("impl", [pytest.param(i, marks=pytest.mark.gpu) if i == "tensorrt" else i
                                  for i in impls.ATTENTION_IMPLS if i != "torch"])
@pytest.mark.parametrize("name", list(CASES))
def test_gated_attention_parity(impl, name, skip_unless_impl, rel_err):
    skip_unless_impl(impl)
    B, H, N, M, D, Dv, bias_shape, log_f, causal = CASES[name]
    q, k, v, bias, lf = _case(B, H, N, M, D, Dv, None if bias_shape == "rmt" else bias_shape, log_f,
                              seed=len(name))
    if bias_shape == "rmt":
        bias = _rmt_decay(H, 7)
    ref = impls.gated_attention("torch", q, k, v, bias, lf, None, causal)
    out = impls.gated_attention(impl, q, k, v, bias, lf, None, causal)
    assert out.shape == (B, H, N, Dv)
    assert rel_err(out, ref) <= TOL


# The native cores keep c = cumsum(log_f) in double; the torch reference and the ONNX decomposition
# hold it in fp32 as FoX does, so their c_i - c_j carries the rounding of |c| (about 2e-4 at 3000).
@pytest.mark.parametrize("impl,tol", [("cpu-core", TOL), ("ort-kernel", TOL), ("torch", 1e-4), ("onnx-decompose", 1e-4)])
def test_forget_gate_is_stable_over_long_sequences(impl, tol, skip_unless_impl, rel_err):
    """Strong forgetting over 784 steps: cumsum(log_f) reaches about -3000, so exp(c) underflows and
    exp(-c) overflows; the result must still be finite and match the float64 reference."""
    skip_unless_impl(impl)
    q, k, v, _, _ = _case(1, 1, 784, 784, 16, 16, seed=9)
    lf = np.full((1, 1, 784), np.log(0.02), np.float32)
    ref = impls.gated_attention("numpy", q, k, v, log_f=lf)
    out = impls.gated_attention(impl, q, k, v, log_f=lf)
    assert np.isfinite(out).all()
    assert rel_err(out, ref) <= tol


def test_masked_bias_entries_are_honoured(skip_unless_impl, rel_err):
    """-inf in a given bias masks keys exactly (the CPU core and the torch reference agree)."""
    skip_unless_impl("cpu-core")
    q, k, v, bias, _ = _case(1, 1, 4, 6, 8, 8, bias_shape=(1, 1, 4, 6), seed=2)
    bias[..., 3:] = -np.inf
    ref = impls.gated_attention("torch", q, k, v, bias)
    np.testing.assert_allclose(ref, impls.gated_attention("torch", q, k[:, :, :3], v[:, :, :3], bias[..., :3]),
                               atol=1e-6)
    assert rel_err(impls.gated_attention("cpu-core", q, k, v, bias), ref) <= TOL


# --------------------------------------------------------------------------- bad input
def test_torch_api_rejects_bad_shapes():
    from edgeforge import ops

    q, k, v = torch.rand(1, 2, 4, 8), torch.rand(1, 2, 6, 8), torch.rand(1, 2, 6, 5)
    with pytest.raises(OpInputError, match="4-D"):
        ops.gated_attention(q[0], k, v)
    with pytest.raises(OpInputError, match="share D"):
        ops.gated_attention(q, torch.rand(1, 2, 6, 7), v)
    with pytest.raises(OpInputError, match="share M"):
        ops.gated_attention(q, k, torch.rand(1, 2, 5, 5))
    with pytest.raises(OpInputError, match="not broadcastable"):
        ops.gated_attention(q, k, v, bias=torch.zeros(3, 6))
    with pytest.raises(OpInputError, match="N == M"):
        ops.gated_attention(q, k, v, log_f=torch.zeros(1, 2, 4))
    with pytest.raises(OpInputError, match="M >= N"):
        ops.gated_attention(k, q, q, causal=True)


@pytest.mark.parametrize("impl", ["numpy", "cpu-core", *(f"cpu-core@{p}" for p in native.ISA_PATHS)])
def test_non_finite_inputs_are_rejected(impl, skip_unless_impl):
    skip_unless_impl(impl)
    q, k, v, bias, lf = _case(1, 1, 4, 4, 8, 8, bias_shape=(4, 4), log_f=True, seed=4)
    k[0, 0, 1, 2] = np.nan
    with pytest.raises(OpInputError, match="k has a non-finite"):
        impls.gated_attention(impl, q, k, v)
    bias[0, 0] = np.inf
    with pytest.raises(OpInputError, match="bias has a non-finite"):
        impls.gated_attention(impl, q, np.nan_to_num(k), v, bias)
    lf[0, 0, 0] = -np.inf
    with pytest.raises(OpInputError, match="log_f has a non-finite"):
        impls.gated_attention(impl, q, np.nan_to_num(k), v, log_f=lf)


def test_ort_kernel_reports_bad_input_clearly(skip_unless_impl):
    skip_unless_impl("ort-kernel")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgeforge.ops import schema

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"{n}{i}" for i in range(4)]) for n in "qkv"]
    node = helper.make_node(schema.GATED_ATTENTION, ["q", "k", "v"], ["o"], domain=schema.DOMAIN,
                            **schema.gated_attention_attrs(0.5, True, False, False))
    model = helper.make_model(
        helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(schema.DOMAIN, 1)])
    model.ir_version = 9
    sess = impls.ort_session(model.SerializeToString(), custom_ops=True)
    q = np.ones((1, 1, 4, 8), np.float32)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=r"need q \(B,H,N,D\)"):
        sess.run(None, {"q": q, "k": np.ones((1, 1, 4, 7), np.float32), "v": q})
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="M >= N"):
        sess.run(None, {"q": q, "k": q[:, :, :2], "v": q[:, :, :2]})
