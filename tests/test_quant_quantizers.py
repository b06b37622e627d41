"""Quantizers and observers: exactness of zero, error bounds, ranges, log quantizers, schemes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeforge.errors import BadInput
from edgeforge.quant.observers import Observer, kl_threshold, weight_params
from edgeforge.quant.quantizers import (QParams, cosine, fake_quant, log_fake_quant, log_params,
                                        params_from_range, qrange, sqnr_db)
from edgeforge.quant.scheme import convert_for_target, resolve


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(-50, 0), span=st.floats(1e-3, 100), bits=st.integers(2, 8), symmetric=st.booleans(),
       signed=st.booleans())
def test_uniform_error_bound_and_exact_zero(lo, span, bits, symmetric, signed):
    hi = lo + span
    qp = params_from_range(lo, hi, bits, symmetric, signed)
    assert qp.qmin <= 0 <= qp.qmax or not signed
    assert fake_quant(np.zeros(3, np.float32), qp).tolist() == [0.0, 0.0, 0.0]
    flo, fhi = qp.float_range()
    x = np.linspace(max(lo, float(flo)), min(hi, float(fhi)), 257).astype(np.float32)
    err = np.abs(fake_quant(x, qp) - x)
    assert err.max() <= float(qp.scale) / 2 * 1.001 + 1e-6
    # values outside the range saturate to its ends
    assert fake_quant(np.asarray([fhi + 10 * span], np.float32), qp)[0] == pytest.approx(float(fhi), rel=1e-5)


def test_ranges_and_per_channel_weights():
    assert qrange(8, True, True) == (-127, 127)
    assert qrange(8, False, False) == (0, 255)
    assert qrange(4, True, True) == (-7, 7)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * np.arange(1, 7)[:, None, None, None]
    qp = weight_params(w, 8, "minmax", axis=0)
    assert qp.scale.shape == (6,) and np.all(qp.zero_point == 0)
    assert np.allclose(qp.scale, np.abs(w).reshape(6, -1).max(1) / 127, rtol=1e-6)
    per_tensor = weight_params(w, 8, "minmax", axis=None)
    assert sqnr_db(w, fake_quant(w, qp)) > sqnr_db(w, fake_quant(w, per_tensor))
    # the MSE clip search never loses to min/max on the weights it searched
    for bits in (4, 6):
        mm, ms = weight_params(w, bits, "minmax", 0), weight_params(w, bits, "mse", 0)
        assert np.sum((fake_quant(w, ms) - w) ** 2) <= np.sum((fake_quant(w, mm) - w) ** 2) + 1e-6


def test_all_zero_channel_gets_eps_scale():
    w = np.zeros((2, 3), np.float32)
    w[1] = [1, -2, 3]
    qp = weight_params(w, 8, "minmax", 0)
    assert np.all(qp.scale > 0) and np.all(np.isfinite(fake_quant(w, qp)))


def test_observers():
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(5000).astype(np.float32) for _ in range(4)]
    data[2][7] = 60.0  # one outlier
    obs = {m: Observer(m) for m in ("minmax", "percentile", "mse", "entropy")}
    for d in data:
        for o in obs.values():
            o.update(d)
    lo, hi = obs["minmax"].range()
    assert hi == pytest.approx(60.0) and lo == pytest.approx(min(d.min() for d in data))
    for m in ("percentile", "entropy"):
        l2, h2 = obs[m].range(8, False, False)
        assert h2 < 30, m  # the outlier is clipped
        assert l2 < -1.5 and h2 > 1.5, m
    # MSE picks the range with the least actual error on the data (never worse than min/max)
    allx = np.concatenate(data)
    for bits in (8, 4):
        err = {m: float(np.mean((fake_quant(allx, obs[m].params(bits, False, False)) - allx) ** 2))
               for m in ("minmax", "mse")}
        assert err["mse"] <= err["minmax"] * 1.01, (bits, err)
    assert obs["mse"].range(4, False, False)[1] < 30  # at 4 bits clipping the outlier pays off
    # the histogram grew to keep everything
    assert obs["mse"].hi >= 60.0 and obs["mse"].hist.sum() == 20000


def test_kl_threshold_on_a_clean_histogram_keeps_most_of_it():
    hist = np.exp(-np.linspace(0, 8, 2048))
    t = kl_threshold(hist, 8.0, 128)
    assert 2.0 < t <= 8.0


def test_log_quantizers():
    x = np.asarray([1.0, 0.5, 0.25, 0.3, 1e-9, 0.0], np.float32)
    q2 = log_params(1.0, 4, "log2")
    y = log_fake_quant(x, q2)
    assert y[:3].tolist() == [1.0, 0.5, 0.25] and y[4] == 0.0 and y[5] == 0.0
    qs = log_params(1.0, 4, "logsqrt2")
    ys = fake_quant(x, qs)
    assert ys[3] == pytest.approx(2 ** -1.5, rel=1e-5)  # 0.3 -> sqrt(2)^-3
    # log-sqrt2 is finer than log2 on a softmax-like distribution
    p = np.random.default_rng(0).dirichlet(np.ones(64), 32).astype(np.float32)
    assert sqnr_db(p, log_fake_quant(p, log_params(p.max(), 4, "logsqrt2"))) > \
        sqnr_db(p, log_fake_quant(p, log_params(p.max(), 4, "log2")))


def test_metrics():
    a = np.ones(10)
    assert sqnr_db(a, a) == float("inf") and cosine(a, a) == pytest.approx(1.0)
    assert sqnr_db(a, a * 1.1) == pytest.approx(20.0, abs=0.01)


def test_targets_decide_the_scheme():
    ort = resolve("w8a8", "cpu-ort", "minmax")
    assert not ort.act_symmetric and not ort.act_signed and ort.weight_per_channel
    trt = resolve("w8a8", "gpu-tensorrt", "minmax")
    assert trt.act_symmetric and trt.act_signed
    with pytest.raises(BadInput, match="symmetric quantization only"):
        resolve("w8a8", "gpu-tensorrt", "minmax", act_scheme="asymmetric")
    with pytest.raises(BadInput, match="cannot run 'minmax'"):
        resolve("w8a8", "apple-ane", "minmax")
    with pytest.raises(BadInput, match="w3a3"):
        resolve("w3a3")
    assert resolve("w4a8").weight_bits == 4 and resolve("w4a8").act_bits == 8


def test_convert_for_target_exact_or_refuse():
    trt = resolve("w8a8", "gpu-tensorrt", "minmax")
    u8sym = QParams(np.asarray(0.1, np.float32), np.asarray(128), 8, True, False)
    conv = convert_for_target(u8sym, trt, "t")
    assert conv.signed and int(conv.zero_point) == 0 and float(conv.scale) == pytest.approx(0.1)
    x = np.linspace(-12, 12, 101).astype(np.float32)
    assert np.array_equal(fake_quant(np.clip(x, -12.7, 12.7), u8sym)[1:], fake_quant(x, conv)[1:])
    asym = params_from_range(-1.0, 5.0, 8, False, False)
    with pytest.raises(BadInput, match="symmetric only"):
        convert_for_target(asym, trt, "t")


@pytest.mark.parametrize("method", ["percentile", "mse", "entropy"])
def test_histogram_observers_ignore_batch_order_and_float_noise(method):
    """The histogram is the same whatever the batch order (power-of-two ranges merge bins
    exactly), and float noise of the size torch and ONNX Runtime differ by moves no range: the
    torch simulation and the ONNX engine calibrate the same tensor to the same quantizer."""
    rng = np.random.default_rng(3)
    batches = [rng.normal(0.2, s, 5000).astype(np.float32) for s in (0.1, 3.0, 0.5, 9.0)]
    batches[0] = np.abs(batches[0])  # the first batch is non-negative: the range must go signed later

    def observe(bs):
        o = Observer(method)
        for b in bs:
            o.update(b)
        return o

    a, b = observe(batches), observe(batches[::-1])
    np.testing.assert_array_equal(a.hist, b.hist)
    top = 2.0 ** np.ceil(np.log2(max(np.abs(x).max() for x in batches)))
    assert (a.lo, a.hi) == (b.lo, b.hi) == (-top, top)
    assert a.range(8) == b.range(8)
    noisy = observe([x * np.float32(1 + 1e-6) for x in batches])
    # the same bins are chosen: a range moves by the noise (clamped to the exact min/max, or
    # mse's shrink of them) but never by a bin (4096 bins over 128: ~1e-3 relative)
    np.testing.assert_allclose(noisy.range(8), a.range(8), rtol=1e-5)
