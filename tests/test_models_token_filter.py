"""Token filtering: TopK + Gather with a fixed keep count, MACs fall with the keep ratio."""

from __future__ import annotations

from collections import Counter

import onnx
import onnxslim
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgeforge.models import build_model
from edgeforge.models.token_filter import keep_count


def test_keep_count():
    assert [keep_count(196, r) for r in (1.0, 0.7, 0.5, 0.3)] == [196, 137, 98, 59]
    with pytest.raises(ValueError):
        keep_count(196, 0.0)


def test_filter_keeps_the_highest_scored_tokens():
    torch.manual_seed(0)
    model = build_model("edgeforge:token_filter_tiny", keep_ratio=0.5)
    tokens = torch.randn(2, 16, 64)
    kept = model.filter_tokens(tokens)
    scores = model.scorer(tokens)
    best = scores.topk(8, dim=1).indices
    for b in range(2):
        assert torch.equal(kept[b], tokens[b, best[b]])


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_export_is_static_topk_gather_with_parity(ratio, onnx_tools):
    torch.manual_seed(0)
    model = build_model("edgeforge:token_filter_tiny", keep_ratio=ratio)
    x = torch.randn(1, 3, 64, 64)
    proto = onnx_tools.export(model, [x], input_names=["input"])
    counts = Counter(n.op_type for n in proto.graph.node)
    assert counts["TopK"] == (0 if ratio == 1.0 else 1)
    inferred = onnx.shape_inference.infer_shapes(onnxslim.slim(proto), data_prop=True)  # shapes folded
    for vi in inferred.graph.value_info:
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi.name
    onnx_tools.assert_close(onnx_tools.run(proto, [x])[0], model(x))


def test_macs_fall_with_keep_ratio():
    macs = []
    for r in (1.0, 0.7, 0.5, 0.3):
        model = build_model("edgeforge:token_filter_tiny", keep_ratio=r)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
        macs.append(counter.get_total_flops() // 2)
    assert all(a > b for a, b in zip(macs, macs[1:]))  # strictly fewer MACs at every lower ratio
