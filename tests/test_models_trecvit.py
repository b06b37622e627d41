"""TRecViT: the streaming step model equals the clip model; clip and step export with ORT parity."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from edgeforge import ops
from edgeforge.models import build_model
from edgeforge.models.trecvit import TRecViTStep

FRAMES = 16
STATE = ["lru_state", "conv_state", "pool_sum", "frames_seen"]


@pytest.fixture(scope="module")
def clip_and_video():
    torch.manual_seed(0)
    clip = build_model("edgeforge:trecvit_tiny", img_size=32)
    return clip, torch.randn(2, FRAMES, 3, 32, 32)


@torch.no_grad()
def test_step_model_equals_clip_model_frame_by_frame(clip_and_video):
    clip, video = clip_and_video
    step = TRecViTStep(clip).eval()
    features = clip.frame_features(video)
    state = step.initial_state(2)
    err = 0.0
    for t in range(FRAMES):
        logits, feat, *new_state = step(video[:, t], **state)
        state = dict(zip(STATE, new_state))
        err = max(err, float((logits - clip(video[:, :t + 1])).abs().max()),
                  float((feat - features[:, t]).abs().max()))
    assert err <= 1e-4
    assert float(state["frames_seen"][0]) == FRAMES


def test_clip_exports_in_both_custom_op_modes(clip_and_video, onnx_tools):
    clip, video = clip_and_video
    x = video[:1]
    ref = clip(x).detach().numpy()
    proto = onnx_tools.export(clip, [x], "decompose")
    assert not any(n.domain == ops.DOMAIN for n in proto.graph.node)
    onnx_tools.assert_close(onnx_tools.run(proto, [x])[0], ref)
    plugin = onnx_tools.export(clip, [x], "plugin")
    assert [n.op_type for n in plugin.graph.node if n.domain == ops.DOMAIN] == ["LinearScan"] * clip.cfg.depth


@torch.no_grad()
def test_exported_step_model_streams_like_the_clip_model(clip_and_video, onnx_tools):
    """The ONNX step model, fed its own state frame by frame in ONNX Runtime, equals torch's clip."""
    clip, video = clip_and_video
    step = TRecViTStep(clip).eval()
    example = step.export_inputs(1)
    proto = onnx_tools.export(step, list(example.values()), input_names=list(example),
                             output_names=step.export_output_names)
    assert [i.name for i in proto.graph.input] == list(example)
    sess = onnx_tools.session(proto)
    # parity at the mid-stream example state
    refs = step(**example)
    outs = sess.run(None, {k: v.numpy() for k, v in example.items()})
    for o, r in zip(outs, refs):
        onnx_tools.assert_close(o, r)
    # streaming from the initial state
    state = {k: v.numpy() for k, v in step.initial_state(1).items()}
    x = video[:1]
    for t in range(FRAMES):
        logits, _, *new_state = sess.run(None, {"frame": x[:, t].numpy(), **state})
        state = dict(zip(STATE, new_state))
    assert np.abs(logits - clip(x).numpy()).max() <= 1e-4


def test_step_export_inputs_and_names_are_consistent():
    step = build_model("edgeforge:trecvit_step_tiny", img_size=32)
    inputs = step.export_inputs(2)
    assert list(inputs) == ["frame", *STATE]
    assert inputs["frame"].shape == (2, 3, 32, 32)
    outs = step(*inputs.values())
    assert len(outs) == len(step.export_output_names)
    for name, t in zip(STATE, outs[2:]):  # each new state has its input's shape
        assert t.shape == inputs[name].shape
