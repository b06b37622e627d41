"""Typed custom nodes: the edgeforge:: nodes' outputs get types and shapes (edgeforge.ops.shapes),
so that ONNX inference types the whole plugin-mode graph and onnxslim simplifies it."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from edgeforge.export.simplify import simplify
from edgeforge.models import build_model
from edgeforge.ops import decompose, schema, shapes
from edgeforge.ops import implementations as impls


def test_output_shape_rules():
    assert shapes.output_shapes("LinearScan", [[2, 8, 16], [2, 8, 16]]) == [[2, 8, 16], [2, 16]]
    assert shapes.output_shapes("LinearScan", [["b", 8, 16], ["b", 8, 16], ["b", 16]]) == [["b", 8, 16], ["b", 16]]
    assert shapes.output_shapes("GatedAttention", [[1, 4, 49, 32], [1, 4, 60, 32], [1, 4, 60, 8]]) == [[1, 4, 49, 8]]
    assert shapes.output_shapes("GatedAttention", [["b", 4, 49, 32], ["b", 4, 49, 32], ["b", 4, 49, 32],
                                                   [4, 49, 49]]) == [["b", 4, 49, 32]]
    assert shapes.output_shapes("GatedAttention", [None, None, None]) == [None]


@pytest.mark.parametrize("dynamic", [False, True])
def test_single_op_graphs_are_typed(dynamic):
    scan = decompose.linear_scan_model(2, 8, 16, "plugin", has_h0=True)
    attn = decompose.gated_attention_model(1, 2, 9, 9, 8, 4, "plugin", bias_shape=(2, 9, 9), has_log_f=True)
    for model in (scan, attn):
        for vi in list(model.graph.value_info):
            model.graph.value_info.remove(vi)
        if dynamic:
            for vi in list(model.graph.input) + list(model.graph.output):
                if vi.type.tensor_type.shape.dim:
                    vi.type.tensor_type.shape.dim[0].dim_param = "batch"
        typed = shapes.annotate(model)
        assert shapes.untyped_tensors(typed) == [] and shapes.untyped_tensors(typed, infer=False) == []


FAMILIES = {  # every family whose models emit edgeforge:: nodes: builder, input shape
    "trecvit_tiny": ("edgeforge:trecvit_tiny", 32, (1, 4, 3, 32, 32)),
    "rmt_tiny": ("edgeforge:rmt_tiny", 64, (1, 3, 64, 64)),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_plugin_mode_exports_are_typed_and_simplified(name, onnx_tools, skip_unless_impl):
    builder, size, shape = FAMILIES[name]
    torch.manual_seed(0)
    model = build_model(builder, img_size=size).eval()
    inputs = [torch.randn(*shape)]
    raw = onnx_tools.export(model, inputs, "plugin", input_names=[f"x{i}" for i in range(len(inputs))])
    custom = [n for n in raw.graph.node if n.domain == schema.DOMAIN]
    assert custom, f"{name} emitted no edgeforge:: node in plugin mode"
    stored = shapes.untyped_tensors(raw, infer=False)
    feeding = {i for n in custom for i in n.input} | {o for n in custom for o in n.output}
    assert stored, "the torch export already stores every type: the test shows nothing"
    typed = shapes.annotate(raw)
    assert shapes.untyped_tensors(typed, infer=False) == [] and shapes.untyped_tensors(typed) == []
    assert not feeding & set(shapes.untyped_tensors(typed, infer=False))
    kept, record = simplify(typed)
    assert "onnxslim failed" not in record.reason, record.reason
    # The graph onnxslim returns still runs (ORT kernel) and agrees with the raw export.
    skip_unless_impl("ort-kernel")
    feeds = {f"x{i}": t.numpy() for i, t in enumerate(inputs)}
    want = impls.ort_session(raw.SerializeToString(), custom_ops=True).run(None, feeds)
    got = impls.ort_session(kept.SerializeToString(), custom_ops=True).run(None, feeds)
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= 1e-5 * max(1.0, float(np.abs(w).max()))
