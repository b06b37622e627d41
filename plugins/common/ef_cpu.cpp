#include "ef_cpu.h"

#include <cmath>
#include <cstring>
#include <sstream>

namespace ef {

void serial_for(int64_t n, const std::function<void(int64_t)>& fn) {
    for (int64_t i = 0; i < n; ++i) fn(i);
}

int64_t first_non_finite(const float* x, int64_t n, bool allow_neg_inf) {
    // Fast pass on the bits (vectorizes: integer OR reduction); the exact index only on failure.
    constexpr uint32_t kExp = 0x7f800000u, kNegInf = 0xff800000u;
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, x + i, sizeof u);
        bad |= static_cast<uint32_t>((u & kExp) == kExp) & static_cast<uint32_t>(!allow_neg_inf || u != kNegInf);
    }
    if (bad == 0) return -1;
    for (int64_t i = 0; i < n; ++i) {
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

}  // namespace ef
