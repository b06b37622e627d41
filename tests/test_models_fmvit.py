"""FMViT: multi-branch, multi-group convs fold exactly into one conv; fewer nodes after folding."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeforge.export.transforms import apply_transforms
from edgeforge.models import build_model
from edgeforge.models.layers.rep_conv import RepGroupConv


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics, so folding is actually exercised."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.mark.parametrize("cin,cout,branches,stride", [
    (16, 16, [(3, 4), (3, 16), (1, 16)], 1),  # FMViT's gate: grouped 3x3 + depthwise 3x3/1x1 + identity
    (8, 16, [(3, 1), (1, 1)], 2),             # downsampling rep conv
    (12, 12, [(5, 3), (3, 6), (1, 12)], 1),   # mixed kernels and group counts
])
def test_rep_group_conv_folds_exactly_into_one_conv(cin, cout, branches, stride):
    torch.manual_seed(0)
    conv = RepGroupConv(cin, cout, branches, stride=stride).eval()
    _randomize_bn(conv)
    x = torch.randn(2, cin, 9, 9)
    with torch.no_grad():
        ref = conv(x)
        conv.reparameterize()
        conv.reparameterize()  # idempotent
        out = conv(x)
    assert isinstance(conv.conv, nn.Conv2d) and conv.conv.groups == min(g for _, g in branches)
    assert not list(conv.branches) and conv.identity is None
    assert torch.allclose(out, ref, atol=1e-5)


def test_fmvit_fold_is_exact_and_leaves_fewer_nodes():
    torch.manual_seed(0)
    model = build_model("edgeforge:fmvit_tiny", num_classes=10)
    _randomize_bn(model)
    x = torch.randn(1, 3, 64, 64)

    def export():
        f = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, input_names=["input"])
        return onnx.load_from_string(f.getvalue())

    before = export()
    records = apply_transforms(model, ["reparameterize"], (x,), tol=1e-5)
    assert records[0].changed > 0
    assert apply_transforms(model, ["reparameterize"], (x,), tol=1e-7)[0].max_abs_err == 0.0
    after = export()
    conv_before = Counter(n.op_type for n in before.graph.node)["Conv"]
    conv_after = Counter(n.op_type for n in after.graph.node)["Conv"]
    assert len(after.graph.node) < len(before.graph.node) and conv_after < conv_before
    sess = ort.InferenceSession(after.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = model(x).detach().numpy()
    assert np.abs(sess.run(None, {"input": x.numpy()})[0] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
