"""quant.output_search: activation ranges chosen by the whole model's output loss, evaluated by
feeding scales into one ONNX Runtime session. Real models, real sessions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeforge.quant import output_search
from edgeforge.quant.calibrate import run_outputs
from edgeforge.quant.engine import quantize_onnx
from edgeforge.quant.qdq import build_qdq
from edgeforge.quant.quantizers import params_from_range
from edgeforge.quant.scheme import resolve


def _mlp(fixed_batch_reshape: bool) -> onnx.ModelProto:
    """x (1, 16) -> Gemm 32 -> Relu -> Gemm 10 -> logits; optionally a Reshape to a fixed (1, 32)
    in between, which a batch of samples cannot pass (the search then runs one sample at a time)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32) * 0.5, "w1"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(rng.standard_normal((10, 32)).astype(np.float32) * 0.5, "w2"),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "b2"),
             numpy_helper.from_array(np.array([1, 32], np.int64), "shape")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu")]
    src = "r"
    if fixed_batch_reshape:
        nodes.append(helper.make_node("Reshape", ["r", "shape"], ["r2"], name="reshape"))
        src = "r2"
    nodes.append(helper.make_node("Gemm", [src, "w2", "b2"], ["logits"], name="fc2", transB=1))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(fixed: bool, n: int = 24):
    model = _mlp(fixed)
    x = np.random.default_rng(1).standard_normal((n, 16)).astype(np.float32)  # run one (1, 16) row at a time
    scheme = resolve("w8a8", method="minmax")
    return quantize_onnx(model, x, "minmax", scheme, show_progress=False, bias_correction=False), x, scheme


def _loss(q, act_q, x):
    """The model-output loss of the QDQ model written with `act_q`, run as float emulation."""
    ref = run_outputs(q.prepared, x, ["logits"], optimize="disable")["logits"]
    out = run_outputs(build_qdq(q.prepared, q.plan, act_q, q.weight_q), x, ["logits"], optimize="disable")["logits"]
    return output_search.output_loss(ref, out)


def _widened(act_q: dict, factor: float) -> dict:
    """Every activation range `factor` times wider: levels wasted, a worse start."""
    out = {}
    for t, qp in act_q.items():
        lo, hi = qp.float_range()
        out[t] = params_from_range(lo * factor, hi * factor, qp.bits, qp.symmetric, qp.signed)
    return out


@pytest.mark.parametrize("fixed", [False, True], ids=["batched", "one-sample-at-a-time"])
def test_search_lowers_the_loss_of_the_model_it_writes(fixed):
    q, x, scheme = _quantized(fixed)
    start = _widened(q.act_q, 6.0)
    found, info = output_search.search(q.prepared, q.plan, start, q.weight_q, x, scheme)
    assert info["batched"] is (not fixed)
    # the loss the search reports is the loss of the model built from what it returns: feeding
    # scales into the session computes exactly what writing them as initializers does
    assert info["loss_before"] == pytest.approx(_loss(q, start, x), rel=1e-5)
    assert info["loss_after"] == pytest.approx(_loss(q, found, x), rel=1e-5)
    assert info["loss_after"] < 0.7 * info["loss_before"]  # a 6x too wide start is easy to improve
    assert info["changed"] >= 1 and info["visited"] == info["quantizers"] == len(q.act_q)
    assert info["evaluations"] > info["quantizers"]
    for t, qp in found.items():  # deployable: the engine's own containers, zero inside the range
        lo, hi = qp.float_range()
        assert qp.dtype == start[t].dtype and lo <= 0 <= hi


def test_search_never_worsens_a_good_start_and_respects_its_budget():
    q, x, scheme = _quantized(False)
    found, info = output_search.search(q.prepared, q.plan, q.act_q, q.weight_q, x, scheme)
    assert info["loss_after"] <= info["loss_before"]
    same, info0 = output_search.search(q.prepared, q.plan, q.act_q, q.weight_q, x, scheme, budget_s=0.0)
    assert info0["visited"] == 0 and info0["stopped_by_budget"] and info0["evaluations"] == 1
    assert all(same[t] is q.act_q[t] for t in q.act_q)


def test_output_loss_kl_and_relative_error():
    ref = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    assert output_search.output_loss(ref, ref + 3.0) == pytest.approx(0.0, abs=1e-12)  # a shift is no change
    q = np.log(np.array([[0.5, 0.4, 0.1], [0.1, 0.1, 0.8]]))
    p = np.exp(ref[0])
    assert output_search.output_loss(ref, q) == pytest.approx((p * (ref[0] - q[0])).sum() / 2)
    emb = np.array([[1.0], [2.0]])
    assert output_search.output_loss(emb, emb * 1.1) == pytest.approx(0.01)


def test_output_loss_of_an_embedding_is_its_relative_error_not_a_softmax_kl():
    # a backbone's (N, D) output is a vector, not a distribution: scaling it by 1.1 is a 1% error
    # (relative squared), which the softmax KL would score as if the classes' odds had changed
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 384))
    assert output_search.output_loss(emb, emb * 1.1, "embedding") == pytest.approx(0.01)
    assert output_search.output_loss(emb, emb * 1.1) != pytest.approx(0.01)  # auto: taken as logits
    with pytest.raises(ValueError):
        output_search.output_loss(emb, emb, "vectors")
