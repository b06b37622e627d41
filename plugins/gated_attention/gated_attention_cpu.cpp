// GatedAttention on the CPU: validation, per-head scratch (K packed in key panels, cumulative
// forget gates) and threading over (batch, head, block of query rows) around the shared math core.
#include <algorithm>
#include <climits>
#include <atomic>
#include <cstring>
#include <memory>
#include <sstream>
#include <vector>

#include "ef_cpu.h"
#include "gated_attention_core.h"

namespace ef {
namespace EF_ISA_NS {  // one copy per instruction-set path (ef_cpu.h)

namespace {

constexpr int64_t kRows = 32;   // query rows per work item
// Keys per online-softmax tile, at most: a whole row of up to 1024 keys is one tile, so the
// softmax is exact in one pass (no rescaling) and each bias row is read as one contiguous run
// (32 rows x 1024 keys of scratch = 128 KiB, inside L2).
constexpr int64_t kMaxKeys = 1024;
// Register tiles: R rows x NC vectors of accumulators. FMA latency (4 cycles) times two FMA
// pipes needs >= 8 independent accumulators to keep the pipes full. AVX-512 has 32 registers of
// 16 floats: 8 rows x 2 vectors (16 accumulators). AVX2 has 16 registers of 8 floats: 6 rows x 2
// vectors of 8 (12 accumulators + 2 key/value loads + 1 broadcast = 15 registers; the classic
// 6 x 16 SGEMM micro-tile), both for the logits and for the accumulation. Generic: vectors of 4
// (one SSE2 / NEON register), 3 rows (SSE2, 16 registers) or 6 rows (NEON, 32) x 4 vectors.
#if defined(__AVX512F__)
using Vt = F16;
constexpr int kGroup = 8;       // rows per logits register tile
constexpr int kAccGroup = 8;    // rows per accumulate register tile (a multiple of kGroup)
constexpr int kChunks = 2;      // vectors of keys (and of value columns) per logits/accumulate tile
#elif defined(__AVX2__)
using Vt = F8;
constexpr int kGroup = 6;
constexpr int kAccGroup = 6;
constexpr int kChunks = 2;
#elif defined(__aarch64__)
using Vt = F4;                  // NEON: 32 registers of 4 floats: 6 rows x 4 vectors (24 accumulators)
constexpr int kGroup = 6;
constexpr int kAccGroup = 6;
constexpr int kChunks = 4;
#else
using Vt = F4;                  // SSE2 and others: 16 registers of 4 floats: 3 rows x 4 vectors
constexpr int kGroup = 3;
constexpr int kAccGroup = 3;
constexpr int kChunks = 4;
#endif
constexpr int64_t kW = VecOps<Vt>::W;
constexpr int64_t kChunk = kW * kChunks;  // keys per packed panel and per whole logits tile

// Register tiles of exactly `rows` rows (1 .. R): the last rows of a block get a smaller tile
// instead of padding rows that would be computed and thrown away.
template <int NC, int R = kGroup>
void logits_rows(int64_t rows, const float* q, int64_t D, const float* kt, int64_t kt_stride, float scale, float* s,
                 int64_t s_stride, const float* bias = nullptr, int64_t bias_stride = 0) {
    if constexpr (R > 1)
        if (rows < R) return logits_rows<NC, R - 1>(rows, q, D, kt, kt_stride, scale, s, s_stride, bias, bias_stride);
    ga_logits_tile<R, NC, Vt>(q, D, kt, kt_stride, D, scale, s, s_stride, bias, bias_stride);
}

template <int R = kAccGroup>
void accumulate_rows(int64_t rows, const float* p, int64_t p_stride, int64_t kb, const float* v, int64_t Dv, float* acc) {
    if constexpr (R > 1)
        if (rows < R) return accumulate_rows<R - 1>(rows, p, p_stride, kb, v, Dv, acc);
    ga_accumulate_tile<R, kChunks, Vt>(p, p_stride, kb, v, Dv, Dv, acc, Dv);
}

// The softmax passes over a row of logits, on register vectors of the path's width (Vt, kW
// lanes): 16-float vector code compiled for AVX2 fell back to lane-by-lane compares, selects and
// stack spills (it was half of a call), so each path runs these on its own vector width.
// A scratch row is writable up to the next multiple of kChunk keys, so its last partial vector is
// computed whole with the lanes past n masked out of the maximum, the check and the sum (a scalar
// tail loop cost 6% of a call at N = 196).
#if defined(__GNUC__) && !defined(__CUDACC__)
template <typename V>
struct LaneInts;
template <>
struct LaneInts<F16> {
    using I = I16;
    using U = U16;
};
template <>
struct LaneInts<F4> {
    typedef int32_t I __attribute__((vector_size(16)));
    typedef uint32_t U __attribute__((vector_size(16)));
};
template <>
struct LaneInts<F8> {
    typedef int32_t I __attribute__((vector_size(32)));
    typedef uint32_t U __attribute__((vector_size(32)));
};
using It = LaneInts<Vt>::I;
using Ut = LaneInts<Vt>::U;

inline Vt vsplat(float a) { return Vt{} + a; }
inline Vt vload(const float* p) { return VecOps<Vt>::load(p); }
inline void vstore(float* p, const Vt& x) { VecOps<Vt>::store(p, x); }
template <typename V>
inline V vmax(const V& a, const V& b) {
    return a > b ? a : b;
}

// Horizontal reductions: F16 by the core's shuffle tree, F8 by its own (3 steps).
inline float reduce_max(const F16& a) { return f16_reduce_max(a); }
inline float reduce_add(const F16& a) { return f16_reduce_add(a); }
inline F8 fold8(const F8& a, int step) {
    switch (step) {
        case 4: return __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3);
        case 2: return __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5);
        default: return __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6);
    }
}
inline F4 fold4(const F4& a, int step) {
    return step == 2 ? __builtin_shufflevector(a, a, 2, 3, 0, 1) : __builtin_shufflevector(a, a, 1, 0, 3, 2);
}
inline F4 fold(const F4& a, int step) { return fold4(a, step); }
inline F8 fold(const F8& a, int step) { return fold8(a, step); }
// F4 and F8: a shuffle tree of log2(W) steps, halving the distance each step.
template <typename V>
inline float reduce_max(V a) {
    for (int step = VecOps<V>::W / 2; step >= 1; step /= 2) a = vmax(a, fold(a, step));
    return a[0];
}
template <typename V>
inline float reduce_add(V a) {
    for (int step = VecOps<V>::W / 2; step >= 1; step /= 2) a += fold(a, step);
    return a[0];
}

