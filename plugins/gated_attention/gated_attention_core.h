// GatedAttention math core: o = softmax(scale * q k^T + bias [+ c_i - c_j]) v with an online
// (streaming) softmax over tiles of keys, as in FlashAttention. q (B,H,N,D), k (B,H,M,D),
// v (B,H,M,Dv), bias broadcast to (B,H,N,M) through strides, c = cumsum(log_f) per (b, h).
// Numerically stable: only differences to the running maximum are exponentiated, and the decay
// enters as c_i - c_j, never as exp(c) on its own. Compiled for the CPU and into the CUDA kernel.
#pragma once

#include "ef_core.h"

namespace ef {
inline namespace EF_ISA_NS {

struct GatedAttentionShape {
    int64_t B, H, N, M, D, Dv;
    float scale;
    bool causal;          // bottom-right aligned: row i sees keys j <= i + M - N (needs M >= N)
    int64_t bias_stride[4];  // element strides of bias over (B, H, N, M); 0 where broadcast
};

constexpr float kNegInf = -__builtin_huge_valf();

// Number of keys query row i may attend to.
EF_HD int64_t ga_key_limit(const GatedAttentionShape& s, int64_t i) {
    return s.causal ? i + (s.M - s.N) + 1 : s.M;
}

// Logits of R query rows against W * NC keys stored transposed (kt[d * kt_stride + j]), W the
// lanes of the register vector V (VecOps): s[r * s_stride + j] = scale * q_r . k_j, accumulated
// in R * NC register vectors (enough independent accumulators to keep the FMA units busy). The
// CPU build runs 8 rows x 2 16-float vectors with AVX-512, 6 rows x 2 8-float vectors with AVX2,
// reading keys from 16- or 32-key packed panels; a CUDA thread runs its single row (R = 1).
// With `bias` (rows of bias_stride, unit stride over keys, every one of the W * NC keys real),
// the tile stores scale * q.k + bias: the bias is added in the registers instead of in another
// pass over the logits.
template <int R, int NC, typename V = F16, typename QT, typename KT>
EF_HD void ga_logits_tile(const QT* EF_RESTRICT q, int64_t q_stride, const KT* EF_RESTRICT kt, int64_t kt_stride,
                          int64_t D, float scale, float* EF_RESTRICT s, int64_t s_stride,
                          const float* EF_RESTRICT bias = nullptr, int64_t bias_stride = 0) {
    using O = VecOps<V>;
    constexpr int W = O::W;
    V acc[R][NC];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < NC; ++c) acc[r][c] = O::zero();
    for (int64_t d = 0; d < D; ++d) {
        V kv[NC];
        for (int c = 0; c < NC; ++c) kv[c] = O::load(kt + d * kt_stride + W * c);
        for (int r = 0; r < R; ++r) {
            const float qd = to_float(q[r * q_stride + d]);
            for (int c = 0; c < NC; ++c) O::fma(acc[r][c], qd, kv[c]);
        }
    }
    if (bias != nullptr) {
        const V sc = O::splat(scale);
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < NC; ++c)
                O::store(s + r * s_stride + W * c, O::add(O::mul(acc[r][c], sc), O::load(bias + r * bias_stride + W * c)));
        return;
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < NC; ++c) O::store(s + r * s_stride + W * c, acc[r][c], scale);
}

// Adds the additive bias, the forget-gate decay c_i - c_j, and the causal mask to the logits of
// row i against keys j0 .. j0 + kb. bias_row points at bias(b, h, i, 0) (or is null); c at the
// cumulative log forget gates of this (b, h) (or is null).
// c is kept in double: c_i and c_j grow without bound (about N * log f), and their fp32 rounding
// error would land in c_i - c_j exactly where it matters, for nearby j with a small difference.
template <typename BT>
EF_HD void ga_add_bias(float* EF_RESTRICT s, int64_t kb, int64_t i, int64_t j0, const BT* bias_row,
                       int64_t bias_j_stride, const double* c, int64_t key_limit) {
    if (bias_row != nullptr)
        for (int64_t j = 0; j < kb; ++j) s[j] += to_float(bias_row[(j0 + j) * bias_j_stride]);
    if (c != nullptr) {
        const double ci = c[i];
        for (int64_t j = 0; j < kb; ++j) s[j] += static_cast<float>(ci - c[j0 + j]);
    }
    for (int64_t j = key_limit > j0 ? key_limit - j0 : 0; j < kb; ++j) s[j] = kNegInf;
}

// One online-softmax step of one row over a tile of kb logits: the logits become weights
// exp(s - m_new) in place, the running denominator l and the unnormalised output acc (Dv) are
// rescaled to the new running maximum m. A tile whose keys are all masked gets zero weights.
// Maximum of a tile of logits, in 16 lanes (a scalar reduction is one long dependency chain).
EF_HD float ga_tile_max(const float* EF_RESTRICT s, int64_t kb) {
    F16 lanes = f16_splat(kNegInf);
    int64_t j16 = 0;
    for (; j16 + 16 <= kb; j16 += 16) lanes = f16_max(lanes, f16_load(s + j16));
    float tmax = f16_reduce_max(lanes);
    for (int64_t j = j16; j < kb; ++j) tmax = ef_fmax(tmax, s[j]);
    return tmax;
}

