#include "ef_cpu.h"

#include <cmath>
#include <sstream>

namespace ef {

void serial_for(int64_t n, const std::function<void(int64_t)>& fn) {
    for (int64_t i = 0; i < n; ++i) fn(i);
}

int64_t first_non_finite(const float* x, int64_t n, bool allow_neg_inf) {
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
