"""Scheme resolution: what a target profile decides, what the user may override, what is refused,
and the exact (never silent) conversions of an activation quantizer for a target.

Written against the survivors of mutation testing (benchmarks/mutation.py); targets are real
profile YAML files (the shipped ones, and ones written here for constraints none ships).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeforge.errors import BadInput
from edgeforge.quant.quantizers import QParams, log_params, params_from_range
from edgeforge.quant.scheme import Scheme, accumulation_for, convert_for_target, resolve, target_constraints


def _target(tmp_path, name="edge-box", **quant) -> str:
    lines = [f"name: {name}", "description: test target", "runtime: onnxruntime", "precisions: [fp32, int8]",
             "quantization:"]
    lines += [f"  {k}: {v}" for k, v in quant.items()] or ["  note: defaults"]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _scheme(**kw) -> Scheme:
    base = dict(target="t", weight_bits=8, act_bits=8, act_symmetric=False, act_signed=False,
                weight_per_channel=True, constraints={})
    return Scheme(**{**base, **kw})


# ----------------------------------------------------------------------------- Scheme
def test_stored_weight_bits_only_reduced_by_reduce_range():
    assert _scheme(overflow_fix="reduce-range").stored_weight_bits == 7
    assert _scheme(weight_bits=4, overflow_fix="reduce-range").stored_weight_bits == 4
    assert _scheme(overflow_fix="pairs").stored_weight_bits == 8
    assert _scheme(overflow_fix="none").stored_weight_bits == 8


def test_scheme_json_is_what_quant_json_records():
    s = _scheme(act_bits=6, weight_bits=4, act_signed=True, act_symmetric=True, weight_per_channel=False,
                constraints={"symmetric_only": True}, int8_accumulation="int16-pairs", accumulation_reason="why",
                overflow_fix="pairs")
    assert s.to_json() == {"target": "t", "weight_bits": 4, "act_bits": 6, "int8_accumulation": "int16-pairs",
                           "accumulation_reason": "why", "overflow_fix": "pairs",
                           "activations": "int8 symmetric per-tensor", "weights": "int8 symmetric per-tensor",
                           "target_constraints": {"symmetric_only": True}}
    assert _scheme().to_json()["activations"] == "uint8 asymmetric per-tensor"
    assert _scheme().to_json()["weights"] == "int8 symmetric per-channel"
    assert _scheme().runtime == "onnxruntime" and _scheme().int8_accumulation == "int32"
    assert _scheme().overflow_fix == "none" and _scheme().accumulation_reason == ""


# ----------------------------------------------------------------------------- target constraints
def test_target_constraints_default_target_and_runtime():
    name, c = target_constraints(None)
    assert name == "cpu-ort"
    assert c["runtime"] == "onnxruntime" and c["symmetric_only"] is False and c["activation_dtype"] == "any"
    name, c = target_constraints("gpu-tensorrt")
    assert name == "gpu-tensorrt" and c["runtime"] == "tensorrt" and c["symmetric_only"] is True


def test_accumulation_override_profile_default_and_refusal():
    assert accumulation_for("int32", "onnxruntime") == ("int32", "the target profile says int32")
    assert accumulation_for("int16-pairs", "onnxruntime") == ("int16-pairs", "the target profile says int16-pairs")
    assert accumulation_for("int32", "onnxruntime", "int16-pairs") == (
        "int16-pairs", "--int8-accumulation says int16-pairs")
    assert accumulation_for("", "onnxruntime") == ("int32", "the target profile says int32")
    with pytest.raises(BadInput, match=r"--int8-accumulation 'int64': accepted host, int32, int16-pairs"):
        accumulation_for("int32", "onnxruntime", "int64")
    acc, why = accumulation_for("host", "onnxruntime")
    assert acc in ("int32", "int16-pairs") and why.startswith("this host: ")


# ----------------------------------------------------------------------------- resolve
@pytest.mark.parametrize("bits,wb,ab", [("w8a8", 8, 8), ("w6a6", 6, 6), ("w4a8", 4, 8), ("w4a4", 4, 4)])
def test_resolve_bits(bits, wb, ab, tmp_path):
    s = resolve(bits, _target(tmp_path))
    assert (s.weight_bits, s.act_bits) == (wb, ab)


def test_resolve_refuses_bad_bits_method_and_schemes(tmp_path):
    with pytest.raises(BadInput, match=r"--bits 'w8a16': accepted w8a8, w6a6, w4a8, w4a4"):
        resolve("w8a16")
    with pytest.raises(BadInput, match=r"target apple-ane cannot run 'minmax' quantization; it accepts: coreml"):
        resolve("w8a8", "apple-ane", "minmax")
    with pytest.raises(BadInput, match=r"activation scheme 'signed': accepted auto, symmetric, asymmetric"):
        resolve("w8a8", "cpu-ort", act_scheme="signed")
    with pytest.raises(BadInput, match=r"target gpu-tensorrt runs symmetric quantization only"):
        resolve("w8a8", "gpu-tensorrt", act_scheme="asymmetric")
    with pytest.raises(BadInput, match=r"--overflow-fix 'clamp': accepted auto, pairs, reduce-range, none"):
        resolve("w8a8", _target(tmp_path), overflow_fix="clamp")


def test_resolve_method_alias_and_empty_quantizer_list(tmp_path):
    assert resolve("w8a8", "cpu-ort", "mse").target == "cpu-ort"  # mse is listed as omse
    assert resolve("w8a8", "cpu-ort", "omse").target == "cpu-ort"
    # a profile that lists no quantizers accepts every method
    assert resolve("w8a8", _target(tmp_path), "anything").target == "edge-box"
    with pytest.raises(BadInput, match="cannot run 'mse'"):
        resolve("w8a8", _target(tmp_path, quantizers="[minmax]"), "mse")


def test_resolve_activation_sign_and_symmetry(tmp_path):
    # any dtype: asymmetric uint8 (ORT's U8S8 fast path) unless asked symmetric, then int8
    s = resolve("w8a8", _target(tmp_path))
    assert (s.act_symmetric, s.act_signed) == (False, False)
    s = resolve("w8a8", _target(tmp_path), act_scheme="symmetric")
    assert (s.act_symmetric, s.act_signed) == (True, True)
    s = resolve("w8a8", _target(tmp_path), act_scheme="asymmetric")
    assert (s.act_symmetric, s.act_signed) == (False, False)
    # symmetric-only int8 target: symmetric int8 whatever auto
    s = resolve("w8a8", "gpu-tensorrt")
    assert (s.act_symmetric, s.act_signed, s.runtime) == (True, True, "tensorrt")
    # int8-only target, asymmetric allowed: int8 containers with a zero-point
    s = resolve("w8a8", _target(tmp_path, activation_dtype="int8"))
    assert (s.act_symmetric, s.act_signed) == (False, True)
    # uint8-only target: symmetric lives in uint8 with zero-point 128
    s = resolve("w8a8", _target(tmp_path, activation_dtype="uint8"), act_scheme="symmetric")
    assert (s.act_symmetric, s.act_signed) == (True, False)
    s = resolve("w8a8", _target(tmp_path, activation_dtype="uint8", symmetric_only="true"))
    assert (s.act_symmetric, s.act_signed) == (True, False)


def test_resolve_per_channel_accumulation_and_overflow_fix(tmp_path):
    s = resolve("w8a8", _target(tmp_path))
    assert s.weight_per_channel is True and s.int8_accumulation == "int32" and s.overflow_fix == "none"
    assert s.accumulation_reason == "the target profile says int32"
    assert s.constraints["runtime"] == "onnxruntime" and s.target == "edge-box"
    assert resolve("w8a8", _target(tmp_path, per_channel_weights="false")).weight_per_channel is False
    pairs = _target(tmp_path, int8_accumulation="int16-pairs")
    s = resolve("w8a8", pairs)
    assert (s.int8_accumulation, s.overflow_fix) == ("int16-pairs", "pairs")
    assert resolve("w8a8", pairs, overflow_fix="reduce-range").overflow_fix == "reduce-range"
    assert resolve("w8a8", pairs, overflow_fix="none").overflow_fix == "none"
    s = resolve("w8a8", pairs, int8_accumulation="int32")
    assert (s.int8_accumulation, s.overflow_fix) == ("int32", "none")
    assert s.accumulation_reason == "--int8-accumulation says int32"
    assert resolve("w8a8", _target(tmp_path), int8_accumulation="int16-pairs").overflow_fix == "pairs"


# ----------------------------------------------------------------------------- convert_for_target
def _act(zp, signed, bits=8, symmetric=True):
    return QParams(np.asarray(0.05, np.float32), np.asarray(zp, np.int64), bits, symmetric, signed, None, "mse",
                   extra={"tensor": "x"})


def test_log_quantizer_has_no_quantize_linear_form():
    with pytest.raises(BadInput, match=r"attn/softmax: a log2 quantizer has no QuantizeLinear form on t"):
        convert_for_target(log_params(1.0, 4), _scheme(), "attn/softmax")


def test_symmetric_only_refuses_asymmetric_and_keeps_exact_symmetric():
    sym = _scheme(act_symmetric=True, act_signed=True, constraints={"symmetric_only": True})
    with pytest.raises(BadInput, match=r"x: asymmetric quantizer \(zero-point 3\) cannot run on t"):
        convert_for_target(_act(3, True, symmetric=False), sym, "x")
    with pytest.raises(BadInput, match=r"zero-point 130"):
        convert_for_target(_act(130, False, symmetric=False), sym, "x")
    with pytest.raises(BadInput, match=r"zero-point 0"):  # uint8 zp 0 is asymmetric, not zp=128
        convert_for_target(_act(0, False, symmetric=False), sym, "x")
    qp = _act(0, True)
    assert convert_for_target(qp, sym, "x") is qp
    # uint8 zp 128 on a symmetric int8 target: the same numbers as int8 zp 0
    out = convert_for_target(_act(128, False), sym, "x")
    assert out.signed and out.symmetric and out.zero_point.tolist() == 0
    # 6-bit: the symmetric uint8 zero-point is 32
    out = convert_for_target(_act(32, False, bits=6), sym, "x")
    assert out.signed and out.zero_point.tolist() == 0 and out.bits == 6
    with pytest.raises(BadInput):
        convert_for_target(_act(128, False, bits=6), sym, "x")


def test_uint8_zp128_to_int8_is_exact_and_keeps_everything_else():
    qp = QParams(np.asarray([0.1, 0.2], np.float32), np.asarray([128, 128], np.int64), 8, True, False, 0, "kl",
                 extra={"tensor": "x"})
    out = convert_for_target(qp, _scheme(act_signed=True, act_symmetric=True), "x")
    assert out.signed is True and out.symmetric is True and out.kind == "uniform"
    assert out.zero_point.tolist() == [0, 0] and out.scale is qp.scale
    assert (out.bits, out.axis, out.observer) == (8, 0, "kl")
    assert out.extra == {"tensor": "x", "converted": "uint8 zp=128 -> int8 zp=0 (exact)"}
    assert out.qmin == -127 and out.qmax == 127
    x = np.stack([np.linspace(-12.7, 12.7, 101), np.linspace(-25.4, 25.4, 101)]).astype(np.float32)
    from edgeforge.quant.quantizers import fake_quant

    np.testing.assert_array_equal(fake_quant(x, out), fake_quant(x, qp))


def test_int8_zp0_to_uint8_only_for_asymmetric_uint8_schemes():
    qp = _act(0, True)
    out = convert_for_target(qp, _scheme(act_signed=False, act_symmetric=False), "x")
    assert out.signed is False and out.symmetric is True and out.zero_point.tolist() == 128
    assert out.extra == {"tensor": "x", "converted": "int8 zp=0 -> uint8 zp=128 (exact)"}
    assert out.observer == "mse" and out.axis is None and out.bits == 8
    out = convert_for_target(_act(0, True, bits=4), _scheme(act_signed=False, act_symmetric=False), "x")
    assert out.zero_point.tolist() == 8
    # a symmetric uint8 scheme keeps the int8 quantizer as it is (no dtype demanded)
    assert convert_for_target(qp, _scheme(act_signed=False, act_symmetric=True), "x") is qp


def test_dtype_demanded_by_target_refuses_inexact_conversion():
    int8_target = _scheme(act_signed=True, act_symmetric=False, constraints={"activation_dtype": "int8"})
    with pytest.raises(BadInput, match=r"x: uint8 activations with zero-point 3 cannot be converted exactly to int8 "
                                        r"for t"):
        convert_for_target(_act(3, False, symmetric=False), int8_target, "x")
    uint8_target = _scheme(act_signed=False, act_symmetric=True, constraints={"activation_dtype": "uint8"})
    with pytest.raises(BadInput, match=r"int8 activations with zero-point 5 cannot be converted exactly to uint8"):
        convert_for_target(_act(5, True, symmetric=False), uint8_target, "x")
    # no dtype demanded: an asymmetric uint8 quantizer is left as it is for an int8 scheme
    qp = _act(3, False, symmetric=False)
    assert convert_for_target(qp, _scheme(act_signed=True, constraints={"activation_dtype": "any"}), "x") is qp
    # same dtype: nothing to convert
    qp = params_from_range(-1.0, 3.0, 8, False, False)
    assert convert_for_target(qp, _scheme(constraints={"activation_dtype": "uint8"}), "x") is qp


def test_resolve_defaults_are_w8a8_minmax_on_cpu_ort():
    s = resolve()
    assert (s.target, s.weight_bits, s.act_bits, s.runtime) == ("cpu-ort", 8, 8, "onnxruntime")
    assert (s.act_symmetric, s.act_signed) == (False, False)


def test_host_accumulation_asks_for_the_targets_runtime(monkeypatch):
    """ONEDNN_MAX_CPU_ISA below VNNI puts OpenVINO (only) on the 16-bit pair path."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    acc, why = accumulation_for("host", "openvino")
    assert acc == "int16-pairs" and why.startswith("this host: ONEDNN_MAX_CPU_ISA=AVX2 caps OpenVINO")
    _, why = accumulation_for("host", "onnxruntime")
    assert "ONEDNN_MAX_CPU_ISA" not in why


def test_int8_to_uint8_conversion_keeps_per_channel_scales_and_axis():
    qp = QParams(np.asarray([0.1, 0.2, 0.4], np.float32), np.zeros(3, np.int64), 8, True, True, 0, "minmax")
    out = convert_for_target(qp, _scheme(act_signed=False, act_symmetric=False), "x")
    assert out.scale is qp.scale and out.axis == 0
    assert out.zero_point.tolist() == [128, 128, 128]
    x = np.float32([[-12.7, 0.0, 12.7], [-25.4, 3.0, 25.4], [-50.8, 1.0, 50.8]])
    from edgeforge.quant.quantizers import fake_quant

    np.testing.assert_array_equal(fake_quant(x, out), fake_quant(x, qp))


def test_resolve_passes_the_targets_runtime_to_the_host_check(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    s = resolve("w8a8", "cpu-openvino")
    assert (s.int8_accumulation, s.overflow_fix, s.runtime) == ("int16-pairs", "pairs", "openvino")
