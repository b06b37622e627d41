// GatedAttention on the CPU: validation, per-head scratch (K transposed, cumulative forget gates)
// and threading over (batch, head, block of query rows) around the shared math core.
#include <algorithm>
#include <sstream>
#include <vector>

#include "ef_cpu.h"
#include "gated_attention_core.h"

namespace ef {

namespace {

constexpr int64_t kRows = 32;   // query rows per work item (a multiple of kGroup)
constexpr int64_t kKeys = 128;  // keys per online-softmax tile (a multiple of kChunk)
constexpr int kGroup = 4;       // rows per logits register tile
constexpr int kAccGroup = 8;    // rows per accumulate register tile (a multiple of kGroup)
constexpr int kChunks = 1;      // 16-key (and 16-column) register tiles per logits/accumulate call
constexpr int64_t kChunk = 16 * kChunks;

Error bad_shape(const std::string& what) { return {kBadShape, "GatedAttention: " + what}; }

Error validate(const GatedAttentionArgs& x, int64_t bias_strides[4]) {
    if (x.B < 1 || x.H < 1 || x.N < 1 || x.M < 1 || x.D < 1 || x.Dv < 1) {
        std::ostringstream msg;
        msg << "every dimension must be >= 1; got B=" << x.B << " H=" << x.H << " N=" << x.N << " M=" << x.M
            << " D=" << x.D << " Dv=" << x.Dv;
        return bad_shape(msg.str());
    }
    if (x.q == nullptr || x.k == nullptr || x.v == nullptr || x.o == nullptr)
        return {kBadArgument, "GatedAttention: null q, k, v or o"};
    if (x.log_f != nullptr && x.N != x.M) {
        std::ostringstream msg;
        msg << "log_f needs N == M; got N=" << x.N << ", M=" << x.M;
        return bad_shape(msg.str());
    }
    if ((x.causal || x.log_f != nullptr) && x.M < x.N) {
        std::ostringstream msg;
        msg << "causal attention needs M >= N; got N=" << x.N << ", M=" << x.M;
        return bad_shape(msg.str());
    }
    if (x.bias != nullptr) {
        const int64_t full[4] = {x.B, x.H, x.N, x.M};
        if (!broadcast_strides(x.bias_shape, full, bias_strides)) {
            std::ostringstream msg;
            msg << "bias (" << x.bias_shape[0] << ", " << x.bias_shape[1] << ", " << x.bias_shape[2] << ", "
                << x.bias_shape[3] << ") is not broadcastable to (B, H, N, M) = (" << x.B << ", " << x.H << ", "
                << x.N << ", " << x.M << ")";
            return bad_shape(msg.str());
        }
    }
    if (Error e = check_finite("GatedAttention", "q", x.q, x.B * x.H * x.N * x.D)) return e;
    if (Error e = check_finite("GatedAttention", "k", x.k, x.B * x.H * x.M * x.D)) return e;
    if (Error e = check_finite("GatedAttention", "v", x.v, x.B * x.H * x.M * x.Dv)) return e;
    if (x.bias != nullptr) {
        const int64_t n = x.bias_shape[0] * x.bias_shape[1] * x.bias_shape[2] * x.bias_shape[3];
        if (Error e = check_finite("GatedAttention", "bias", x.bias, n, /*allow_neg_inf=*/true)) return e;
    }
    if (x.log_f != nullptr)
        if (Error e = check_finite("GatedAttention", "log_f", x.log_f, x.B * x.H * x.N)) return e;
    return {};
}

}  // namespace

Error gated_attention_cpu(const GatedAttentionArgs& x, const ParallelFor& pf) {
    int64_t bs[4] = {0, 0, 0, 0};
    if (Error e = validate(x, bs)) return e;
    GatedAttentionShape s{x.B, x.H, x.N, x.M, x.D, x.Dv, x.scale, x.causal || x.log_f != nullptr,
                          {bs[0], bs[1], bs[2], bs[3]}};
    // K transposed once per (b, h): the logits tiles then read keys with unit stride.
    const int64_t m_pad = (x.M + kChunk - 1) / kChunk * kChunk;
    std::vector<float> k_t(static_cast<size_t>(x.B * x.H * x.D * m_pad), 0.0f);
    pf(x.B * x.H, [&](int64_t bh) {
        const float* k = x.k + bh * x.M * x.D;
        float* kt = k_t.data() + bh * x.D * m_pad;
        for (int64_t j = 0; j < x.M; ++j)
            for (int64_t d = 0; d < x.D; ++d) kt[d * m_pad + j] = k[j * x.D + d];
    });
    const int64_t row_blocks = (x.N + kRows - 1) / kRows;
    pf(x.B * x.H * row_blocks, [&](int64_t item) {
        const int64_t bh = item / row_blocks, r0 = (item % row_blocks) * kRows;
        const int64_t rows = (r0 + kRows < x.N ? r0 + kRows : x.N) - r0;
        const int64_t bi = bh / x.H, hi = bh % x.H;
        const float* v = x.v + bh * x.M * x.Dv;
        // Keys this block can see at most (causal rows see a prefix). K^T rows are padded to whole
        // key chunks with zeros; padded keys are masked by ga_add_bias (they lie beyond every limit).
        const int64_t keys = ga_key_limit(s, r0 + rows - 1);
        const float* kt = k_t.data() + bh * x.D * m_pad;
        // Query rows padded to whole row groups with zeros (their results are discarded).
        std::vector<float> q(static_cast<size_t>(kRows * x.D), 0.0f);
        std::copy(x.q + (bh * x.N + r0) * x.D, x.q + (bh * x.N + r0 + rows) * x.D, q.begin());
        std::vector<double> c;
        if (x.log_f != nullptr) {
            // Cumulative log forget gates; only differences c_i - c_j enter the softmax.
            c.resize(static_cast<size_t>(x.N));
            const float* lf = x.log_f + bh * x.N;
            double run = 0.0;
            for (int64_t j = 0; j < x.N; ++j) c[j] = (run += lf[j]);
        }
        std::vector<float> acc(static_cast<size_t>(kRows * x.Dv), 0.0f), m(kRows, kNegInf), l(kRows, 0.0f);
        std::vector<float> sc(static_cast<size_t>(kRows * kKeys));  // every entry read is written first
        for (int64_t j0 = 0; j0 < keys; j0 += kKeys) {
            const int64_t kb = j0 + kKeys < keys ? kKeys : keys - j0;
            const int64_t kb_pad = (kb + kChunk - 1) / kChunk * kChunk;
            for (int64_t g = 0; g < rows; g += kAccGroup) {
                float* sg = sc.data() + g * kKeys;
                for (int64_t gl = g; gl < g + kAccGroup && gl < rows; gl += kGroup)
                    for (int64_t jc = 0; jc < kb_pad; jc += kChunk)
                        ga_logits_tile<kGroup, kChunks>(q.data() + gl * x.D, x.D, kt + j0 + jc, m_pad, x.D, x.scale,
                                                       sc.data() + gl * kKeys + jc, kKeys);
                for (int64_t r = g; r < g + kAccGroup; ++r) {
                    float* sr = sc.data() + r * kKeys;
                    if (r >= rows) {  // padding row: contributes nothing
                        for (int64_t j = 0; j < kb; ++j) sr[j] = 0.0f;
                        continue;
                    }
                    const int64_t i = r0 + r;
                    const float* bias_row = x.bias ? x.bias + bi * bs[0] + hi * bs[1] + i * bs[2] : nullptr;
                    ga_add_bias(sr, kb, i, j0, bias_row, bs[3], c.empty() ? nullptr : c.data(), ga_key_limit(s, i));
                    ga_softmax_step(sr, kb, m[r], l[r], acc.data() + r * x.Dv, x.Dv);
                }
                ga_accumulate_tile<kAccGroup, kChunks>(sg, kKeys, kb, v + j0 * x.Dv, x.Dv, x.Dv, acc.data() + g * x.Dv,
                                                       x.Dv);
            }
        }
        for (int64_t r = 0; r < rows; ++r)
            ga_finish(acc.data() + r * x.Dv, l[r], x.Dv, x.o + (bh * x.N + r0 + r) * x.Dv);
    });
    return {};
}

}  // namespace ef
