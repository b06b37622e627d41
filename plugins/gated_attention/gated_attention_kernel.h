// CUDA launcher of GatedAttention (host-callable, no CUDA headers needed by callers).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ef {
namespace cuda {

constexpr int64_t kMaxHeadDim = 128;  // D and Dv bound: key/value tiles live in shared memory

// Bytes of scratch the launch needs: cumulative gates (B*H*N doubles) and accumulators (B*H*N*Dv floats).
size_t gated_attention_workspace(int64_t B, int64_t H, int64_t N, int64_t Dv);

// bias (null or broadcast through bias_strides over (B, H, N, M)); log_f null or (B, H, N).
// half_precision: tensors are __half (else float). Returns a cudaError_t.
int gated_attention(bool half_precision, const void* q, const void* k, const void* v, const void* bias,
                    const int64_t bias_strides[4], const void* log_f, void* o, int64_t B, int64_t H, int64_t N,
                    int64_t M, int64_t D, int64_t Dv, float scale, bool causal, void* workspace, void* stream);

}  // namespace cuda
}  // namespace ef
