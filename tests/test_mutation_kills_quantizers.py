"""Quantizer arithmetic, value by value: integer ranges, scales and zero-points, rounding and
clamping edges, per-channel broadcasting, explicit weight codes, int32 biases, log quantizers and
the error metrics. Written against the survivors of mutation testing (benchmarks/mutation.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeforge.quant.bias_correction import SNAP
from edgeforge.quant.quantizers import (EPS, QParams, cosine, dequantize, fake_quant, fit_inside, log_fake_quant,
                                        log_params, params_from_range, qrange, quantize, quantize_bias, sqnr_db,
                                        weight_codes)


def _qp(scale, zp, bits=8, symmetric=False, signed=False, axis=None, **kw):
    return QParams(np.asarray(scale, np.float32), np.asarray(zp, np.int64), bits, symmetric, signed, axis, **kw)


# ----------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("bits", range(2, 9))
def test_qrange_every_width(bits):
    h = 2 ** (bits - 1)
    assert qrange(bits, True, True) == (-(h - 1), h - 1)
    assert qrange(bits, True, False) == (-h, h - 1)
    assert qrange(bits, False, True) == (0, 2 ** bits - 1)
    assert qrange(bits, False, False) == (0, 2 ** bits - 1)


@pytest.mark.parametrize("bits", [1, 9, 0, 16])
def test_qrange_refuses_widths_outside_2_to_8(bits):
    with pytest.raises(ValueError, match=f"bits must be in 2..8, got {bits}"):
        qrange(bits, True, True)


def test_qparams_properties_and_json():
    qp = _qp([0.5, 0.25], [3, 4], bits=6, axis=0, observer="kl", extra={"tensor": "w"})
    assert (qp.qmin, qp.qmax, qp.dtype, qp.per_channel) == (0, 63, "uint8", True)
    lo, hi = qp.float_range()
    np.testing.assert_array_equal(lo, [-1.5, -1.0])
    np.testing.assert_array_equal(hi, [30.0, 14.75])
    assert qp.to_json() == {"kind": "uniform", "bits": 6, "scheme": "asymmetric", "dtype": "uint8",
                            "granularity": "per-channel", "axis": 0, "qmin": 0, "qmax": 63, "observer": "kl",
                            "scale": [0.5, 0.25], "zero_point": [3, 4], "tensor": "w"}
    sym = _qp(0.125, 0, symmetric=True, signed=True)
    assert (sym.qmin, sym.qmax, sym.dtype, sym.per_channel) == (-127, 127, "int8", False)
    j = sym.to_json()
    assert j["scale"] == 0.125 and j["zero_point"] == 0 and isinstance(j["zero_point"], int)
    assert (j["scheme"], j["granularity"], j["axis"], j["kind"], j["observer"]) == (
        "symmetric", "per-tensor", None, "uniform", "minmax")
    assert _qp(1.0, 0, symmetric=False, signed=True).qmin == -128
    assert sym.codes is None and sym.extra == {} and sym.kind == "uniform"


# ----------------------------------------------------------------------------- params_from_range
def test_asymmetric_uint8_scale_and_zero_point():
    qp = params_from_range(-1.0, 3.0, 8, False, False)
    assert qp.scale.dtype == np.float32 and qp.zero_point.dtype == np.int64
    assert qp.scale == np.float32(4.0 / 255)
    assert qp.zero_point == 64  # round(0 - (-1) / (4/255)) = round(63.75)
    assert (qp.bits, qp.symmetric, qp.signed, qp.axis, qp.observer) == (8, False, False, None, "minmax")
    # zero is exact: it quantizes to the zero-point and comes back as 0
    assert quantize(np.zeros(1, np.float32), qp)[0] == 64 and fake_quant(np.zeros(1, np.float32), qp)[0] == 0


def test_asymmetric_signed_and_narrow():
    qp = params_from_range(-1.0, 3.0, 8, False, True)
    assert qp.scale == np.float32(4.0 / 255) and qp.zero_point == -128 + 64
    qp = params_from_range(-2.0, 1.0, 4, False, False, observer="mse")
    assert qp.scale == np.float32(3.0 / 15) and qp.zero_point == 10 and qp.observer == "mse"


def test_range_always_contains_zero():
    # all-positive: lo is taken as 0 -> zero-point at qmin; all-negative: hi taken as 0 -> zp at qmax
    qp = params_from_range(1.0, 3.0, 8, False, False)
    assert qp.scale == np.float32(3.0 / 255) and qp.zero_point == 0
    qp = params_from_range(-3.0, -1.0, 8, False, False)
    assert qp.scale == np.float32(3.0 / 255) and qp.zero_point == 255
    qp = params_from_range(-3.0, -1.0, 8, False, True)
    assert qp.zero_point == 127
    qp = params_from_range(2.0, 5.0, 8, True, True)
    assert qp.scale == np.float32(5.0 / 127)


def test_symmetric_signed_and_uint8_container():
    qp = params_from_range(-3.0, 1.0, 8, True, True)
    assert qp.scale == np.float32(3.0 / 127) and qp.zero_point == 0
    qp = params_from_range(-1.0, 3.0, 8, True, False)
    assert qp.scale == np.float32(3.0 / 127) and qp.zero_point == 128
    qp = params_from_range(-1.0, 3.0, 6, True, False)
    assert qp.scale == np.float32(3.0 / 31) and qp.zero_point == 32
    qp = params_from_range(-1.0, 3.0, 4, True, True)
    assert qp.scale == np.float32(3.0 / 7)


def test_per_channel_and_all_zero_channel():
    qp = params_from_range([-1.0, 0.0, -0.5], [1.0, 0.0, 2.0], 8, True, True, axis=0)
    np.testing.assert_array_equal(qp.scale, np.float32([1 / 127, EPS, 2 / 127]))
    assert qp.zero_point.tolist() == [0, 0, 0] and qp.axis == 0 and qp.per_channel
    qp = params_from_range([0.0, -1.0], [0.0, 1.0], 8, False, False, axis=1)
    np.testing.assert_array_equal(qp.scale, np.float32([EPS, 2 / 255]))
    assert qp.zero_point.tolist() == [0, 128]
    qp = params_from_range(0.0, 0.0, 8, True, False)
    assert qp.scale == np.float32(EPS) and qp.zero_point == 128


# ----------------------------------------------------------------------------- fit_inside
def test_fit_inside_shrinks_by_the_fewest_ulps():
    qp = params_from_range(0.0, 6.0, 8, False, False, observer="kl")
    hi32 = np.float32(255) * qp.scale
    assert float(hi32) > 6.0 or 255 * float(qp.scale) > 6.0  # the plain range overshoots the Clip
    out = fit_inside(qp, 0.0, 6.0)
    s = np.float32(out.scale)
    assert s < qp.scale and 255 * float(s) <= 6.0 and np.float32(255) * s <= np.float32(6.0)
    bigger = np.nextafter(s, np.float32(1))
    assert 255 * float(bigger) > 6.0 or np.float32(255) * bigger > np.float32(6.0)  # the largest that fits
    assert out.scale.dtype == np.float32 and out.zero_point is qp.zero_point
    assert (out.bits, out.symmetric, out.signed, out.axis, out.observer, out.kind) == (8, False, False, None,
                                                                                        "kl", "uniform")
    assert out.extra == {"fitted_inside_clip": [0.0, 6.0]}


def test_fit_inside_checks_the_low_end_too():
    qp = params_from_range(-6.0, 6.0, 8, True, True)
    out = fit_inside(qp, -6.0, 6.0)
    s = np.float32(out.scale)
    assert -127 * float(s) >= -6.0 and np.float32(-127) * s >= np.float32(-6.0)
    qp = _qp(np.float32(6.0 / 127) * np.float32(1.0000001), 127, symmetric=True, signed=False)
    out = fit_inside(qp, -6.0, 100.0)
    s = np.float32(out.scale)
    assert (0 - 127) * float(s) >= -6.0 and np.float32(-127) * s >= np.float32(-6.0)
    assert (255 - 127) * float(s) <= 100.0


def test_fit_inside_leaves_fitting_per_channel_and_log_quantizers_alone():
    qp = params_from_range(0.0, 5.0, 8, False, False)
    inside = fit_inside(qp, -1.0, 1e6)
    assert inside is qp
    pc = params_from_range([0.0, 0.0], [6.0, 6.0], 8, False, False, axis=0)
    assert fit_inside(pc, 0.0, 1.0) is pc
    lq = log_params(6.0, 4)
    assert fit_inside(lq, 0.0, 1.0) is lq


# ----------------------------------------------------------------------------- quantize / dequantize
def test_quantize_rounds_half_to_even_and_clamps():
    qp = _qp(0.5, 10, bits=8, symmetric=False, signed=False)
    x = np.float32([0.25, 0.75, 1.25, -0.25, -0.75, 0.0, 200.0, -200.0, 127.5, -5.0, -5.5])
    q = quantize(x, qp)
    assert q.dtype == np.int32
    assert q.tolist() == [10, 12, 12, 10, 8, 10, 255, 0, 255, 0, 0]
    qs = _qp(1.0, 0, bits=4, symmetric=True, signed=True)
    assert quantize(np.float32([-9, -7, -6.5, 6.5, 7, 9]), qs).tolist() == [-7, -7, -6, 6, 7, 7]
    qa = _qp(1.0, 0, bits=4, symmetric=False, signed=True)
    assert quantize(np.float32([-9, 9]), qa).tolist() == [-8, 7]


def test_dequantize_exact_and_zero_point():
    qp = _qp(0.5, 10)
    q = np.int32([0, 10, 11, 255])
    d = dequantize(q, qp)
    assert d.dtype == np.float32 and d.tolist() == [-5.0, 0.0, 0.5, 122.5]
    assert fake_quant(np.float32([0.3, -6.0, 1000.0]), qp).tolist() == [0.5, -5.0, 122.5]


def test_per_channel_broadcast_on_the_given_axis():
    qp = _qp([1.0, 0.5, 0.25], [0, 1, 2], axis=1, symmetric=False, signed=True)
    x = np.ones((2, 3, 2), np.float32)
    q = quantize(x, qp)
    assert q[:, 0].ravel().tolist() == [1] * 4 and q[:, 1].ravel().tolist() == [3] * 4
    assert q[:, 2].ravel().tolist() == [6] * 4
    np.testing.assert_array_equal(dequantize(q, qp), x)
    qp0 = _qp([1.0, 0.5], [0, 0], axis=0, symmetric=True, signed=True)
    w = np.float32([[1, 2, 3], [1, 2, 3]])
    assert quantize(w, qp0).tolist() == [[1, 2, 3], [2, 4, 6]]
    # a scalar scale with an axis set broadcasts as a scalar
    qps = _qp(0.5, 0, axis=1, symmetric=True, signed=True)
    assert quantize(w, qps).tolist() == [[2, 4, 6], [2, 4, 6]]


def test_weight_codes_explicit_or_rounded():
    w = np.float32([[0.5, 1.0], [-1.0, 0.26]])
    qp = _qp(0.5, 0, symmetric=True, signed=True)
    assert weight_codes(w, qp).tolist() == [[1, 2], [-2, 1]]
    qp.codes = np.int64([[1, 2], [-2, 0]])
    c = weight_codes(w, qp)
    assert c.dtype == np.int32 and c.tolist() == [[1, 2], [-2, 0]]
    with pytest.raises(ValueError, match=r"weight codes \(2, 2\) do not match the weight \(4,\)"):
        weight_codes(w.ravel(), qp)


# ----------------------------------------------------------------------------- int32 bias
def test_quantize_bias_per_channel_and_per_tensor():
    b = np.float32([1.0, -0.5, 0.26])
    bq, bs = quantize_bias(b, 0.5, np.float32([0.1, 0.2, 0.4]))
    assert bq.dtype == np.int32 and bs.dtype == np.float32
    np.testing.assert_allclose(bs, [0.05, 0.1, 0.2], rtol=1e-7)
    assert bq.tolist() == [20, -5, 1]
    bq, bs = quantize_bias(b, 0.5, np.float32(0.5))
    assert bs.shape == (3,) and bs.tolist() == [0.25, 0.25, 0.25]
    assert bq.tolist() == [4, -2, 1]


def test_quantize_bias_saturates_int32_and_applies_the_shift():
    bq, _ = quantize_bias(np.float64([1e12, -1e12, 0.0]), 1e-3, np.float32([1.0, 1.0, 1.0]))
    assert bq.tolist() == [2 ** 31 - 1, -2 ** 31, 0]
    s = 0.25
    shift = np.float64([SNAP * s * 3, -SNAP * s * 2, SNAP * s * 0.4])
    bq, _ = quantize_bias(np.float64([10.0, 10.0, 10.0]), 0.5, np.float32(0.5), shift)
    assert bq.tolist() == [40 - 3 * SNAP, 40 + 2 * SNAP, 40]


# ----------------------------------------------------------------------------- log quantizers
def test_log_params_and_refusal():
    qp = log_params(2.0, 4, "logsqrt2", observer="kl")
    assert (qp.kind, qp.bits, qp.symmetric, qp.signed, qp.axis, qp.observer) == ("logsqrt2", 4, True, False, None,
                                                                                  "kl")
    assert qp.scale == np.float32(2.0) and qp.zero_point == 0 and qp.scale.dtype == np.float32
    assert log_params(0.0, 4).scale == np.float32(EPS) and log_params(0.0, 4).kind == "log2"
    assert log_params(-3.0, 4).scale == np.float32(EPS)
    with pytest.raises(ValueError, match=r"log quantizer base must be log2 or logsqrt2, got 'log10'"):
        log_params(1.0, 4, "log10")


def test_log2_levels_and_cutoffs():
    qp = log_params(1.0, 3)  # levels 2^0 .. 2^-7
    x = np.float32([1.0, 0.5, 0.3, 0.7, 2.0, 0.0, -1.0, 2 ** -7, 2 ** -8, 2 ** -7.4, 2 ** -7.6])
    out = log_fake_quant(x, qp)
    assert out.dtype == np.float32
    assert out.tolist() == [1.0, 0.5, 0.25, 0.5, 1.0, 0.0, 0.0, 2 ** -7, 0.0, 2 ** -7, 0.0]
    np.testing.assert_array_equal(fake_quant(x, qp), out)  # fake_quant dispatches on kind
    qp4 = log_params(4.0, 2)  # delta 4, levels 4, 2, 1, 0.5
    assert log_fake_quant(np.float32([4.0, 1.0, 0.5, 0.25, 3.0]), qp4).tolist() == [4.0, 1.0, 0.5, 0.0, 4.0]


def test_logsqrt2_levels():
    qp = log_params(1.0, 2, "logsqrt2")  # levels sqrt2^0 .. sqrt2^-3
    x = np.float32([1.0, 2 ** -0.5, 0.5, 2 ** -1.5, 2 ** -2, 0.6])
    out = log_fake_quant(x, qp)
    np.testing.assert_allclose(out, [1.0, 2 ** -0.5, 0.5, 2 ** -1.5, 0.0, 2 ** -0.5], rtol=1e-6)


# ----------------------------------------------------------------------------- metrics
def test_sqnr_db_exact():
    assert sqnr_db([1.0, 0.0], [0.9, 0.0]) == pytest.approx(20.0, abs=1e-9)
    assert sqnr_db([3.0, 4.0], [3.0, 4.0]) == float("inf")
    assert sqnr_db([[1.0, 1.0]], [[1.0, 0.0]]) == pytest.approx(10 * np.log10(2.0), abs=1e-12)
    assert sqnr_db([0.0], [1.0]) == pytest.approx(-300.0)


def test_cosine_exact_and_zero_vectors():
    assert cosine([1.0, 0.0], [0.0, 1.0]) == 0.0
    assert cosine([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.0, abs=1e-15)
    assert cosine([1.0, 0.0], [-1.0, 0.0]) == -1.0
    assert cosine([[3.0, 4.0]], [[4.0, 3.0]]) == pytest.approx(24 / 25, abs=1e-15)
    assert cosine([0.0, 0.0], [0.0, 0.0]) == 1.0
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0
    assert cosine([1.0, 0.0], [0.0, 0.0]) == 0.0


# ----------------------------------------------------------------------------- float32 inputs
def test_float32_observer_ranges_give_the_float64_scale_and_zero_point():
    """Observers hand over float32 min/max: the scale is computed in float64 and rounded once."""
    rng = np.random.default_rng(1)
    lo = -rng.uniform(0, 5, 200).astype(np.float32)
    hi = rng.uniform(0, 5, 200).astype(np.float32)
    for bits, sym, signed in ((8, False, False), (8, True, True), (6, True, False)):
        a = params_from_range(lo, hi, bits, sym, signed, axis=0)
        b = params_from_range(lo.astype(np.float64), hi.astype(np.float64), bits, sym, signed, axis=0)
        np.testing.assert_array_equal(a.scale, b.scale)
        np.testing.assert_array_equal(a.zero_point, b.zero_point)
        assert a.zero_point.shape == (200,) and a.zero_point.dtype == np.int64


def test_metrics_do_not_overflow_on_float32_inputs():
    big = np.float32([1e20, -3e20, 2e20])
    assert cosine(big, big) == pytest.approx(1.0, abs=1e-12)
    assert cosine(big, -big) == pytest.approx(-1.0, abs=1e-12)
    assert sqnr_db(big, big * np.float32(1.1)) == pytest.approx(20.0, abs=1e-4)
    assert sqnr_db([2.0, 0.0], [1.8, 0.0]) == pytest.approx(20.0, abs=1e-9)


def test_int32_bias_scale_is_the_float64_product():
    rng = np.random.default_rng(3)
    b = rng.uniform(-50, 50, 512).astype(np.float32)
    s_in = np.float32(0.0123)
    s_w = rng.uniform(1e-4, 1e-2, 512).astype(np.float32)
    bq, bs = quantize_bias(b, s_in, s_w)
    exact = float(s_in) * s_w.astype(np.float64)
    np.testing.assert_array_equal(bq, np.rint(b.astype(np.float64) / exact).astype(np.int32))
    np.testing.assert_array_equal(bs, exact.astype(np.float32))


# ----------------------------------------------------------------------------- more edges
def test_one_element_per_tensor_scale_broadcasts():
    qp = QParams(np.float32([0.5]), np.int64([1]), 8, False, False, None)
    x = np.float32([[0.5, 1.0], [-0.5, 2.0]])
    assert quantize(x, qp).tolist() == [[2, 3], [0, 5]]
    np.testing.assert_array_equal(dequantize(quantize(x, qp), qp), x)


def test_per_channel_symmetric_uint8_has_a_zero_point_per_channel():
    qp = params_from_range([-1.0, -2.0], [1.0, 2.0], 8, True, False, axis=0)
    assert qp.zero_point.tolist() == [128, 128]


def test_fit_inside_takes_the_largest_scale_that_fits_both_ways():
    def reference(qp, lo, hi):
        s = np.float32(qp.scale)
        z = float(qp.zero_point)
        for _ in range(64):
            f64 = ((qp.qmin - z) * float(s), (qp.qmax - z) * float(s))
            f32 = (np.float32(qp.qmin - z) * s, np.float32(qp.qmax - z) * s)
            if min(f64[0], f32[0]) >= lo and max(f64[1], f32[1]) <= hi:
                break
            s = np.nextafter(s, np.float32(0))
        return s

    cases = [(params_from_range(-6.0, 6.0, 8, True, True), -6.0, 6.0),
             (params_from_range(-1.0, 6.0, 8, False, False), -1.0, 6.0),
             (params_from_range(-6.0, 1.0, 8, False, True), -6.0, 1.0),
             (params_from_range(-6.0, 6.0, 8, True, False), -6.0, 6.0),
             (params_from_range(-6.0, 6.0, 6, True, True), -6.0, 6.0),
             # asymmetric ranges where the float64 and float32 products sit on different sides of a bound
             (params_from_range(-5.185267448425293, 5.8334856033325195, 8, False, False),
              -5.185267448425293, 5.8334856033325195),
             (params_from_range(-4.270291805267334, 6.8411478996276855, 8, False, False),
              -4.270291805267334, 6.8411478996276855),
             (params_from_range(-4.270291805267334, 6.8411478996276855, 8, False, True),
              -4.270291805267334, 6.8411478996276855)]
    for qp, lo, hi in cases:
        out = fit_inside(qp, lo, hi)
        assert np.float32(out.scale) == reference(qp, lo, hi), (qp.to_json(), lo, hi)


def test_fit_inside_exact_edge_and_bounded_search():
    qp = _qp(0.03125, 0)  # 255 * 2^-5 = 7.96875 exactly: the range touches the Clip, inside
    assert fit_inside(qp, 0.0, 7.96875) is qp
    far = _qp(0.1, 0)  # a Clip far inside the range: at most 64 ulps are taken off, never more
    s = np.float32(0.1)
    for _ in range(64):
        s = np.nextafter(s, np.float32(0))
    assert np.float32(fit_inside(far, 0.0, 1.0).scale) == s


def test_log_quantizer_zero_input_is_zero_at_8_bits():
    qp = log_params(1.0, 8)  # 255 levels reach below 2^-100: only the x <= 0 test zeroes 0
    assert log_fake_quant(np.float32([0.0, -0.5, 1.0]), qp).tolist() == [0.0, 0.0, 1.0]
    assert qp.observer == "minmax" and log_params(1.0, 4, "logsqrt2").observer == "minmax"
