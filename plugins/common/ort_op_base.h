// Shared base of the ONNX Runtime CPU custom-op kernels: op descriptor, attribute reading with
// defaults, error statuses, and ONNX Runtime's intra-op thread pool as an ef::ParallelFor.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include <onnxruntime_cxx_api.h>

#include <exception>
#include <functional>
#include <string>

#include "ef_cpu.h"

namespace ef {
namespace ort {

// Kernel requirements: static constexpr kName, kRequiredInputs, kMaxInputs, kOutputs;
// Kernel(const OrtApi&, const OrtKernelInfo*) (may throw std::exception on bad attributes);
// OrtStatusPtr Compute(OrtKernelContext*).
template <typename Kernel>
struct Op : Ort::CustomOpBase<Op<Kernel>, Kernel, /*WithStatus=*/true> {
    const char* GetName() const { return Kernel::kName; }
    size_t GetInputTypeCount() const { return Kernel::kMaxInputs; }
    ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
        return i < Kernel::kRequiredInputs ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED
                                           : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL;
    }
    size_t GetOutputTypeCount() const { return Kernel::kOutputs; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

    OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
        try {
            *kernel = new Kernel(api, info);
            return nullptr;
        } catch (const std::exception& e) {
            return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
        }
    }
};

// Common kernel plumbing.
class KernelBase {
  public:
    explicit KernelBase(const OrtApi& api) : api_(api) {}

  protected:
    int64_t attr_int(const OrtKernelInfo* info, const char* name, int64_t fallback) const {
        int64_t v = fallback;
        if (OrtStatus* st = api_.KernelInfoGetAttribute_int64(info, name, &v)) {
            api_.ReleaseStatus(st);
            return fallback;
        }
        return v;
    }
    float attr_float(const OrtKernelInfo* info, const char* name, float fallback) const {
        float v = fallback;
        if (OrtStatus* st = api_.KernelInfoGetAttribute_float(info, name, &v)) {
            api_.ReleaseStatus(st);
            return fallback;
        }
        return v;
    }
    OrtStatusPtr fail(const std::string& message) const { return api_.CreateStatus(ORT_INVALID_ARGUMENT, message.c_str()); }
    OrtStatusPtr status(const Error& e) const { return e ? fail(e.message) : nullptr; }

    // Runs ef work items on ONNX Runtime's intra-op thread pool (so that session thread settings hold).
    static ParallelFor pool(const Ort::KernelContext& ctx) {
        return [&ctx](int64_t n, const std::function<void(int64_t)>& fn) {
            if (n <= 1) return serial_for(n, fn);
            auto trampoline = [](void* data, size_t i) {
                (*static_cast<const std::function<void(int64_t)>*>(data))(static_cast<int64_t>(i));
            };
            ctx.ParallelFor(trampoline, static_cast<size_t>(n), 0, const_cast<std::function<void(int64_t)>*>(&fn));
        };
    }

    const OrtApi& api_;
};

// Registration hooks of the two ops (one per op folder).
const OrtCustomOp* linear_scan_op();
const OrtCustomOp* gated_attention_op();

}  // namespace ort
}  // namespace ef
