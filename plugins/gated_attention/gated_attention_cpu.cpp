// GatedAttention on the CPU: validation, per-head scratch (K transposed, cumulative forget gates)
// and threading over (batch, head, block of query rows) around the shared math core.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <sstream>
#include <vector>

#include "ef_cpu.h"
#include "gated_attention_core.h"

namespace ef {

namespace {

constexpr int64_t kRows = 32;   // query rows per work item (a multiple of kGroup)
// Keys per online-softmax tile, at most: a whole row of up to 1024 keys is one tile, so the
// softmax is exact in one pass (no rescaling) and each bias row is read as one contiguous run
// (32 rows x 1024 keys of scratch = 128 KiB, inside L2).
constexpr int64_t kMaxKeys = 1024;
// Register tiles: R rows x NC 16-float vectors of accumulators. FMA latency (4 cycles) times two
// FMA pipes needs >= 8 independent accumulators to keep the pipes full. AVX-512 has 32 vector
// registers, room for 8 x 2 tiles (16 accumulators); AVX2 holds a 16-float vector in two of its
// 16 registers, so it stays at 4 x 1 (logits) and 8 x 1 (accumulate).
#if defined(__AVX512F__)
constexpr int kGroup = 8;       // rows per logits register tile
constexpr int kAccGroup = 8;    // rows per accumulate register tile (a multiple of kGroup)
constexpr int kChunks = 2;      // 16-key (and 16-column) register tiles per logits/accumulate call
#else
constexpr int kGroup = 4;
constexpr int kAccGroup = 8;
constexpr int kChunks = 1;
#endif
constexpr int64_t kChunk = 16 * kChunks;

// Register tiles of exactly `rows` rows (1 .. R): the last rows of a block get a smaller tile
// instead of padding rows that would be computed and thrown away.
template <int NC, int R = kGroup>
void logits_rows(int64_t rows, const float* q, int64_t D, const float* kt, int64_t kt_stride, float scale, float* s,
                 int64_t s_stride, const float* bias = nullptr, int64_t bias_stride = 0) {
    if constexpr (R > 1)
        if (rows < R) return logits_rows<NC, R - 1>(rows, q, D, kt, kt_stride, scale, s, s_stride, bias, bias_stride);
    ga_logits_tile<R, NC>(q, D, kt, kt_stride, D, scale, s, s_stride, bias, bias_stride);
}

template <int R = kAccGroup>
void accumulate_rows(int64_t rows, const float* p, int64_t p_stride, int64_t kb, const float* v, int64_t Dv, float* acc) {
    if constexpr (R > 1)
        if (rows < R) return accumulate_rows<R - 1>(rows, p, p_stride, kb, v, Dv, acc);
    ga_accumulate_tile<R, kChunks>(p, p_stride, kb, v, Dv, Dv, acc, Dv);
}

// Maximum of s[0, n) and whether any value is NaN or +inf, in one pass over the row.
float max_checked(const float* EF_RESTRICT s, int64_t n, bool& bad) {
    float mx = kNegInf;
    int64_t j = 0;
#if defined(__GNUC__) && !defined(__CUDACC__)
    F16 lanes = f16_splat(kNegInf);
    I16 bad_lanes = I16{};
    const I16 exp_bits = I16{} + 0x7f800000, neg_inf_bits = I16{} + static_cast<int32_t>(0xff800000u);
    for (; j + 16 <= n; j += 16) {
        const F16 v = f16_load(s + j);
        lanes = f16_max(lanes, v);
        I16 u;
        std::memcpy(&u, &v, sizeof u);
        bad_lanes |= ((u & exp_bits) == exp_bits) & (u != neg_inf_bits);
    }
    mx = f16_reduce_max(lanes);
    for (int i = 0; i < 16; ++i) bad = bad || bad_lanes[i] != 0;
#endif
    if (first_non_finite(s + j, n - j, /*allow_neg_inf=*/true) >= 0) bad = true;
    for (; j < n; ++j) mx = ef_fmax(mx, s[j]);
    return mx;
}

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
    // bias is not scanned here: it is the largest input (H * N * M) and a separate pass over it
    // costs as much as adding it. Its values are checked where they land, in the logits (below).
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
    // Scratch is left uninitialised where every entry read is written first (zeroing it costs a
    // pass over memory per call); only K^T's padding columns need zeros.
    std::unique_ptr<float[]> k_t(new float[static_cast<size_t>(x.B * x.H * x.D * m_pad)]);
    pf(x.B * x.H, [&](int64_t bh) {
        const float* k = x.k + bh * x.M * x.D;
        float* kt = k_t.get() + bh * x.D * m_pad;
        for (int64_t d = 0; d < x.D; ++d)  // unit-stride writes: strided reads cost less than strided writes
            for (int64_t j = 0; j < x.M; ++j) kt[d * m_pad + j] = k[j * x.D + d];
        for (int64_t d = 0; d < x.D; ++d) std::fill(kt + d * m_pad + x.M, kt + (d + 1) * m_pad, 0.0f);
    });
    // Set when a logit (after the bias) is NaN or +inf: a bad bias value or a q.k overflow.
    std::atomic<bool> bad_logits{false};
    const int64_t row_blocks = (x.N + kRows - 1) / kRows;
    pf(x.B * x.H * row_blocks, [&](int64_t item) {
        const int64_t bh = item / row_blocks, r0 = (item % row_blocks) * kRows;
        const int64_t rows = (r0 + kRows < x.N ? r0 + kRows : x.N) - r0;
        const int64_t bi = bh / x.H, hi = bh % x.H;
        const float* v = x.v + bh * x.M * x.Dv;
        // Keys this block can see at most (causal rows see a prefix). K^T rows are padded to whole
        // key chunks with zeros; padded keys are masked by ga_add_bias (they lie beyond every limit).
        const int64_t keys = ga_key_limit(s, r0 + rows - 1);
        const float* kt = k_t.get() + bh * x.D * m_pad;
        // The block's query rows, as rows (for the register tiles) and transposed, zero-padded to
        // kRows (for the column tail: 16-row vectors).
        std::vector<float> q(x.q + (bh * x.N + r0) * x.D, x.q + (bh * x.N + r0 + rows) * x.D);
        std::vector<float> q_t;  // filled on the first key tile with a column tail
        const float* k_rows = x.k + bh * x.M * x.D;
        std::vector<double> c;
        if (x.log_f != nullptr) {
            // Cumulative log forget gates; only differences c_i - c_j enter the softmax.
            c.resize(static_cast<size_t>(x.N));
            const float* lf = x.log_f + bh * x.N;
            double run = 0.0;
            for (int64_t j = 0; j < x.N; ++j) c[j] = (run += lf[j]);
        }
        std::vector<float> acc(static_cast<size_t>(kRows * x.Dv), 0.0f), m(kRows, kNegInf), l(kRows, 0.0f);
        // A contiguous, non-causal bias row (RMT's decay table) is added inside the logits tiles.
        const bool fused_bias = x.bias != nullptr && bs[3] == 1 && c.empty() && !s.causal;
        const int64_t kKeys = std::min(kMaxKeys, (keys + kChunk - 1) / kChunk * kChunk);  // a multiple of kChunk
        std::unique_ptr<float[]> sc(new float[static_cast<size_t>(kRows * kKeys)]);  // written before read
        for (int64_t j0 = 0; j0 < keys; j0 += kKeys) {
            const int64_t kb = j0 + kKeys < keys ? kKeys : keys - j0;
            // Keys [0, tiled) go through register tiles (whole chunks, then a 16-key tile with
            // zero-padded keys when 4 or more are left); the last 1-3, one column at a time (a column
            // needs a transposed copy of q, worth it only when it saves most of a padded tile).
            const int64_t full = kb / kChunk * kChunk;
            int64_t tiled = full;
            while (kb - tiled >= 4) tiled += 16;  // K^T is zero-padded to whole chunks
            if (tiled < kb && q_t.empty()) {
                q_t.assign(static_cast<size_t>(x.D * kRows), 0.0f);
                for (int64_t d = 0; d < x.D; ++d)
                    for (int64_t r = 0; r < rows; ++r) q_t[d * kRows + r] = q[r * x.D + d];
            }
            for (int64_t j = tiled; j < kb; ++j)
                ga_logits_column<kRows / 16>(q_t.data(), kRows, k_rows + (j0 + j) * x.D, x.D, x.scale, sc.get() + j,
                                             kKeys, rows);
            for (int64_t g = 0; g < rows; g += kAccGroup) {
                const int64_t g_rows = std::min<int64_t>(kAccGroup, rows - g);
                for (int64_t gl = g; gl < g + g_rows; gl += kGroup) {
                    const int64_t n = std::min<int64_t>(kGroup, g + g_rows - gl);
                    const float* bias_g = fused_bias ? x.bias + bi * bs[0] + hi * bs[1] + (r0 + gl) * bs[2] + j0 : nullptr;
                    for (int64_t jc = 0; jc < full; jc += kChunk)
                        logits_rows<kChunks>(n, q.data() + gl * x.D, x.D, kt + j0 + jc, m_pad, x.scale,
                                             sc.get() + gl * kKeys + jc, kKeys, bias_g ? bias_g + jc : nullptr, bs[2]);
                    for (int64_t jc = full; jc < tiled; jc += 16)
                        logits_rows<1>(n, q.data() + gl * x.D, x.D, kt + j0 + jc, m_pad, x.scale,
                                       sc.get() + gl * kKeys + jc, kKeys);
                }
                for (int64_t r = g; r < g + g_rows; ++r) {
                    float* sr = sc.get() + r * kKeys;
                    const int64_t i = r0 + r;
                    const float* bias_row = x.bias ? x.bias + bi * bs[0] + hi * bs[1] + i * bs[2] : nullptr;
                    // NaN or +inf logits would be dropped by the softmax's masked exp, so they are
                    // caught here, in the same pass over the row (in L1) that takes its maximum.
                    const int64_t from = fused_bias ? full : 0;  // whole chunks got their bias in the tile
                    ga_add_bias(sr + from, kb - from, i, j0 + from, bias_row, bs[3], c.empty() ? nullptr : c.data(),
                                ga_key_limit(s, i));
                    bool bad = false;
                    const float tmax = max_checked(sr, kb, bad);
                    if (bad) bad_logits.store(true, std::memory_order_relaxed);
                    ga_softmax_step_max(sr, kb, tmax, m[r], l[r], acc.data() + r * x.Dv, x.Dv);
                }
                accumulate_rows(g_rows, sc.get() + g * kKeys, kKeys, kb, v + j0 * x.Dv, x.Dv, acc.data() + g * x.Dv);
            }
        }
        for (int64_t r = 0; r < rows; ++r)
            ga_finish(acc.data() + r * x.Dv, l[r], x.Dv, x.o + (bh * x.N + r0 + r) * x.Dv);
    });
    if (bad_logits.load()) {
        // The slow, exact scan runs only here, to name the input and the index.
        if (x.bias != nullptr) {
            const int64_t n = x.bias_shape[0] * x.bias_shape[1] * x.bias_shape[2] * x.bias_shape[3];
            if (Error e = check_finite("GatedAttention", "bias", x.bias, n, /*allow_neg_inf=*/true)) return e;
        }
        return {kNonFinite, "GatedAttention: scale * q.k overflows float32 (the logits are not finite); "
                            "the inputs are finite but too large"};
    }
    return {};
}

}  // namespace ef
