"""SiT: static token counts through the Token Slimming Modules; export with ORT parity."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim
import torch

from edgeforge.models import build_model
from edgeforge.models.sit import SIT_CONFIGS, SiT, TokenSlimming


def test_token_counts_follow_the_paper():
    assert SiT(SIT_CONFIGS["t"]).keep == [196, 98, 49, 24]
    assert SiT(SIT_CONFIGS["tiny"]).keep == [16, 8, 4, 2]


def test_token_slimming_is_a_soft_aggregation():
    torch.manual_seed(0)
    tsm = TokenSlimming(32, keep=5).eval()
    x = torch.randn(2, 20, 32)
    y = tsm(x)
    assert y.shape == (2, 5, 32)
    # rows of the aggregation matrix are convex weights: a constant token map stays constant
    const = torch.ones(2, 20, 32) * 3.0
    assert torch.allclose(tsm(const), torch.full((2, 5, 32), 3.0), atol=1e-5)


def test_sit_exports_static_shapes_with_parity():
    torch.manual_seed(0)
    model = build_model("edgeforge:sit_tiny", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    f = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, input_names=["input"])
    # after shape folding (onnxslim) every intermediate shape is known and fixed: TSMs have
    # static token counts
    proto = onnx.shape_inference.infer_shapes(onnxslim.slim(onnx.load_from_string(f.getvalue())), data_prop=True)
    for vi in proto.graph.value_info:
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi.name
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = model(x).detach().numpy()
    assert np.abs(sess.run(None, {"input": x.numpy()})[0] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
