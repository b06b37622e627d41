// GatedAttention math core: o = softmax(scale * q k^T + bias [+ c_i - c_j]) v with an online
// (streaming) softmax over tiles of keys, as in FlashAttention. q (B,H,N,D), k (B,H,M,D),
// v (B,H,M,Dv), bias broadcast to (B,H,N,M) through strides, c = cumsum(log_f) per (b, h).
// Numerically stable: only differences to the running maximum are exponentiated, and the decay
// enters as c_i - c_j, never as exp(c) on its own. Compiled for the CPU and into the CUDA kernel.
#pragma once

#include "ef_core.h"

namespace ef {

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

// Scaled logits of one query row against kb keys stored transposed (kt[d * kt_stride + j]), so the
// inner loop runs over keys with unit stride (vectorizes on the CPU without reassociating sums).
template <typename QT, typename KT>
EF_HD void ga_logits(const QT* EF_RESTRICT q, const KT* EF_RESTRICT kt, int64_t kt_stride, int64_t D,
                     int64_t kb, float scale, float* EF_RESTRICT s) {
    for (int64_t j = 0; j < kb; ++j) s[j] = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
        const float qd = to_float(q[d]) * scale;
        const KT* EF_RESTRICT kr = kt + d * kt_stride;
        for (int64_t j = 0; j < kb; ++j) s[j] += qd * to_float(kr[j]);
    }
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

// One online-softmax step over a tile of kb logits (turned into weights in place): running max m,
// running denominator l, unnormalised output acc (Dv). v points at the tile's first key row.
template <typename VT>
EF_HD void ga_update(float* EF_RESTRICT s, int64_t kb, const VT* EF_RESTRICT v, int64_t v_stride, int64_t Dv,
                     float* EF_RESTRICT acc, float& m, float& l) {
    float tmax = kNegInf;
    for (int64_t j = 0; j < kb; ++j) tmax = ef_fmax(tmax, s[j]);
    if (tmax == kNegInf) return;  // every key of this tile is masked out
    const float m_new = ef_fmax(m, tmax);
    const float corr = exp_nonpos(m - m_new);  // 0 on the first tile (m = -inf)
    for (int64_t j = 0; j < kb; ++j) s[j] = exp_nonpos(s[j] - m_new);
    float sum = 0.0f;
    for (int64_t j = 0; j < kb; ++j) sum += s[j];
    l = l * corr + sum;
    if (corr != 1.0f)
        for (int64_t e = 0; e < Dv; ++e) acc[e] *= corr;
    for (int64_t j = 0; j < kb; ++j) {
        const float p = s[j];
        const VT* EF_RESTRICT vr = v + j * v_stride;
        for (int64_t e = 0; e < Dv; ++e) acc[e] += p * to_float(vr[e]);
    }
    m = m_new;
}

// o = acc / l. A row whose keys are all masked (l == 0) gives NaN, as softmax over all -inf does.
template <typename OT>
EF_HD void ga_finish(const float* EF_RESTRICT acc, float l, int64_t Dv, OT* EF_RESTRICT o) {
    const float inv = 1.0f / l;
    for (int64_t e = 0; e < Dv; ++e) from_float(l > 0.0f ? acc[e] * inv : __builtin_nanf(""), &o[e]);
}

}  // namespace ef