// exp(s - m) over 16 logits, given neg_m_log2e = splat(-m * log2 e): 2^(s log2 e - m log2 e),
// the subtraction folded into one multiply-add per lane.
EF_HD F16 ga_exp_shifted(const F16& s, const F16& neg_m_log2e) {
    return f16_exp2_nonpos(f16_add(f16_mul(s, f16_splat(kLog2e)), neg_m_log2e));
}

// The end of a step: the tile's weights (taken relative to m_new) summed to `sum`; the running
// denominator l and output acc, relative to the old maximum m, are rescaled to m_new.
EF_HD void ga_softmax_rescale(float m_new, float sum, float& m, float& l, float* EF_RESTRICT acc, int64_t Dv) {
    const float corr = exp_nonpos(m - m_new);  // 0 on the first tile (m = -inf)
    l = l * corr + sum;
    if (corr != 1.0f)
        for (int64_t e = 0; e < Dv; ++e) acc[e] *= corr;
    m = m_new;
}

// The step given the tile's maximum (a caller that already passed over the tile computes it there).
EF_HD void ga_softmax_step_max(float* EF_RESTRICT s, int64_t kb, float tmax, float& m, float& l,
                               float* EF_RESTRICT acc, int64_t Dv) {
    if (tmax == kNegInf) {
        for (int64_t j = 0; j < kb; ++j) s[j] = 0.0f;
        return;
    }
    const float m_new = ef_fmax(m, tmax);
    // Exponentiate and sum in one pass over the tile.
    F16 lanes = f16_zero();
    const F16 neg_m = f16_splat(-m_new * kLog2e);
    int64_t j16 = 0;
    for (; j16 + 16 <= kb; j16 += 16) {
        const F16 e = ga_exp_shifted(f16_load(s + j16), neg_m);
        f16_store(s + j16, e);
        lanes = f16_add(lanes, e);
    }
    float sum = f16_reduce_add(lanes);
    for (int64_t j = j16; j < kb; ++j) sum += (s[j] = exp2_nonpos(s[j] * kLog2e - m_new * kLog2e));
    ga_softmax_rescale(m_new, sum, m, l, acc, Dv);
}

EF_HD void ga_softmax_step(float* EF_RESTRICT s, int64_t kb, float& m, float& l, float* EF_RESTRICT acc, int64_t Dv) {
    ga_softmax_step_max(s, kb, ga_tile_max(s, kb), m, l, acc, Dv);
}

// acc[r][e] += sum_j p[r][j] * v[j][e] for R rows over kb keys, columns in blocks of W * NC
// held in register vectors V (VecOps); columns left over go W, then 1 at a time.
template <int R, int NC, typename V = F16, typename VT>
EF_HD void ga_accumulate_tile(const float* EF_RESTRICT p, int64_t p_stride, int64_t kb, const VT* EF_RESTRICT v,
                              int64_t v_stride, int64_t Dv, float* EF_RESTRICT acc, int64_t acc_stride) {
    using O = VecOps<V>;
    constexpr int W = O::W;
    int64_t e0 = 0;
    for (; e0 + W * NC <= Dv; e0 += W * NC) {
        V a[R][NC];
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < NC; ++c) a[r][c] = O::load(acc + r * acc_stride + e0 + W * c);
        for (int64_t j = 0; j < kb; ++j) {
            V vv[NC];
            for (int c = 0; c < NC; ++c) vv[c] = O::load(v + j * v_stride + e0 + W * c);
            for (int r = 0; r < R; ++r) {
                const float pr = p[r * p_stride + j];
                for (int c = 0; c < NC; ++c) O::fma(a[r][c], pr, vv[c]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < NC; ++c) O::store(acc + r * acc_stride + e0 + W * c, a[r][c]);
    }
    if (NC > 1) {
        ga_accumulate_tile<R, 1, V>(p, p_stride, kb, v + e0, v_stride, Dv - e0, acc + e0, acc_stride);
        return;
    }
    for (; e0 < Dv; ++e0)
        for (int r = 0; r < R; ++r) {
            float a = acc[r * acc_stride + e0];
            for (int64_t j = 0; j < kb; ++j) a += p[r * p_stride + j] * to_float(v[j * v_stride + e0]);
            acc[r * acc_stride + e0] = a;
        }
}

// o = acc / l. A row whose keys are all masked (l == 0) gives NaN, as softmax over all -inf does.
template <typename OT>
EF_HD void ga_finish(const float* EF_RESTRICT acc, float l, int64_t Dv, OT* EF_RESTRICT o) {
    const float inv = 1.0f / l;
    for (int64_t e = 0; e < Dv; ++e) from_float(l > 0.0f ? acc[e] * inv : __builtin_nanf(""), &o[e]);
}

}  // namespace EF_ISA_NS
}  // namespace ef
