// The finite-value checks of the kernels, compiled once per instruction-set path (ef_cpu.h).
#include "ef_cpu.h"

#include <cmath>
#include <cstring>
#include <sstream>

namespace ef {
namespace EF_ISA_NS {

int64_t first_non_finite(const float* x, int64_t n, bool allow_neg_inf) {
    // Fast pass on the bits, 16 lanes at a time (GCC does not vectorize the scalar form of this
    // loop well: it was 12% of a GatedAttention call at N = 49); the exact index only on failure.
    // A value is bad when its exponent bits are all set (inf or NaN), unless it is -inf and -inf
    // is allowed; `allowed` is 0 otherwise, which no inf or NaN bit pattern equals.
    constexpr uint32_t kExp = 0x7f800000u, kNegInf = 0xff800000u;
    const uint32_t allowed = allow_neg_inf ? kNegInf : 0u;
    int64_t i = 0;
    uint32_t bad = 0;
#if defined(__GNUC__)
    const U16 exp16 = U16{} + kExp, allowed16 = U16{} + allowed;
    U16 bad16 = U16{};
    for (; i + 16 <= n; i += 16) {
        U16 u;
        std::memcpy(&u, x + i, sizeof u);
        bad16 |= (U16)(((u & exp16) == exp16) & (u != allowed16));
    }
    for (int lane = 0; lane < 16; ++lane) bad |= bad16[lane];
#endif
    for (; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, x + i, sizeof u);
        bad |= static_cast<uint32_t>((u & kExp) == kExp) & static_cast<uint32_t>(u != allowed);
    }
    if (bad == 0) return -1;
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
