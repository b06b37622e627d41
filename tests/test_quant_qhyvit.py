"""qhyvit (Q-HyViT): bridge-block detection, the scale search's objective, the per-layer scheme
on a symmetric-only target, and accuracy on a trained fixture with ONNX Runtime's integer kernels."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch

from edgeforge.quant.bridge import find_bridges
from edgeforge.quant.calibrate import run_outputs
from edgeforge.quant.engine import prepare, quantize_onnx
from edgeforge.quant.scheme import resolve


def _exported(recipe: str, size: int | None = None):
    from edgeforge.export.pipeline import prepare_model

    p = prepare_model(recipe, None, 0, 1)
    x = next(iter(p.inputs.values()))
    if size is not None:
        x = torch.randn(1, x.shape[1], size, size)
    f = io.BytesIO()
    torch.onnx.export(p.model, (x,), f, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"])
    return p.model, onnx.load_from_string(f.getvalue()), x


@pytest.fixture(scope="module")
def fmvit():
    return _exported("fmvit_tiny")


def _blocks(model):
    m, _ = prepare(model)
    return [(b.block, b.reason) for b in find_bridges(m)], find_bridges(m)


def test_bridges_efficientformer_v1():
    # EfficientFormer-L1: 4D (conv, pooling) stages, then Flat (blocks.3) + the first Meta3D
    # attention block (blocks.4): one bridge, holding the Flat's shape ops and the attention
    _, model, _ = _exported("efficientformer_l1")
    found, bridges = _blocks(model)
    assert found == [("stages.3.blocks.4", "conv->attention")]
    b = bridges[0]
    assert any("blocks.3" in n for n in b.nodes)  # the Flat belongs to the bridge
    assert b.output.endswith("blocks.4/Add_1_output_0")  # O: the whole block's output
    assert {"stages.3.blocks.4.token_mixer.qkv", "stages.3.blocks.4.mlp.fc2"} <= set(b.to_json()["layers"])


def test_bridges_efficientformer_v2(trained):
    # EfficientFormerV2: the first attention block of stage 3 and the attention downsampling into
    # stage 4 (the paper's two bridges); the later attention blocks follow attention: no bridge
    # (the digits fixture is a small V2: its stage 3 turns to attention at blocks.1)
    _, fp32, _, _ = trained
    model = onnx.load(fp32)
    found, _ = _blocks(model)
    assert found == [("stages.2.blocks.1", "conv->attention"), ("stages.3.downsample", "attention downsampling")]
    later = {n.name.split("/")[4] for n in model.graph.node if n.op_type == "Softmax" and "/stages.3/blocks/" in n.name}
    assert later  # stage 4 has attention blocks after the downsampling, which are not bridges


def test_bridges_fmvit(fmvit):
    # FMViT: each stage opens with convolution and turns to attention in its last block
    _, model, _ = fmvit
    found, _ = _blocks(model)
    assert found == [(f"stages.{i}.{j}", "conv->attention") for i, j in ((0, 0), (1, 2), (2, 2), (3, 2))]


def test_bridges_none_in_a_plain_cnn():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    f = io.BytesIO()
    torch.onnx.export(conv, (torch.randn(1, 3, 16, 16),), f, dynamo=False, opset_version=17)
    found, _ = _blocks(onnx.load_from_string(f.getvalue()))
    assert found == []


def _calib(x, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *x.shape[1:]), generator=g).numpy()


@pytest.fixture
def quick(monkeypatch):
    """A shorter search (2 rounds, a 21-point grid) for the tests that check its logic, not accuracy."""
    from edgeforge.quant.methods.qhyvit import QHyViT

    monkeypatch.setattr(QHyViT, "rounds", 2)
    monkeypatch.setattr(QHyViT, "alphas", np.linspace(0.01, 1.2, 21))


def test_search_never_increases_its_objective(fmvit, quick):
    torch_model, model, x = fmvit
    xs = _calib(x)
    for bits in ("w8a8", "w4a4"):
        q = quantize_onnx(model, xs, "qhyvit", resolve(bits, method="qhyvit"), show_progress=False,
                          torch_model=lambda: torch_model)
        info = q.method_info
        assert info["layers_searched"] > 10
        assert info["weighting"]["layers_weighted"] > 10  # (dL/dO)^2 reached the layers
        hist = [info["loss_before"]] + info["loss_by_round"]
        tot = [h["layers"] + h["tensors"] for h in hist]
        assert all(b <= a * (1 + 1e-9) for a, b in zip(tot, tot[1:])), tot
        assert tot[-1] < tot[0]  # and it does find something better than percentile calibration
        assert len(info["bridge_blocks"]) == 4


def test_symmetric_only_target_gets_symmetric_quantizers(fmvit, quick):
    torch_model, model, x = fmvit
    scheme = resolve("w8a8", "gpu-tensorrt", method="qhyvit")
    q = quantize_onnx(model, _calib(x), "qhyvit", scheme, show_progress=False, torch_model=lambda: torch_model)
    assert q.method_info["activations_changed"] > 0
    for t, qp in q.act_q.items():
        assert qp.symmetric and qp.signed and np.all(qp.zero_point == 0), t
    for w, qp in q.weight_q.items():
        assert qp.symmetric and np.all(qp.zero_point == 0), w
    assert set(q.method_info["activation_schemes_chosen"]) == {"asymmetric", "symmetric"}
    assert q.method_info["activation_schemes_chosen"]["asymmetric"] == 0
    # the same model on cpu-ort is free to choose asymmetric activations, and does
    q2 = quantize_onnx(model, _calib(x), "qhyvit", resolve("w8a8", method="qhyvit"), show_progress=False,
                       torch_model=lambda: torch_model)
    assert any(not qp.symmetric for qp in q2.act_q.values())


def test_qhyvit_keeps_trained_fixture_accuracy(trained):
    model, fp32, calib, ev = trained

    def top1(m):
        return run_outputs(m, ev.x, ["logits"], optimize="all")["logits"].argmax(-1)  # ORT integer kernels

    fp32_acc = float((top1(onnx.load(fp32)) == ev.labels).mean())
    q = quantize_onnx(onnx.load(fp32), calib.x, "qhyvit", resolve("w8a8", method="qhyvit"), show_progress=False,
                      torch_model=lambda: model)
    acc = float((top1(q.model) == ev.labels).mean())
    assert acc >= fp32_acc - 0.005, (acc, fp32_acc)
    assert q.method_info["loss_after"]["layers"] < q.method_info["loss_before"]["layers"]
    # the torch simulation takes the searched quantizers and computes what ONNX Runtime computes
    import torch

    from edgeforge.errors import NotAvailable
    from edgeforge.quant import quantize as torch_quantize

    info = q.method_info
    # what the model-output checks kept is what the simulation is handed: searched weights only
    # if a kept candidate has them; activations from the chosen start, the search or the
    # output-loss search
    assert bool(q.sim_params["weights"]) == (info["model_output_check"]["kept"] in ("weights searched",
                                                                                    "both searched"))
    assert q.sim_params["acts"]
    # the start: the calibration whose model output (integer kernels) is closest to FP32
    start = info["start"]
    assert set(start["losses"]) == {"percentile", "entropy", "mse"}
    assert start["losses"][start["observer"]] == min(start["losses"].values())
    # the output-loss search ran over every activation quantizer and was kept only if the
    # integer kernels agree it helps
    os_info = info["output_search"]
    assert os_info["visited"] == os_info["quantizers"] > 10 and os_info["loss_after"] <= os_info["loss_before"]
    ck = os_info["kernel_check"]
    assert ck["losses"][ck["kept"]] == min(ck["losses"].values())
    sim = torch_quantize(model, calib.x, "qhyvit", method_params=q.sim_params)
    changed = [t for t, a in sim.act_quantizers.items() if a.qparams.observer != "percentile"]
    assert changed  # searched scales reached the simulation's quantizers
    with torch.no_grad():
        ps = sim.model(torch.from_numpy(ev.x)).argmax(-1).numpy()
    assert float((ps == top1(q.model)).mean()) >= 0.99
    with pytest.raises(NotAvailable):  # without the engine's results it says so, not a silent percentile run
        torch_quantize(model, calib.x, "qhyvit")


def test_gemm_token_rows_keep_their_sample():
    # a Gemm on tokens reads (T, K) per sample: captured over N samples it is (N*T, K), and each
    # row's (dL/dO)^2 must be its own sample's (EfficientFormer-L1's attention Gemms)
    from edgeforge.quant.reconstruction import _rows_linear

    N, T, K = 4, 6, 3
    x = np.arange(N * T * K, dtype=np.float32).reshape(N * T, K)
    rows, sample, weight = _rows_linear(x, K, 1 << 20, np.random.default_rng(0), N)
    assert rows.shape == (N * T, 1, K) and weight == 1.0
    assert sample.tolist() == [i for i in range(N) for _ in range(T)]
    assert np.array_equal(rows[:, 0].numpy(), x)
