// C ABI of the CPU math library, for ctypes (edgeforge/ops/native.py) and the AddressSanitizer
// test driver. Every function returns an ef::Status and writes a message into err on failure.
#include <cstring>

#include "ef_cpu.h"

namespace {

int32_t finish(const ef::Error& e, char* err, int64_t err_len) {
    if (e && err != nullptr && err_len > 0) {
        const size_t n = std::min<size_t>(e.message.size(), static_cast<size_t>(err_len - 1));
        std::memcpy(err, e.message.data(), n);
        err[n] = '\0';
    }
    return e.status;
}

}  // namespace

extern "C" {

int32_t ef_abi_version() { return 1; }

int32_t ef_linear_scan_f32(const float* a, const float* b, const float* h0, float* h, float* h_last, int64_t B,
                           int64_t T, int64_t C, int32_t reverse, char* err, int64_t err_len) {
    const ef::LinearScanArgs args{a, b, h0, h, h_last, B, T, C, reverse != 0};
    return finish(ef::linear_scan_cpu(args, ef::serial_for), err, err_len);
}

// bias_shape: 4 dims (leading 1s for lower ranks), ignored when bias is null.
int32_t ef_gated_attention_f32(const float* q, const float* k, const float* v, const float* bias,
                               const int64_t* bias_shape, const float* log_f, float* o, int64_t B, int64_t H,
                               int64_t N, int64_t M, int64_t D, int64_t Dv, float scale, int32_t causal, char* err,
                               int64_t err_len) {
    ef::GatedAttentionArgs args{q, k, v, bias, log_f, o, B, H, N, M, D, Dv, {1, 1, 1, 1}, scale, causal != 0};
    if (bias != nullptr && bias_shape != nullptr)
        for (int i = 0; i < 4; ++i) args.bias_shape[i] = bias_shape[i];
    return finish(ef::gated_attention_cpu(args, ef::serial_for), err, err_len);
}

}  // extern "C"
