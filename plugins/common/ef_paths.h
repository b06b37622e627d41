// The kernels of every instruction-set path (each defined in its own ef::isa_<path> namespace by
// the per-path compilation of the kernel sources; see CMakeLists.txt). Only the dispatcher
// (ef_cpu.cpp) includes this; it refers to the paths the build defines EF_PATH_<path> for.
#pragma once

#include "ef_cpu.h"

#define EF_DECLARE_PATH(ns)                                                  \
    namespace ef {                                                           \
    namespace ns {                                                           \
    Error linear_scan_cpu(const LinearScanArgs& args, const ParallelFor& pf); \
    Error gated_attention_cpu(const GatedAttentionArgs& args, const ParallelFor& pf); \
    }                                                                        \
    }

EF_DECLARE_PATH(isa_avx512)
EF_DECLARE_PATH(isa_avx2)
EF_DECLARE_PATH(isa_generic)
EF_DECLARE_PATH(isa_native)
#undef EF_DECLARE_PATH
