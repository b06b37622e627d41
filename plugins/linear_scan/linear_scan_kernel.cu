// LinearScan CUDA kernel: one thread per (batch, channel) column, running the shared math core.
#include <cuda_runtime.h>

#include "linear_scan_core.h"
#include "linear_scan_kernel.h"

namespace ef {
namespace cuda {
namespace {

template <typename T>
__global__ void linear_scan_kernel(const T* a, const T* b, const T* h0, T* h, T* h_last, LinearScanShape s) {
    const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= s.B * s.C) return;
    const int64_t bi = idx / s.C, c = idx % s.C;
    linear_scan_lanes<T>(a, b, h0, h, h_last, s, bi, c, c + 1);
}

template <typename T>
int launch(const void* a, const void* b, const void* h0, void* h, void* h_last, const LinearScanShape& s,
           cudaStream_t stream) {
    constexpr int kThreads = 256;
    const int64_t n = s.B * s.C;
    const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
    linear_scan_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(a), static_cast<const T*>(b),
                                                            static_cast<const T*>(h0), static_cast<T*>(h),
                                                            static_cast<T*>(h_last), s);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

int linear_scan(bool half_precision, const void* a, const void* b, const void* h0, void* h, void* h_last, int64_t B,
                int64_t T, int64_t C, bool reverse, void* stream) {
    const LinearScanShape s{B, T, C, reverse};
    auto st = static_cast<cudaStream_t>(stream);
    return half_precision ? launch<__half>(a, b, h0, h, h_last, s, st) : launch<float>(a, b, h0, h, h_last, s, st);
}

}  // namespace cuda
}  // namespace ef
