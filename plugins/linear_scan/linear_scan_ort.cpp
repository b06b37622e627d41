// ONNX Runtime CPU kernel of edgeforge::LinearScan(a, b[, h0]) -> (h, h_last), attribute reverse.
#include <sstream>
#include <vector>

#include "ort_op_base.h"

namespace ef {
namespace ort {
namespace {

std::string dims(const std::vector<int64_t>& s) {
    std::ostringstream o;
    o << "(";
    for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
    o << ")";
    return o.str();
}

class LinearScanKernel : public KernelBase {
  public:
    static constexpr const char* kName = "LinearScan";
    static constexpr size_t kRequiredInputs = 2, kMaxInputs = 3, kOutputs = 2;

    LinearScanKernel(const OrtApi& api, const OrtKernelInfo* info) : KernelBase(api) {
        reverse_ = attr_int(info, "reverse", 0) != 0;
    }

    OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
        try {
            Ort::KernelContext ctx(raw);
            auto a = ctx.GetInput(0), b = ctx.GetInput(1);
            const auto sa = a.GetTensorTypeAndShapeInfo().GetShape(), sb = b.GetTensorTypeAndShapeInfo().GetShape();
            if (sa.size() != 3 || sa != sb)
                return fail("LinearScan: a and b must both be (B, T, C); got a " + dims(sa) + ", b " + dims(sb));
            const float* h0 = nullptr;
            if (ctx.GetInputCount() > 2) {
                auto h0v = ctx.GetInput(2);
                if (h0v != nullptr) {
                    const auto s0 = h0v.GetTensorTypeAndShapeInfo().GetShape();
                    if (s0 != std::vector<int64_t>{sa[0], sa[2]})
                        return fail("LinearScan: h0 must be (B, C) = " + dims({sa[0], sa[2]}) + "; got " + dims(s0));
                    h0 = h0v.GetTensorData<float>();
                }
            }
            auto h = ctx.GetOutput(0, sa);
            auto last = ctx.GetOutput(1, std::vector<int64_t>{sa[0], sa[2]});
            const LinearScanArgs args{a.GetTensorData<float>(), b.GetTensorData<float>(), h0,
                                      h.GetTensorMutableData<float>(), last.GetTensorMutableData<float>(),
                                      sa[0], sa[1], sa[2], reverse_};
            return status(linear_scan_cpu(args, pool(ctx)));
        } catch (const std::exception& e) {
            return fail(std::string("LinearScan: ") + e.what());
        }
    }

  private:
    bool reverse_ = false;
};

}  // namespace

const OrtCustomOp* linear_scan_op() {
    static const Op<LinearScanKernel> op;
    return &op;
}

}  // namespace ort
}  // namespace ef