// 2^t for t <= 0 on a vector: the core's exp2_nonpos (ef_core.h) lane-wise, branch-free.
inline Vt vexp2_nonpos(const Vt& t) {
    const Vt a = t + kRoundMagic;
    const Vt p = exp2_poly(t - (a - kRoundMagic));
    Ut pb, ab;
    std::memcpy(&pb, &p, sizeof pb);
    std::memcpy(&ab, &a, sizeof ab);
    const Ut e = (pb + (ab << 23)) & (Ut)(t >= kExp2Min);  // all-ones lanes where t >= -125
    Vt out;
    std::memcpy(&out, &e, sizeof out);
    return out;
}

// exp(s - m) given neg_m_log2e = splat(-m log2 e) (as the core's ga_exp_shifted).
inline Vt vexp_shifted(const Vt& s, const Vt& neg_m_log2e) { return vexp2_nonpos(s * kLog2e + neg_m_log2e); }

inline It lane_index() {
    It r{};
    for (int i = 0; i < kW; ++i) r[i] = i;
    return r;
}
inline It live_lanes(int64_t left) { return lane_index() < static_cast<int32_t>(left < kW ? left : kW); }

// Whether any logit is NaN or +inf (-inf is allowed: it masks keys), tracked without a compare
// per vector: the bits of +inf and positive NaNs are the largest signed integers (>= 0x7f800000),
// those of negative NaNs the unsigned integers above -inf's 0xff800000. So a running signed and a
// running unsigned integer maximum per lane (one vpmaxsd and one vpmaxud per vector; a compare,
// and and or per vector kept its mask accumulator in memory on AVX2 and was 20% of a call) say it
// once per work item (any_bad).
struct BadLanes {
    It smax = It{} + INT32_MIN;
    Ut umax = Ut{};
};

