// LinearScan on the CPU: validation and threading around the shared math core.
#include <sstream>

#include "ef_cpu.h"
#include "linear_scan_core.h"

namespace ef {
namespace EF_ISA_NS {  // one copy per instruction-set path (ef_cpu.h)

Error linear_scan_cpu(const LinearScanArgs& x, const ParallelFor& pf) {
    if (x.B < 1 || x.T < 1 || x.C < 1) {
        std::ostringstream msg;
        msg << "LinearScan: a and b must be (B, T, C) with every dimension >= 1; got (" << x.B << ", " << x.T
            << ", " << x.C << ")";
        return {kBadShape, msg.str()};
    }
    if (x.a == nullptr || x.b == nullptr || x.h == nullptr) return {kBadArgument, "LinearScan: null a, b or h"};
    const int64_t n = x.B * x.T * x.C;
    if (Error e = check_finite("LinearScan", "a", x.a, n)) return e;
    if (Error e = check_finite("LinearScan", "b", x.b, n)) return e;
    if (x.h0 != nullptr)
        if (Error e = check_finite("LinearScan", "h0", x.h0, x.B * x.C)) return e;
    const LinearScanShape s{x.B, x.T, x.C, x.reverse};
    // Work items are (batch, channel block); blocks are wide enough to vectorize and to amortise
    // the thread hand-off, and small enough to spread C = 768 over a few threads.
    constexpr int64_t kBlock = 256;
    const int64_t blocks = (x.C + kBlock - 1) / kBlock;
    // Small scans (the usual T <= 64, C = 768) finish in microseconds: waking pool threads would
    // cost more than the scan, so they run on the calling thread.
    const bool small = x.B * x.T * x.C < (int64_t{1} << 18);
    (small ? ParallelFor(serial_for) : pf)(x.B * blocks, [&](int64_t item) {
        const int64_t bi = item / blocks, c0 = (item % blocks) * kBlock;
        const int64_t c1 = c0 + kBlock < x.C ? c0 + kBlock : x.C;
        linear_scan_lanes<float>(x.a, x.b, x.h0, x.h, x.h_last, s, bi, c0, c1);
    });
    return {};
}

}  // namespace EF_ISA_NS
}  // namespace ef
