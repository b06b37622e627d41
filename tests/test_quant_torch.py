"""Python API: edgeforge.quant.quantize(model, calib) on a torch module (FX capture, simulation)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_quant_support import calib_x, export_onnx, tiny_model

from edgeforge.errors import BadInput
from edgeforge.quant import quantize
from edgeforge.quant.calibrate import run_outputs
from edgeforge.quant.engine import quantize_onnx
from edgeforge.quant.quantizers import cosine
from edgeforge.quant.scheme import resolve


def test_simulation_matches_qdq_export(tmp_path, centred_cosine):
    x = calib_x(24)
    model = tiny_model()
    ref = model(torch.from_numpy(x)).detach().numpy()
    sim = quantize(model, x[:8], "minmax")
    roles = sorted(r for q in sim.act_quantizers.values() for r in q.roles)
    assert roles.count("input") >= 8 and "chain" in roles and "output" in roles
    assert all(qp.per_channel for qp in sim.weight_quantizers.values())
    s = sim(torch.from_numpy(x)).numpy()
    # the original model is untouched (BN folded in a copy)
    assert np.allclose(model(torch.from_numpy(x)).detach().numpy(), ref)
    q = quantize_onnx(onnx.load(str(export_onnx(tiny_model(), tmp_path / "m.onnx"))), x[:8], "minmax",
                      resolve("w8a8"), show_progress=False)
    assert len(q.act_q) == len(sim.act_quantizers)  # same placement rules on both sides
    o = run_outputs(q.model, x, ["logits"])["logits"]
    # centred cosine (a constant output scores 0; plain cosine of these logits with a constant is 0.987):
    # measured simulation vs FP32 0.996; a w4a4-sized error gives 0.88-0.93
    assert cosine(s, o) > 0.9995 and centred_cosine(s, o) > 0.995 and centred_cosine(ref, s) > 0.98
    sim.set_enabled(False)
    assert np.allclose(sim(torch.from_numpy(x)).numpy(), ref, atol=1e-4)


def test_simulation_rounds_biases_like_the_qdq_model(tmp_path):
    """The QDQ model stores Conv/Gemm biases as int32 on the grid s_in * s_w; the simulation rounds
    its biases to the same integers (with float biases its outputs sat ~4e-4 (cosine) off ORT's
    on FMViT). Compared as |integers|: the ONNX graph folds a layer scale g into the conv before
    (b * g on the grid s_in * s_w * |g|, the same integer up to sign)."""
    from onnx import numpy_helper

    from edgeforge.quant.torch_sim import QuantWeight

    x = calib_x(16)
    sim = quantize(tiny_model(), x[:8], "minmax")
    q = quantize_onnx(onnx.load(str(export_onnx(tiny_model(), tmp_path / "m.onnx"))), x[:8], "minmax",
                      resolve("w8a8"), show_progress=False)
    onnx_ints = sorted(abs(int(v)) for i in q.model.graph.initializer if i.name.endswith("_bias_quantized")
                       for v in numpy_helper.to_array(i).ravel())
    rounded = [m for m in sim.model.modules() if isinstance(m, QuantWeight) and m.bq is not None]
    sim_ints = sorted(abs(int(v)) for m in rounded for v in m.bias_int.ravel())
    assert len(sim_ints) == len(onnx_ints) > 0 and sim_ints == onnx_ints
    for m in rounded:  # and the simulation runs with them, not with the float biases
        assert not torch.equal(m.bq, m.inner.bias.detach())


def test_options_log_softmax_keep_fp_and_bad_models(centred_cosine):
    x = calib_x(8)
    model = tiny_model()
    ref = model(torch.from_numpy(x)).detach().numpy()
    lg = quantize(model, x, "percentile", bits="w8a8", softmax_quantizer="logsqrt2")
    kinds = {q.qparams.kind for q in lg.act_quantizers.values()}
    assert "logsqrt2" in kinds
    # measured centred cosine 0.992 (the same at w4a4: 0.926; a constant output: 0)
    assert centred_cosine(ref, lg(torch.from_numpy(x)).numpy()) > 0.97
    kept = quantize(model, x, "minmax", bits="w4a4", keep_fp=["head"])
    assert kept.kept_fp == ["head"] and "head" not in kept.weight_quantizers
    with pytest.raises(BadInput, match="no Conv/Linear/matmul"):
        quantize(model, x, "minmax", keep_fp=["nothing.here"])
    with pytest.raises(BadInput, match="input_spec"):
        quantize(model, "natural")

    class Dynamic(torch.nn.Module):
        def forward(self, t):
            return t * 2 if t.sum() > 0 else t  # data-dependent control flow: FX cannot capture

    with pytest.raises(BadInput, match="torch.fx cannot capture"):
        quantize(Dynamic(), x, fold_bn=False)


@pytest.mark.parametrize("name", ["fmvit_tiny", "rmt_tiny"])
def test_simulation_places_and_calibrates_like_the_onnx_engine(tmp_path, name):
    """On real backbones (concatenated heads, RMT's gated attention and its frozen tables), the
    torch simulation has exactly the ONNX engine's quantizers with the same ranges: both capture
    the same graph (RMT's attention traced in the decomposition's op order) and calibrate the
    float model with order- and noise-independent histograms."""
    from collections import Counter

    from edgeforge import recipes
    from edgeforge.export import export_recipe
    from edgeforge.export.pipeline import prepare_model

    recipe = recipes.load(name)
    # The onnxslim graph, always: the export keeps it only if ONNX Runtime does not time it slower,
    # and on a busy machine that choice flipped between runs (the unslimmed graph places one
    # quantizer differently; the simulation mirrors the slimmed form).
    res = export_recipe(recipe, out_dir=tmp_path / name, custom_ops="decompose", check_simplify_latency=False)
    model = prepare_model(recipe, None, 0, 1).model
    shape = (6, *recipe.spec.input.shape)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    q = quantize_onnx(onnx.load(str(res.onnx_path)), x, "percentile", resolve("w8a8"), show_progress=False)
    sim = quantize(model, x, "percentile")
    onnx_roles = Counter(tuple(sorted(s.roles)) for s in q.plan.acts.values())
    sim_roles = Counter(tuple(sorted(a.roles)) for a in sim.act_quantizers.values())
    assert onnx_roles == sim_roles
    onnx_scales = sorted(float(np.ravel(p.scale)[0]) for p in q.act_q.values())
    sim_scales = sorted(float(np.ravel(a.qparams.scale)[0]) for a in sim.act_quantizers.values())
    rel = np.abs(np.array(sim_scales) - onnx_scales) / np.array(onnx_scales)
    # float noise between torch and ORT can move a value across a histogram bin edge right where
    # a percentile falls (one bin: ~1e-3 of a clipped range); anything systematic moves them all
    assert (rel <= 1e-4).mean() >= 0.9 and rel.max() <= 5e-3, sorted(rel)[-5:]
    o = run_outputs(q.model, x[:1], [q.model.graph.output[0].name])[q.model.graph.output[0].name]
    assert cosine(sim(torch.from_numpy(x[:1])).numpy(), o) > 0.999