inline void track(BadLanes& bad, const Vt& v) {
    It si;
    Ut ui;
    std::memcpy(&si, &v, sizeof si);
    std::memcpy(&ui, &v, sizeof ui);
    bad.smax = bad.smax > si ? bad.smax : si;
    bad.umax = bad.umax > ui ? bad.umax : ui;
}

// Maximum of s[0, n) and the NaN/+inf tracking, in one pass over the row.
float max_checked(const float* EF_RESTRICT s, int64_t n, BadLanes& bad_out) {
    Vt lanes = vsplat(kNegInf);
    BadLanes bad = bad_out;  // in registers for the loop
    int64_t j = 0;
    for (; j + kW <= n; j += kW) {  // whole vectors: no lane mask
        const Vt v = vload(s + j);
        lanes = vmax(lanes, v);
        track(bad, v);
    }
    if (j < n) {  // the last partial vector, its lanes past n replaced by -inf
        const It live = live_lanes(n - j);
        const Vt v = live ? vload(s + j) : vsplat(kNegInf);
        lanes = vmax(lanes, v);
        track(bad, v);
    }
    bad_out = bad;
    return reduce_max(lanes);
}

// Whether a logit tracked in `bad` was NaN or +inf.
bool any_bad(const BadLanes& bad) {
    for (int i = 0; i < kW; ++i)
        if (bad.smax[i] >= 0x7f800000 || bad.umax[i] > 0xff800000u) return true;
    return false;
}

// s[j] += bias[j] for j < n (contiguous bias): whole vectors, then the last n % kW one by one
// (the bias row ends at M, so a whole last vector could read past the table).
void add_bias_contiguous(float* EF_RESTRICT s, const float* EF_RESTRICT bias, int64_t n) {
    int64_t j = 0;
    for (; j + kW <= n; j += kW) vstore(s + j, vload(s + j) + vload(bias + j));
    for (; j < n; ++j) s[j] += bias[j];
}

// One online-softmax step of a row given its maximum: ga_softmax_step_max with the row's last
// partial vector computed whole (the scratch row has room) instead of lane by lane.
void softmax_step(float* EF_RESTRICT s, int64_t kb, float tmax, float& m, float& l, float* EF_RESTRICT acc,
                  int64_t Dv) {
    if (tmax == kNegInf) {
        for (int64_t j = 0; j < kb; ++j) s[j] = 0.0f;
        return;
    }
    const float m_new = ef_fmax(m, tmax);
    const Vt neg_m = vsplat(-m_new * kLog2e);
    Vt sum = Vt{};
    int64_t j = 0;
    for (; j + kW <= kb; j += kW) {  // whole vectors: no lane mask
        const Vt e = vexp_shifted(vload(s + j), neg_m);
        vstore(s + j, e);
        sum += e;
    }
    if (j < kb) {  // the last partial vector, its lanes past kb out of the sum
        const Vt e = vexp_shifted(vload(s + j), neg_m);
        vstore(s + j, e);
        sum += live_lanes(kb - j) ? e : Vt{};
    }
    if (m == kNegInf) {  // the row's first tile with a live key: acc and l are still zero, nothing to rescale
        m = m_new;
        l = reduce_add(sum);
        return;
    }
    ga_softmax_rescale(m_new, reduce_add(sum), m, l, acc, Dv);
}

