// Shared building blocks of the edgeforge math cores. Header-only and free of any runtime API so
// that the same source compiles into the CPU library (g++) and into the CUDA kernels (nvcc).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define EF_HD __host__ __device__ __forceinline__
#else
#define EF_HD inline
#endif

#if defined(__CUDACC__) || defined(__GNUC__)
#define EF_RESTRICT __restrict__
#else
#define EF_RESTRICT
#endif

namespace ef {

// Status codes shared by the C ABI, the ORT kernels and the TensorRT plugins.
enum Status : int32_t { kOk = 0, kBadShape = 1, kNonFinite = 2, kBadArgument = 3 };

EF_HD float to_float(float x) { return x; }
EF_HD void from_float(float x, float* out) { *out = x; }
#if defined(__CUDACC__)
EF_HD float to_float(__half x) { return __half2float(x); }
EF_HD void from_float(float x, __half* out) { *out = __float2half(x); }
#endif

EF_HD float bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
    return __int_as_float(bits);
#else
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

// Sixteen floats, the register tile of the attention core: a GCC/Clang vector in host builds
// (one AVX-512 or two AVX2 registers; GCC does not vectorize the equivalent array loops), a plain
// array in CUDA builds (registers of one thread). Only the operations the cores need.
#if defined(__CUDACC__) || !(defined(__GNUC__) || defined(__clang__))
struct F16 {
    float v[16];
};
EF_HD F16 f16_zero() {
    F16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = 0.0f;
    return r;
}
EF_HD void f16_fma(F16& acc, float a, const F16& b) {
    for (int i = 0; i < 16; ++i) acc.v[i] += a * b.v[i];
}
template <typename T>
EF_HD F16 f16_load(const T* p) {
    F16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = to_float(p[i]);
    return r;
}
EF_HD void f16_store(float* p, const F16& x, float scale = 1.0f) {
    for (int i = 0; i < 16; ++i) p[i] = x.v[i] * scale;
}
EF_HD F16 f16_splat(float a) {
    F16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = a;
    return r;
}
EF_HD F16 f16_max(const F16& a, const F16& b) {
    F16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return r;
}
EF_HD F16 f16_add(const F16& a, const F16& b) {
    F16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
}
EF_HD F16 f16_mul(const F16& a, const F16& b) {
    F16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
}
EF_HD float f16_reduce_max(const F16& a) {
    float r = a.v[0];
    for (int i = 1; i < 16; ++i) r = r > a.v[i] ? r : a.v[i];
    return r;
}
EF_HD float f16_reduce_add(const F16& a) {
    float r = 0.0f;
    for (int i = 0; i < 16; ++i) r += a.v[i];
    return r;
}
#else
typedef float F16 __attribute__((vector_size(64)));
inline F16 f16_zero() { return F16{}; }
inline void f16_fma(F16& acc, float a, const F16& b) { acc += a * b; }
inline F16 f16_load(const float* p) {
    F16 r;
    std::memcpy(&r, p, sizeof r);
    return r;
}
inline void f16_store(float* p, const F16& x, float scale = 1.0f) {
    const F16 y = x * scale;
    std::memcpy(p, &y, sizeof y);
}
inline F16 f16_splat(float a) { return F16{} + a; }
inline F16 f16_max(const F16& a, const F16& b) { return a > b ? a : b; }
inline F16 f16_add(const F16& a, const F16& b) { return a + b; }
inline F16 f16_mul(const F16& a, const F16& b) { return a * b; }
// Horizontal reductions as a tree of half-width shuffles (4 steps instead of 15 dependent scalar
// operations on extracted lanes).
inline F16 f16_fold(const F16& a, int step) {
    switch (step) {
        case 8: return __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
        case 4: return __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
        case 2: return __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
        default: return __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    }
}
inline float f16_reduce_max(F16 a) {
    for (int step = 8; step >= 1; step /= 2) a = f16_max(a, f16_fold(a, step));
    return a[0];
}
inline float f16_reduce_add(F16 a) {
    for (int step = 8; step >= 1; step /= 2) a += f16_fold(a, step);
    return a[0];
}
#endif

EF_HD float ef_fmax(float a, float b) { return a > b ? a : b; }
EF_HD float ef_fmin(float a, float b) { return a < b ? a : b; }

// exp(x) for x <= 0 (the softmax only ever exponentiates differences to a running maximum).
// Branch-free so the CPU build vectorizes it: x = n*ln2 + r with |r| <= ln2/2, exp(r) by a
// degree-6 polynomial (relative error ~2e-7), 2^n assembled in the exponent bits. Inputs below
// -87 (including -inf from masking) give exactly 0.
// exp(xc - n ln2) for the clamped input xc and the integer-valued n: the range reduction (ln2 in
// two parts) and the polynomial, written once for a float and for a 16-lane register tile.
template <typename T>
EF_HD T exp_reduced(const T& xc, const T& n) {
    T r = xc - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    T p = r * 1.3888889e-3f + 8.3333333e-3f;
    p = p * r + 4.1666667e-2f;
    p = p * r + 1.6666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
}

EF_HD float exp_nonpos(float x) {
    const float xc = ef_fmax(x, -87.0f);
    const float n = static_cast<float>(static_cast<int32_t>(xc * 1.44269504088896341f - 0.5f));
    const float p = exp_reduced(xc, n);
    const float scale = bits_to_float((static_cast<int32_t>(n) + 127) << 23);
    // A multiply by the mask rather than a select: GCC vectorizes this loop body (with
    // -fno-trapping-math, see CMakeLists.txt), not the select.
    return p * scale * static_cast<float>(x >= -87.0f);
}

// exp_nonpos over the 16 lanes of a register tile (the softmax exponentiates and sums in one pass).
#if defined(__CUDACC__) || !(defined(__GNUC__) || defined(__clang__))
EF_HD F16 f16_exp_nonpos(const F16& x) {
    F16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = exp_nonpos(x.v[i]);
    return r;
}
#else
typedef int32_t I16 __attribute__((vector_size(64)));
inline F16 f16_exp_nonpos(const F16& x) {
    const F16 lo = f16_splat(-87.0f);
    const F16 xc = x > lo ? x : lo;
    const I16 ni = __builtin_convertvector(xc * 1.44269504088896341f - 0.5f, I16);
    const F16 p = exp_reduced(xc, __builtin_convertvector(ni, F16));
    const I16 bits = (ni + 127) << 23;
    F16 scale;
    std::memcpy(&scale, &bits, sizeof scale);
    const F16 e = p * scale;
    I16 e_bits;
    std::memcpy(&e_bits, &e, sizeof e_bits);
    e_bits &= (x >= lo);  // all-ones lanes where x >= -87, so -inf and underflow give exactly 0
    F16 out;
    std::memcpy(&out, &e_bits, sizeof out);
    return out;
}
#endif

// Element strides of a contiguous 4-D tensor of `shape` broadcast to `full` (0 where broadcast);
// false if it is not broadcastable.
inline bool broadcast_strides(const int64_t shape[4], const int64_t full[4], int64_t strides[4]) {
    int64_t acc = 1;
    for (int i = 3; i >= 0; --i) {
        if (shape[i] != 1 && shape[i] != full[i]) return false;
        strides[i] = (shape[i] == 1) ? 0 : acc;
        acc *= shape[i];
    }
    return true;
}

}  // namespace ef
