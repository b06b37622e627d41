// CUDA launcher of LinearScan (host-callable, no CUDA headers needed by callers).
#pragma once

#include <cstdint>

namespace ef {
namespace cuda {

// half_precision: tensors are __half (else float). h0 and h_last may be null. Returns a cudaError_t.
int linear_scan(bool half_precision, const void* a, const void* b, const void* h0, void* h, void* h_last, int64_t B,
                int64_t T, int64_t C, bool reverse, void* stream);

}  // namespace cuda
}  // namespace ef