// o = acc / l on whole vectors (ga_finish, lane by lane, was 3% of a call at N = 49).
void finish_row(const float* EF_RESTRICT acc, float l, int64_t Dv, float* EF_RESTRICT o) {
    if (!(l > 0.0f)) return ga_finish(acc, l, Dv, o);  // all keys masked: NaN, as softmax over -inf
    const float inv = 1.0f / l;
    const Vt vinv = vsplat(inv);
    int64_t e = 0;
    for (; e + kW <= Dv; e += kW) vstore(o + e, vload(acc + e) * vinv);
    for (; e < Dv; ++e) o[e] = acc[e] * inv;
}
#else
using BadLanes = bool;
float max_checked(const float* s, int64_t n, BadLanes& bad) {
    if (first_non_finite(s, n, /*allow_neg_inf=*/true) >= 0) bad = true;
    return ga_tile_max(s, n);
}
bool any_bad(const BadLanes& bad) { return bad; }
void add_bias_contiguous(float* s, const float* bias, int64_t n) {
    for (int64_t j = 0; j < n; ++j) s[j] += bias[j];
}
void softmax_step(float* s, int64_t kb, float tmax, float& m, float& l, float* acc, int64_t Dv) {
    ga_softmax_step_max(s, kb, tmax, m, l, acc, Dv);
}
void finish_row(const float* acc, float l, int64_t Dv, float* o) { ga_finish(acc, l, Dv, o); }
#endif

// K transposed and packed in panels of kChunk keys: key j, dimension d at
// kt[(j / kChunk) * D * kChunk + d * kChunk + j % kChunk]. A register tile then reads its keys as
// one sequential stream (D * kChunk floats) instead of D rows of a long transposed matrix, which
// re-streamed from L2 with a large stride for every group of 8 query rows.
inline int64_t packed_key(int64_t j, int64_t d, int64_t D) { return (j / kChunk) * D * kChunk + d * kChunk + j % kChunk; }

