// GatedAttention on the CPU: validation, per-head scratch (K transposed, cumulative forget gates)
// and threading over (batch, head, block of query rows) around the shared math core.
#include <sstream>
#include <vector>

#include "ef_cpu.h"
#include "gated_attention_core.h"

namespace ef {

namespace {

constexpr int64_t kRows = 32;   // query rows per work item
constexpr int64_t kKeys = 64;   // keys per online-softmax tile

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
    const int64_t row_blocks = (x.N + kRows - 1) / kRows;
    pf(x.B * x.H * row_blocks, [&](int64_t item) {
        const int64_t bh = item / row_blocks, r0 = (item % row_blocks) * kRows;
        const int64_t r1 = r0 + kRows < x.N ? r0 + kRows : x.N;
        const int64_t bi = bh / x.H, hi = bh % x.H;
        const float* q = x.q + bh * x.N * x.D;
        const float* k = x.k + bh * x.M * x.D;
        const float* v = x.v + bh * x.M * x.Dv;
        // Keys this block can see at most (causal rows see a prefix).
        const int64_t keys = ga_key_limit(s, r1 - 1);
        std::vector<float> kt(static_cast<size_t>(x.D * keys));
        for (int64_t j = 0; j < keys; ++j)
            for (int64_t d = 0; d < x.D; ++d) kt[d * keys + j] = k[j * x.D + d];
        std::vector<double> c;
        if (x.log_f != nullptr) {
            // Cumulative log forget gates; only differences c_i - c_j enter the softmax.
            c.resize(static_cast<size_t>(x.N));
            const float* lf = x.log_f + bh * x.N;
            double run = 0.0;
            for (int64_t j = 0; j < x.N; ++j) c[j] = (run += lf[j]);
        }
        const int64_t rows = r1 - r0;
        std::vector<float> acc(static_cast<size_t>(rows * x.Dv), 0.0f), m(rows, kNegInf), l(rows, 0.0f), sc(kKeys);
        for (int64_t j0 = 0; j0 < keys; j0 += kKeys) {
            const int64_t kb = j0 + kKeys < keys ? kKeys : keys - j0;
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t i = r0 + r, limit = ga_key_limit(s, i);
                if (j0 >= limit) continue;
                ga_logits(q + i * x.D, kt.data() + j0, keys, x.D, kb, x.scale, sc.data());
                const float* bias_row = x.bias ? x.bias + bi * bs[0] + hi * bs[1] + i * bs[2] : nullptr;
                ga_add_bias(sc.data(), kb, i, j0, bias_row, bs[3], c.empty() ? nullptr : c.data(), limit);
                ga_update(sc.data(), kb, v + j0 * x.Dv, x.Dv, x.Dv, acc.data() + r * x.Dv, m[r], l[r]);
            }
        }
        for (int64_t r = 0; r < rows; ++r) ga_finish(acc.data() + r * x.Dv, l[r], x.Dv, x.o + (bh * x.N + r0 + r) * x.Dv);
    });
    return {};
}

}  // namespace ef
