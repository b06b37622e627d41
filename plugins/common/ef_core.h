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

// Every inline function and type below lives in a namespace named after the instruction set the
// translation unit is compiled for (EF_ISA_NS): the CPU library compiles its kernels once per
// path (AVX-512, AVX2+FMA, generic) with per-file target flags and picks one at load time
// (ef_cpu.cpp), so the same inline helper exists in several machine-code versions. In one
// namespace the linker would keep any one of them for every caller (an AVX-512 copy called from
// the generic path: an illegal instruction on an AVX2 CPU); distinct namespaces keep them apart.
#ifndef EF_ISA_NS
#if defined(__CUDACC__)
#define EF_ISA_NS isa_cuda
#else
#define EF_ISA_NS isa_base  // glue code (C ABI, ORT/TensorRT hosts) built with the default flags
#endif
#endif

namespace ef {

// Status codes shared by the C ABI, the ORT kernels and the TensorRT plugins.
enum Status : int32_t { kOk = 0, kBadShape = 1, kNonFinite = 2, kBadArgument = 3 };

inline namespace EF_ISA_NS {

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

// Register-tile vector types for the core's tile templates (ga_logits_tile, ga_accumulate_tile):
// VecOps<V>::W lanes and the few operations a tile needs. F16 everywhere; F8 (one AVX2 register
// of 8 floats, two NEON registers) in host builds, for paths whose registers are 8 floats wide:
// AVX2 has 16 of them, so its tiles are 6 rows x 2 vectors (12 accumulators, 2 loads, 1
// broadcast), where 16-float tiles would need pairs of registers and spill.
template <typename V>
struct VecOps;
template <>
struct VecOps<F16> {
    static constexpr int W = 16;
    EF_HD static F16 zero() { return f16_zero(); }
    template <typename T>
    EF_HD static F16 load(const T* p) { return f16_load(p); }
    EF_HD static void store(float* p, const F16& x, float scale = 1.0f) { f16_store(p, x, scale); }
    EF_HD static void fma(F16& acc, float a, const F16& b) { f16_fma(acc, a, b); }
    EF_HD static F16 add(const F16& a, const F16& b) { return f16_add(a, b); }
    EF_HD static F16 mul(const F16& a, const F16& b) { return f16_mul(a, b); }
    EF_HD static F16 splat(float a) { return f16_splat(a); }
};
#if !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__))
// The ops of a GNU vector of W floats (the generic path's F4, the AVX2 path's F8): one
// definition, so the paths differ only in their width.
template <typename V>
struct GnuVecOps {
    static constexpr int W = int(sizeof(V) / sizeof(float));
    static V zero() { return V{}; }
    static V load(const float* p) {
        V r;
        std::memcpy(&r, p, sizeof r);
        return r;
    }
    static void store(float* p, const V& x, float scale = 1.0f) {
        const V y = x * scale;
        std::memcpy(p, &y, sizeof y);
    }
    static void fma(V& acc, float a, const V& b) { acc += a * b; }
    static V add(const V& a, const V& b) { return a + b; }
    static V mul(const V& a, const V& b) { return a * b; }
    static V splat(float a) { return V{} + a; }
};
// F4: one SSE2 / NEON register, the generic path's vector (wider generic vectors were split by
// the compiler through the stack: 30x slower than AVX2 instead of about 2x).
typedef float F4 __attribute__((vector_size(16)));
template <>
struct VecOps<F4> : GnuVecOps<F4> {};
typedef float F8 __attribute__((vector_size(32)));
template <>
struct VecOps<F8> : GnuVecOps<F8> {};
#endif

EF_HD float ef_fmax(float a, float b) { return a > b ? a : b; }
EF_HD float ef_fmin(float a, float b) { return a < b ? a : b; }

EF_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
    return static_cast<uint32_t>(__float_as_int(f));
#else
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
#endif
}

// 2^t for t <= 0 (the softmax exponentiates only differences to a running maximum, as
// t = (s - m) * log2(e)). t = n + r with n = round(t), |r| <= 1/2; 2^r by a degree-5 polynomial
// fitted for relative error (2.4e-7 in float arithmetic); 2^n added to the exponent bits.
// t + 1.5 * 2^23 rounds t to an integer held in the low mantissa bits (so that n costs two adds
// and no float/int conversions); shifting those bits left by 23 gives n in the exponent field.
// t below -125 (including -inf from masking, and NaN) gives exactly 0: 2^-125 is too small to
// change a softmax whose largest weight is 1. Written once for a float and a 16-lane tile.
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23
constexpr float kExp2Min = -125.0f;

template <typename T>
EF_HD T exp2_poly(const T& r) {
    T p = r * 1.3276471e-3f + 9.6755419e-3f;
    p = p * r + 5.5507131e-2f;
    p = p * r + 2.4022120e-1f;
    p = p * r + 6.9314694e-1f;
    return p * r + 1.0000001f;
}

EF_HD float exp2_nonpos(float t) {
    const float a = t + kRoundMagic;
    const float p = exp2_poly(t - (a - kRoundMagic));
    return t >= kExp2Min ? bits_to_float(static_cast<int32_t>(float_to_bits(p) + (float_to_bits(a) << 23))) : 0.0f;
}

// exp(x) for x <= 0.
EF_HD float exp_nonpos(float x) { return exp2_nonpos(x * kLog2e); }

// 2^t over the 16 lanes of a register tile (the softmax exponentiates and sums in one pass).
#if defined(__CUDACC__) || !(defined(__GNUC__) || defined(__clang__))
EF_HD F16 f16_exp2_nonpos(const F16& t) {
    F16 r;
    for (int i = 0; i < 16; ++i) r.v[i] = exp2_nonpos(t.v[i]);
    return r;
}
#else
typedef int32_t I16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));
inline F16 f16_exp2_nonpos(const F16& t) {
    const F16 a = t + kRoundMagic;
    const F16 p = exp2_poly(t - (a - kRoundMagic));
    U16 pb, ab;
    std::memcpy(&pb, &p, sizeof pb);
    std::memcpy(&ab, &a, sizeof ab);
    const U16 e = (pb + (ab << 23)) & (U16)(t >= kExp2Min);  // all-ones lanes where t >= -125
    F16 out;
    std::memcpy(&out, &e, sizeof out);
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

}  // namespace EF_ISA_NS
}  // namespace ef