// Packs k (M, D) into kt as above, with zeros for the last panel's keys past M. Whole 8 x 8 blocks
// are transposed in registers (unpack, shuffle, lane swap: 24 shuffles per 64 values); a scalar
// strided copy was 13% of a call at N = 49.
void pack_keys(const float* EF_RESTRICT k, int64_t M, int64_t D, float* EF_RESTRICT kt) {
    // The last panel is zeroed whole first (its keys past M must read as zeros); the copy below
    // overwrites its real keys. Whole-row vector stores: a std::fill of the few padding floats per
    // dimension compiled to `rep stos`, whose start-up cost was half of this function at N = 49.
    if (M % kChunk != 0) {
        float* last = kt + packed_key(M / kChunk * kChunk, 0, D);
        for (int64_t i = 0; i < D * kChunk; i += kW) vstore(last + i, Vt{});
    }
    int64_t j0 = 0, d0 = 0;
#if defined(__GNUC__) && !defined(__CUDACC__)
    typedef float F8 __attribute__((vector_size(32)));
    for (j0 = 0; j0 + 8 <= M; j0 += 8)
        for (d0 = 0; d0 + 8 <= D; d0 += 8) {
            F8 r[8], t[8], u[8];
            for (int i = 0; i < 8; ++i) std::memcpy(&r[i], k + (j0 + i) * D + d0, sizeof(F8));
            for (int i = 0; i < 8; i += 2) {
                t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
                t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
            }
            for (int i = 0; i < 8; i += 4)
                for (int h = 0; h < 2; ++h) {
                    u[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
                    u[i + 2 * h + 1] = __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
                }
            for (int i = 0; i < 4; ++i) {  // 8 keys never straddle a panel (kChunk is a multiple of 8)
                const F8 lo = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
                const F8 hi = __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
                std::memcpy(kt + packed_key(j0, d0 + i, D), &lo, sizeof(F8));
                std::memcpy(kt + packed_key(j0, d0 + i + 4, D), &hi, sizeof(F8));
            }
        }
    // Left over: the last D % 8 dimensions of the whole blocks of keys, then the last M % 8 keys.
    for (int64_t d = d0; d < D; ++d)
        for (int64_t j = 0; j < j0; ++j) kt[packed_key(j, d, D)] = k[j * D + d];
#endif
    for (int64_t d = 0; d < D; ++d)
        for (int64_t j = j0; j < M; ++j) kt[packed_key(j, d, D)] = k[j * D + d];
}

Error bad_shape(const std::string& what) { return {kBadShape, "GatedAttention: " + what}; }

Error validate_shapes(const GatedAttentionArgs& x, int64_t bias_strides[4]) {
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
    // The values of q, k, v and log_f are checked inside the parallel passes below (a serial scan
    // of every input before the work costs as much as the work at small N); `value_errors` names
    // the first bad input exactly, and runs only when a pass found one.
    return {};
}

// A spin-wait hint (the other hyperthread gets the core's resources while this one waits).
inline void pause_cpu() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// The first non-finite input value, in the order q, k, v, log_f, bias (the exact, slow scan that
// runs only after a fast check failed).
Error value_errors(const GatedAttentionArgs& x) {
    if (Error e = check_finite("GatedAttention", "q", x.q, x.B * x.H * x.N * x.D)) return e;
    if (Error e = check_finite("GatedAttention", "k", x.k, x.B * x.H * x.M * x.D)) return e;
    if (Error e = check_finite("GatedAttention", "v", x.v, x.B * x.H * x.M * x.Dv)) return e;
    if (x.log_f != nullptr)
        if (Error e = check_finite("GatedAttention", "log_f", x.log_f, x.B * x.H * x.N)) return e;
    if (x.bias != nullptr) {
        const int64_t n = x.bias_shape[0] * x.bias_shape[1] * x.bias_shape[2] * x.bias_shape[3];
        if (Error e = check_finite("GatedAttention", "bias", x.bias, n, /*allow_neg_inf=*/true)) return e;
    }
    return {};
}

// Per-thread scratch of the work items, kept between calls (ONNX Runtime's pool threads live as
// long as the session): allocating it per item cost a few percent of a call at N <= 196.
struct ItemScratch {
    std::vector<float> sc, acc, m, l;
    std::vector<double> c;
};

template <typename T>
T* at_least(std::vector<T>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    return v.data();
}

}  // namespace

