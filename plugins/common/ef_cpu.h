// CPU-side helpers shared by the CPU math library, its C ABI and the ONNX Runtime kernels.
//
// One portable library: the kernels (ef_finite.cpp, linear_scan_cpu.cpp, gated_attention_cpu.cpp)
// are compiled once per instruction-set path, each with its own target flags and in its own
// namespace ef::isa_<path> (see EF_ISA_NS in ef_core.h); ef_cpu.cpp picks the best path this CPU
// runs when the library loads (CPUID, as ONNX Runtime's MLAS does), capped by the environment
// variable EDGEFORGE_MAX_ISA (avx512, avx2 or generic) for testing. linear_scan_cpu and
// gated_attention_cpu below call the chosen path.
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

// A failed validation: status code and a message naming the op, the input and the value.
struct Error {
    Status status = kOk;
    std::string message;
    explicit operator bool() const { return status != kOk; }
};

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

// The instruction-set paths. cpu_isa(): the path in use ("avx512", "avx2", "generic", or "native"
// in an EF_NATIVE build). cpu_isa_paths(): the built paths this CPU can run, best first,
// comma-separated. cpu_isa_built(): every built path. cpu_isa_note(): how the path was chosen
// (the CPU's best, or the EDGEFORGE_MAX_ISA cap, or why a cap was ignored).
// set_cpu_isa(name): switch to a path (tests run every path in one process); kOk, or kBadArgument
// with a message when the path is not built or this CPU cannot run it.
const char* cpu_isa();
std::string cpu_isa_paths();
std::string cpu_isa_built();
std::string cpu_isa_note();
Error set_cpu_isa(const char* name);

// Helpers each path compiles for itself (ef_finite.cpp): they are in the path's namespace.
inline namespace EF_ISA_NS {

// Index of the first NaN or infinite value (or -1). allow_neg_inf: -inf is a valid mask value.
int64_t first_non_finite(const float* x, int64_t n, bool allow_neg_inf = false);

Error check_finite(const char* op, const char* name, const float* x, int64_t n, bool allow_neg_inf = false);

}  // namespace EF_ISA_NS

}  // namespace ef
