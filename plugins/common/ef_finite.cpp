// The finite-value checks of the kernels, compiled once per instruction-set path (ef_cpu.h).
#include "ef_cpu.h"

#include <climits>
#include <cmath>
#include <cstring>
#include <sstream>

namespace ef {
namespace EF_ISA_NS {

#if defined(__GNUC__)
// Lanes per vector of this path: 16-float vector code compiled for AVX2 lowered its compares to
// lane-by-lane code (a third of a GatedAttention call at N = 49), so each path uses its width.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;  // SSE2 / NEON registers
#endif
typedef int32_t IV __attribute__((vector_size(4 * kLanes)));
typedef uint32_t UV __attribute__((vector_size(4 * kLanes)));
#endif

int64_t first_non_finite(const float* x, int64_t n, bool allow_neg_inf) {
    // Fast pass on the bits, a vector at a time, with no compare in the loop: running integer
    // maxima say whether any value is bad; the exact index is searched only on failure.
    // The bits of +inf and positive NaNs are the signed integers >= 0x7f800000; those of -inf and
    // negative NaNs the unsigned integers >= 0xff800000 (-inf exactly 0xff800000). So: the signed
    // maximum of the bits with the sign cleared says "an inf or NaN" (-inf not allowed); the
    // signed and unsigned maxima of the raw bits say "+inf or a NaN" (-inf allowed).
    constexpr int32_t kInf = 0x7f800000;
    constexpr uint32_t kNegInf = 0xff800000u;
    int64_t i = 0;
    int32_t smax = INT32_MIN;
    uint32_t umax = 0;
#if defined(__GNUC__)
    IV sv = IV{} + INT32_MIN;
    UV uv = UV{};
    const IV no_sign = IV{} + 0x7fffffff;
    if (allow_neg_inf) {
        for (; i + kLanes <= n; i += kLanes) {
            IV u;
            std::memcpy(&u, x + i, sizeof u);
            sv = sv > u ? sv : u;
            const UV w = (UV)u;
            uv = uv > w ? uv : w;
        }
    } else {
        for (; i + kLanes <= n; i += kLanes) {
            IV u;
            std::memcpy(&u, x + i, sizeof u);
            u &= no_sign;
            sv = sv > u ? sv : u;
        }
    }
    for (int lane = 0; lane < kLanes; ++lane) {
        smax = smax > sv[lane] ? smax : sv[lane];
        umax = umax > uv[lane] ? umax : uv[lane];
    }
#endif
    for (; i < n; ++i) {
        int32_t u;
        std::memcpy(&u, x + i, sizeof u);
        if (!allow_neg_inf) u &= 0x7fffffff;
        smax = smax > u ? smax : u;
        umax = umax > static_cast<uint32_t>(u) ? umax : static_cast<uint32_t>(u);
    }
    const bool bad = smax >= kInf || (allow_neg_inf && umax > kNegInf);
    if (!bad) return -1;
    for (i = 0; i < n; ++i) {
        const float v = x[i];
        if (!std::isfinite(v) && !(allow_neg_inf && std::isinf(v) && v < 0)) return i;
    }
    return -1;
}

Error check_finite(const char* op, const char* name, const float* x, int64_t n, bool allow_neg_inf) {
    const int64_t i = first_non_finite(x, n, allow_neg_inf);
    if (i < 0) return {};
    std::ostringstream msg;
    msg << op << ": input " << name << " has a non-finite value " << x[i] << " at flat index " << i
        << (allow_neg_inf ? " (only finite values and -inf are accepted)" : " (only finite values are accepted)");
    return {kNonFinite, msg.str()};
}

}  // namespace EF_ISA_NS
}  // namespace ef
