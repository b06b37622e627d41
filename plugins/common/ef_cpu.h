// CPU-side helpers shared by the CPU math library, its C ABI and the ONNX Runtime kernels.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "ef_core.h"

namespace ef {

// Runs fn(i) for i in [0, n), possibly in parallel. The ORT kernels pass ONNX Runtime's intra-op
// thread pool; the C ABI runs serially.
using ParallelFor = std::function<void(int64_t n, const std::function<void(int64_t)>& fn)>;
void serial_for(int64_t n, const std::function<void(int64_t)>& fn);

// Index of the first NaN or infinite value (or -1). allow_neg_inf: -inf is a valid mask value.
int64_t first_non_finite(const float* x, int64_t n, bool allow_neg_inf = false);

// A failed validation: status code and a message naming the op, the input and the value.
struct Error {
    Status status = kOk;
    std::string message;
    explicit operator bool() const { return status != kOk; }
};

Error check_finite(const char* op, const char* name, const float* x, int64_t n, bool allow_neg_inf = false);

// LinearScan on the CPU (float32): validates, then scans. h0 and h_last may be null.
struct LinearScanArgs {
    const float* a; const float* b; const float* h0;
    float* h; float* h_last;
    int64_t B, T, C;
    bool reverse;
};
Error linear_scan_cpu(const LinearScanArgs& args, const ParallelFor& pf);

// GatedAttention on the CPU (float32). bias (null or broadcastable, given by its 4-D shape padded
// with leading 1s) and log_f (null or (B, H, N)).
struct GatedAttentionArgs {
    const float* q; const float* k; const float* v; const float* bias; const float* log_f;
    float* o;
    int64_t B, H, N, M, D, Dv;
    int64_t bias_shape[4];
    float scale;
    bool causal;
};
Error gated_attention_cpu(const GatedAttentionArgs& args, const ParallelFor& pf);

}  // namespace ef