Error gated_attention_cpu(const GatedAttentionArgs& x, const ParallelFor& pf) {
    int64_t bs[4] = {0, 0, 0, 0};
    if (Error e = validate_shapes(x, bs)) return e;
    GatedAttentionShape s{x.B, x.H, x.N, x.M, x.D, x.Dv, x.scale, x.causal || x.log_f != nullptr,
                          {bs[0], bs[1], bs[2], bs[3]}};
    // Set when an input value is NaN or inf (-inf is allowed in the bias), or when a logit (after
    // the bias) is NaN or +inf: a bad bias value or a q.k overflow. The work still runs to the end
    // on such values (it never indexes by them); its output is then discarded for the error.
    std::atomic<bool> bad_values{false}, bad_logits{false};
    // K packed once per (b, h) (pack_keys): the logits tiles then read keys as one stream. The same
    // pass checks this (b, h)'s k, v and log_f, which it has in cache or is about to.
    const int64_t m_pad = (x.M + kChunk - 1) / kChunk * kChunk;
    // Scratch is left uninitialised where every entry read is written first (zeroing it costs a
    // pass over memory per call); only the packed keys' padding needs zeros.
    // Kept by the calling thread between calls (the pool's workers read it only during this call):
    // a fresh allocation of a few hundred KiB per call was mapped and zero-filled by the kernel
    // each time (6% of a call at N = 784).
    thread_local std::vector<float> k_t_buffer;
    float* const k_t_data = at_least(k_t_buffer, x.B * x.H * x.D * m_pad);
    auto prepare_head = [&](int64_t bh) {
        const float* k = x.k + bh * x.M * x.D;
        float* kt = k_t_data + bh * x.D * m_pad;
        bool bad = first_non_finite(k, x.M * x.D) >= 0 || first_non_finite(x.v + bh * x.M * x.Dv, x.M * x.Dv) >= 0;
        if (x.log_f != nullptr) bad = bad || first_non_finite(x.log_f + bh * x.N, x.N) >= 0;
        if (bad) bad_values.store(true, std::memory_order_relaxed);
        pack_keys(k, x.M, x.D, kt);
    };
    const int64_t row_blocks = (x.N + kRows - 1) / kRows;
    auto row_block = [&](int64_t bh, int64_t r0) {
        const int64_t rows = (r0 + kRows < x.N ? r0 + kRows : x.N) - r0;
        const int64_t bi = bh / x.H, hi = bh % x.H;
        const float* v = x.v + bh * x.M * x.Dv;
        // The block's query rows, read in place; each row belongs to one block, so this checks q once.
        const float* q = x.q + (bh * x.N + r0) * x.D;
        if (first_non_finite(q, rows * x.D) >= 0) bad_values.store(true, std::memory_order_relaxed);
        // Keys this block can see at most (causal rows see a prefix). Packed keys are padded to whole
        // key chunks with zeros; padded keys are never read past kb below.
        const int64_t keys = ga_key_limit(s, r0 + rows - 1);
        const float* kt = k_t_data + bh * x.D * m_pad;
        const int64_t kKeys = std::min(kMaxKeys, (keys + kChunk - 1) / kChunk * kChunk);  // a multiple of kChunk
        thread_local ItemScratch scratch;
        float* sc = at_least(scratch.sc, kRows * kKeys);  // written before read
        float* acc = at_least(scratch.acc, kRows * x.Dv);
        float* m = at_least(scratch.m, kRows);
        float* l = at_least(scratch.l, kRows);
        std::fill(acc, acc + rows * x.Dv, 0.0f);
        std::fill(m, m + rows, kNegInf);
        std::fill(l, l + rows, 0.0f);
        const double* c = nullptr;
        if (x.log_f != nullptr) {
            // Cumulative log forget gates; only differences c_i - c_j enter the softmax.
            double* cw = at_least(scratch.c, x.N);
            const float* lf = x.log_f + bh * x.N;
            double run = 0.0;
            for (int64_t j = 0; j < x.N; ++j) cw[j] = (run += lf[j]);
            c = cw;
        }
        BadLanes bad_lanes{};  // set where a logit (after the bias) is NaN or +inf; see max_checked
        // A contiguous, non-causal bias row (RMT's decay table) is added inside the logits tiles.
        const bool fused_bias = x.bias != nullptr && bs[3] == 1 && c == nullptr && !s.causal;
        for (int64_t j0 = 0; j0 < keys; j0 += kKeys) {
            const int64_t kb = j0 + kKeys < keys ? kKeys : keys - j0;
            // Keys [0, full) go through whole-chunk register tiles, the rest through one-vector tiles
            // whose last keys are the packed keys' zero padding (computed and never read). A padded tile costs
            // a few FMAs per row; a column-wise tail needed q transposed, which cost more at N <= 64.
            const int64_t full = kb / kChunk * kChunk, tiled = (kb + kW - 1) / kW * kW;
            for (int64_t g = 0; g < rows; g += kAccGroup) {
                const int64_t g_rows = std::min<int64_t>(kAccGroup, rows - g);
                for (int64_t gl = g; gl < g + g_rows; gl += kGroup) {
                    const int64_t n = std::min<int64_t>(kGroup, g + g_rows - gl);
                    const float* bias_g = fused_bias ? x.bias + bi * bs[0] + hi * bs[1] + (r0 + gl) * bs[2] + j0 : nullptr;
                    for (int64_t jc = 0; jc < full; jc += kChunk)
                        logits_rows<kChunks>(n, q + gl * x.D, x.D, kt + packed_key(j0 + jc, 0, x.D), kChunk, x.scale,
                                             sc + gl * kKeys + jc, kKeys, bias_g ? bias_g + jc : nullptr, bs[2]);
                    for (int64_t jc = full; jc < tiled; jc += kW)
                        logits_rows<1>(n, q + gl * x.D, x.D, kt + packed_key(j0 + jc, 0, x.D), kChunk, x.scale,
                                       sc + gl * kKeys + jc, kKeys);
                }
                for (int64_t r = g; r < g + g_rows; ++r) {
                    float* sr = sc + r * kKeys;
                    const int64_t i = r0 + r;
                    const float* bias_row = x.bias ? x.bias + bi * bs[0] + hi * bs[1] + i * bs[2] : nullptr;
                    // NaN or +inf logits would be dropped by the softmax's masked exp, so they are
                    // caught here, in the same pass over the row (in L1) that takes its maximum.
                    if (fused_bias)  // whole chunks got their bias in the tile; no mask applies
                        add_bias_contiguous(sr + full, bias_row + j0 + full, kb - full);
                    else
                        ga_add_bias(sr, kb, i, j0, bias_row, bs[3], c, ga_key_limit(s, i));
                    const float tmax = max_checked(sr, kb, bad_lanes);
                    softmax_step(sr, kb, tmax, m[r], l[r], acc + r * x.Dv, x.Dv);
                }
                accumulate_rows(g_rows, sc + g * kKeys, kKeys, kb, v + j0 * x.Dv, x.Dv, acc + g * x.Dv);
            }
        }
        if (any_bad(bad_lanes)) bad_logits.store(true, std::memory_order_relaxed);
        for (int64_t r = 0; r < rows; ++r) finish_row(acc + r * x.Dv, l[r], x.Dv, x.o + (bh * x.N + r0 + r) * x.Dv);
    };
    // One round trip through the thread pool: the first work item of a head packs its keys (and
    // checks k, v, log_f); the head's other items wait for that instead of a whole second
    // parallel pass, which cost a few microseconds per call at N <= 196.
    const int64_t heads = x.B * x.H;
    // Per head: 0 not packed, 1 being packed, 2 packed.
    std::unique_ptr<std::atomic<int>[]> head_state(new std::atomic<int>[static_cast<size_t>(heads)]);
    for (int64_t bh = 0; bh < heads; ++bh) head_state[bh].store(0, std::memory_order_relaxed);
    auto try_pack = [&](int64_t bh) {  // packs head bh unless another thread has claimed it
        int idle = 0;
        if (!head_state[bh].compare_exchange_strong(idle, 1, std::memory_order_acq_rel)) return false;
        prepare_head(bh);
        head_state[bh].store(2, std::memory_order_release);
        return true;
    };
    pf(heads * row_blocks, [&](int64_t item) {
        const int64_t bh = item / row_blocks;
        if (!try_pack(bh)) {
            // Another thread is packing this head: pack the next unclaimed heads meanwhile (their
            // items come next), then wait for this one.
            for (int64_t h = bh + 1; h < heads && head_state[bh].load(std::memory_order_acquire) != 2; ++h)
                try_pack(h);
            while (head_state[bh].load(std::memory_order_acquire) != 2) pause_cpu();
        }
        row_block(bh, (item % row_blocks) * kRows);
    });
    if (bad_values.load() || bad_logits.load()) {
        // The slow, exact scan runs only here, to name the input and the index.
        if (Error e = value_errors(x)) return e;
        return {kNonFinite, "GatedAttention: scale * q.k overflows float32 (the logits are not finite); "
                            "the inputs are finite but too large"};
    }
    return {};
}

}  // namespace EF_ISA_NS
}  // namespace ef
