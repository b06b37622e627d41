// LinearScan math core: h_t = a_t * h_{t-1} + b_t over T for tensors (B, T, C), contiguous.
// Compiled into the CPU library and into the CUDA kernel (see ef_core.h).
#pragma once

#include "ef_core.h"

namespace ef {
inline namespace EF_ISA_NS {

struct LinearScanShape {
    int64_t B, T, C;
    bool reverse;
};

// Scans channels [c0, c1) of batch element bi. Time is the outer loop and channels the inner one,
// so the CPU build walks contiguous memory and vectorizes over channels, while a CUDA thread calls
// it with c1 = c0 + 1. The running state is the previous output row: no scratch is needed.
// h0 may be null (zero initial state); h_last may be null.
template <typename T>
EF_HD void linear_scan_lanes(const T* EF_RESTRICT a, const T* EF_RESTRICT b, const T* EF_RESTRICT h0,
                             T* EF_RESTRICT h, T* EF_RESTRICT h_last, const LinearScanShape& s,
                             int64_t bi, int64_t c0, int64_t c1) {
    const int64_t base = bi * s.T * s.C;
    for (int64_t step = 0; step < s.T; ++step) {
        const int64_t t = s.reverse ? s.T - 1 - step : step;
        const int64_t row = base + t * s.C;
        if (step == 0 && h0 == nullptr) {
            for (int64_t c = c0; c < c1; ++c) h[row + c] = b[row + c];
            continue;
        }
        const T* prev = step == 0 ? h0 + bi * s.C : h + (s.reverse ? row + s.C : row - s.C);
        for (int64_t c = c0; c < c1; ++c)
            from_float(to_float(a[row + c]) * to_float(prev[c]) + to_float(b[row + c]), &h[row + c]);
    }
    if (h_last != nullptr) {
        const T* last = h + base + (s.reverse ? 0 : (s.T - 1) * s.C);
        for (int64_t c = c0; c < c1; ++c) h_last[bi * s.C + c] = last[c];
    }
}

}  // namespace EF_ISA_NS
}  // namespace ef
