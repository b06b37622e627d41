// GatedAttention CUDA kernels. A block of kRows threads handles kRows query rows of one (b, h);
// key and value tiles are staged in shared memory (keys transposed, as the core's ga_logits
// expects) and every thread runs the shared online-softmax core for its row.
#include <cuda_runtime.h>

#include "gated_attention_core.h"
#include "gated_attention_kernel.h"

namespace ef {
namespace cuda {
namespace {

constexpr int kRows = 64;
constexpr int kKeys = 32;

// c = cumsum(log_f) per (b, h) in double (see ga_add_bias), one thread per (b, h).
template <typename T>
__global__ void cumsum_kernel(const T* log_f, double* c, int64_t BH, int64_t N) {
    const int64_t bh = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (bh >= BH) return;
    double run = 0.0;
    for (int64_t j = 0; j < N; ++j) c[bh * N + j] = (run += to_float(log_f[bh * N + j]));
}

template <typename T>
__global__ void attention_kernel(const T* q, const T* k, const T* v, const T* bias, const double* c, T* o, float* acc_ws,
                                 GatedAttentionShape s) {
    extern __shared__ float smem[];
    float* kt = smem;                // [D][kKeys]
    float* vt = smem + s.D * kKeys;  // [kKeys][Dv]
    const int64_t bh = blockIdx.y, bi = bh / s.H, hi = bh % s.H;
    const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows;
    const int64_t i = r0 + threadIdx.x;
    const bool active = i < s.N;
    const int64_t last_row = (r0 + kRows < s.N ? r0 + kRows : s.N) - 1;
    const int64_t keys = ga_key_limit(s, last_row);
    const int64_t limit = active ? ga_key_limit(s, i) : 0;
    float* acc = acc_ws + (bh * s.N + (active ? i : 0)) * s.Dv;
    if (active)
        for (int64_t e = 0; e < s.Dv; ++e) acc[e] = 0.0f;
    float m = kNegInf, l = 0.0f;
    float sc[kKeys];
    const T* kb_base = k + bh * s.M * s.D;
    const T* vb_base = v + bh * s.M * s.Dv;
    const T* bias_row = (bias != nullptr && active)
                            ? bias + bi * s.bias_stride[0] + hi * s.bias_stride[1] + i * s.bias_stride[2]
                            : nullptr;
    for (int64_t j0 = 0; j0 < keys; j0 += kKeys) {
        const int64_t kb = j0 + kKeys < keys ? kKeys : keys - j0;
        __syncthreads();  // previous tile fully consumed
        // Keys beyond kb are zero-filled (they are masked, but the logits tile reads all kKeys).
        for (int64_t x = threadIdx.x; x < kKeys * s.D; x += blockDim.x) {
            const int64_t j = x / s.D, d = x % s.D;
            kt[d * kKeys + j] = j < kb ? to_float(kb_base[(j0 + j) * s.D + d]) : 0.0f;
        }
        for (int64_t x = threadIdx.x; x < kb * s.Dv; x += blockDim.x) vt[x] = to_float(vb_base[j0 * s.Dv + x]);
        __syncthreads();
        if (active && j0 < limit) {
            ga_logits_tile<1, kKeys / 16>(q + (bh * s.N + i) * s.D, s.D, kt, kKeys, s.D, s.scale, sc, kKeys);
            ga_add_bias(sc, kb, i, j0, bias_row, s.bias_stride[3], c != nullptr ? c + bh * s.N : nullptr, limit);
            ga_softmax_step(sc, kb, m, l, acc, s.Dv);
            ga_accumulate_tile<1, 1>(sc, kKeys, kb, vt, s.Dv, s.Dv, acc, s.Dv);
        }
    }
    if (active) ga_finish(acc, l, s.Dv, o + (bh * s.N + i) * s.Dv);
}

template <typename T>
int launch(const void* q, const void* k, const void* v, const void* bias, const void* log_f, void* o,
           const GatedAttentionShape& s, void* workspace, cudaStream_t stream) {
    // Workspace: doubles first (c, 8-byte aligned), then the float accumulators.
    double* c = log_f != nullptr ? static_cast<double*>(workspace) : nullptr;
    float* acc = reinterpret_cast<float*>(static_cast<double*>(workspace) + s.B * s.H * s.N);
    if (log_f != nullptr) {
        const int64_t bh = s.B * s.H;
        cumsum_kernel<T><<<static_cast<unsigned>((bh + 127) / 128), 128, 0, stream>>>(static_cast<const T*>(log_f), c, bh, s.N);
    }
    const dim3 grid(static_cast<unsigned>((s.N + kRows - 1) / kRows), static_cast<unsigned>(s.B * s.H));
    const size_t smem = static_cast<size_t>((s.D + s.Dv) * kKeys) * sizeof(float);
    attention_kernel<T><<<grid, kRows, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                       static_cast<const T*>(v), static_cast<const T*>(bias), c,
                                                       static_cast<T*>(o), acc, s);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

size_t gated_attention_workspace(int64_t B, int64_t H, int64_t N, int64_t Dv) {
    return static_cast<size_t>(B * H * N) * (sizeof(double) + static_cast<size_t>(Dv) * sizeof(float));
}

int gated_attention(bool half_precision, const void* q, const void* k, const void* v, const void* bias,
                    const int64_t bias_strides[4], const void* log_f, void* o, int64_t B, int64_t H, int64_t N,
                    int64_t M, int64_t D, int64_t Dv, float scale, bool causal, void* workspace, void* stream) {
    if (D > kMaxHeadDim || Dv > kMaxHeadDim) return static_cast<int>(cudaErrorInvalidValue);
    GatedAttentionShape s{B, H, N, M, D, Dv, scale, causal || log_f != nullptr, {0, 0, 0, 0}};
    for (int i = 0; i < 4; ++i) s.bias_stride[i] = bias_strides != nullptr ? bias_strides[i] : 0;
    auto st = static_cast<cudaStream_t>(stream);
    return half_precision ? launch<__half>(q, k, v, bias, log_f, o, s, workspace, st)
                          : launch<float>(q, k, v, bias, log_f, o, s, workspace, st);
}

}  // namespace cuda
}  // namespace ef
