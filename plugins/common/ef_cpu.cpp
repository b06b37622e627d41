// The CPU library's dispatcher: picks the instruction-set path of the kernels when the library
// loads (see ef_cpu.h) and forwards linear_scan_cpu / gated_attention_cpu to it. Compiled with the
// default flags for the target (x86-64 baseline), so that loading never executes an instruction
// the CPU lacks: only the chosen path's code runs AVX2 or AVX-512.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ef_paths.h"

namespace ef {

void serial_for(int64_t n, const std::function<void(int64_t)>& fn) {
    for (int64_t i = 0; i < n; ++i) fn(i);
}

namespace {

struct Path {
    const char* name;
    int rank;  // EDGEFORGE_MAX_ISA caps by rank: generic 0 < avx2 1 < avx512 2
    bool (*runs_here)();
    Error (*linear_scan)(const LinearScanArgs&, const ParallelFor&);
    Error (*gated_attention)(const GatedAttentionArgs&, const ParallelFor&);
};

bool always() { return true; }

#if defined(__x86_64__) || defined(__i386__)
// __builtin_cpu_supports also checks that the OS saves the vector registers (XGETBV), so a CPU
// with AVX-512 under a kernel that disabled it reads as without.
[[maybe_unused]] bool has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
[[maybe_unused]] bool has_avx512() {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

// Best first. The flags each path is compiled with (CMakeLists.txt) are exactly what its
// runs_here checks.
const Path kPaths[] = {
#if defined(EF_PATH_native)
    {"native", 3, always, isa_native::linear_scan_cpu, isa_native::gated_attention_cpu},
#endif
#if defined(EF_PATH_avx512)
    {"avx512", 2, has_avx512, isa_avx512::linear_scan_cpu, isa_avx512::gated_attention_cpu},
#endif
#if defined(EF_PATH_avx2)
    {"avx2", 1, has_avx2, isa_avx2::linear_scan_cpu, isa_avx2::gated_attention_cpu},
#endif
#if defined(EF_PATH_generic)
    {"generic", 0, always, isa_generic::linear_scan_cpu, isa_generic::gated_attention_cpu},
#endif
};
constexpr int kNumPaths = sizeof kPaths / sizeof kPaths[0];

int rank_of(const std::string& name) {
    if (name == "generic") return 0;
    if (name == "avx2") return 1;
    if (name == "avx512") return 2;
    if (name == "native") return 3;
    return -1;
}

struct Choice {
    const Path* path = nullptr;
    std::string note;
};

// The best path this CPU runs, under the EDGEFORGE_MAX_ISA cap if one is set and can be met.
Choice choose() {
    Choice c;
    const Path* best = nullptr;
    for (const Path& p : kPaths)
        if (p.runs_here()) {
            best = &p;
            break;
        }
    c.path = best;
    c.note = "the best path this CPU runs";
    const char* cap = std::getenv("EDGEFORGE_MAX_ISA");
    if (cap == nullptr || *cap == '\0') return c;
    const int rank = rank_of(cap);
    if (rank < 0) {
        c.note = std::string("EDGEFORGE_MAX_ISA=") + cap + " ignored (not one of avx512, avx2, generic); " + c.note;
        return c;
    }
    for (const Path& p : kPaths)
        if (p.rank <= rank && p.runs_here()) {
            c.path = &p;
            c.note = std::string("capped by EDGEFORGE_MAX_ISA=") + cap;
            return c;
        }
    c.note = std::string("EDGEFORGE_MAX_ISA=") + cap + " ignored (no built path at or below it); " + c.note;
    return c;
}

struct State {
    std::atomic<const Path*> path{nullptr};
    std::string note;
    State() {
        Choice c = choose();
        note = c.note;
        path.store(c.path, std::memory_order_release);
    }
};

State& state() {
    static State s;  // chosen when the library loads (see `load_time` below) or on first use
    return s;
}

const State& load_time = state();

const Path& current() { return *state().path.load(std::memory_order_acquire); }

}  // namespace

Error linear_scan_cpu(const LinearScanArgs& args, const ParallelFor& pf) { return current().linear_scan(args, pf); }

Error gated_attention_cpu(const GatedAttentionArgs& args, const ParallelFor& pf) {
    return current().gated_attention(args, pf);
}

const char* cpu_isa() { return current().name; }

std::string cpu_isa_paths() {
    std::string out;
    for (const Path& p : kPaths)
        if (p.runs_here()) out += (out.empty() ? "" : ",") + std::string(p.name);
    return out;
}

std::string cpu_isa_built() {
    std::string out;
    for (const Path& p : kPaths) out += (out.empty() ? "" : ",") + std::string(p.name);
    return out;
}

std::string cpu_isa_note() { return state().note; }

Error set_cpu_isa(const char* name) {
    for (const Path& p : kPaths)
        if (name != nullptr && std::strcmp(p.name, name) == 0) {
            if (!p.runs_here()) return {kBadArgument, std::string("this CPU cannot run the ") + name + " path"};
            state().path.store(&p, std::memory_order_release);
            return {};
        }
    return {kBadArgument, std::string("no ") + (name ? name : "(null)") + " path in this build (built: " +
                              cpu_isa_built() + ")"};
}

}  // namespace ef

// C ABI of the path selection, exported by every library that links the CPU core (the C ABI
// library and the ONNX Runtime kernel library), so that a process can ask either which path it
// runs and switch it (tests run every path this CPU can execute).
namespace {
thread_local std::string abi_text;
const char* keep(std::string s) {
    abi_text = std::move(s);
    return abi_text.c_str();
}
}  // namespace

extern "C" {
__attribute__((visibility("default"))) const char* ef_cpu_isa() { return ef::cpu_isa(); }
__attribute__((visibility("default"))) const char* ef_cpu_isa_paths() { return keep(ef::cpu_isa_paths()); }
__attribute__((visibility("default"))) const char* ef_cpu_isa_built() { return keep(ef::cpu_isa_built()); }
__attribute__((visibility("default"))) const char* ef_cpu_isa_note() { return keep(ef::cpu_isa_note()); }
// 0 on success; otherwise the status and a message in err.
__attribute__((visibility("default"))) int32_t ef_cpu_set_isa(const char* name, char* err, int64_t err_len) {
    const ef::Error e = ef::set_cpu_isa(name);
    if (e && err != nullptr && err_len > 0) {
        const size_t n = e.message.size() < static_cast<size_t>(err_len - 1) ? e.message.size() : static_cast<size_t>(err_len - 1);
        std::memcpy(err, e.message.data(), n);
        err[n] = '\0';
    }
    return e.status;
}
}
