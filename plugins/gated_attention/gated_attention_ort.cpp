// ONNX Runtime CPU kernel of edgeforge::GatedAttention(q, k, v[, bias][, log_f]) -> o, attributes
// scale, causal, has_bias, has_log_f (which optional inputs are present, in that order).
#include <cmath>
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

class GatedAttentionKernel : public KernelBase {
  public:
    static constexpr const char* kName = "GatedAttention";
    static constexpr size_t kRequiredInputs = 3, kMaxInputs = 5, kOutputs = 1;

    GatedAttentionKernel(const OrtApi& api, const OrtKernelInfo* info) : KernelBase(api) {
        scale_ = attr_float(info, "scale", -1.0f);   // <= 0: 1 / sqrt(D)
        causal_ = attr_int(info, "causal", 0) != 0;
        has_bias_ = attr_int(info, "has_bias", 0) != 0;
        has_log_f_ = attr_int(info, "has_log_f", 0) != 0;
    }

    OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
        try {
            Ort::KernelContext ctx(raw);
            const size_t want = 3 + has_bias_ + has_log_f_;
            if (ctx.GetInputCount() != want) {
                std::ostringstream m;
                m << "GatedAttention: node has " << ctx.GetInputCount() << " inputs but has_bias=" << has_bias_
                  << " and has_log_f=" << has_log_f_ << " need " << want;
                return fail(m.str());
            }
            auto q = ctx.GetInput(0), k = ctx.GetInput(1), v = ctx.GetInput(2);
            const auto sq = q.GetTensorTypeAndShapeInfo().GetShape(), sk = k.GetTensorTypeAndShapeInfo().GetShape(),
                       sv = v.GetTensorTypeAndShapeInfo().GetShape();
            // The message is built only on failure: string streams cost microseconds per call.
            auto got = [&] { return "; got q " + dims(sq) + ", k " + dims(sk) + ", v " + dims(sv); };
            if (sq.size() != 4 || sk.size() != 4 || sv.size() != 4)
                return fail("GatedAttention: q, k, v must be 4-D (B, H, N|M, D)" + got());
            if (sk[0] != sq[0] || sv[0] != sq[0] || sk[1] != sq[1] || sv[1] != sq[1] || sk[3] != sq[3] || sv[2] != sk[2])
                return fail("GatedAttention: need q (B,H,N,D), k (B,H,M,D), v (B,H,M,Dv)" + got());
            GatedAttentionArgs x{q.GetTensorData<float>(), k.GetTensorData<float>(), v.GetTensorData<float>(),
                                 nullptr, nullptr, nullptr, sq[0], sq[1], sq[2], sk[2], sq[3], sv[3],
                                 {1, 1, 1, 1}, scale_, causal_};
            if (x.scale <= 0.0f) x.scale = 1.0f / std::sqrt(static_cast<float>(x.D));
            size_t next = 3;
            if (has_bias_) {
                auto bias = ctx.GetInput(next++);
                const auto sb = bias.GetTensorTypeAndShapeInfo().GetShape();
                if (sb.size() > 4) return fail("GatedAttention: bias must have rank <= 4; got " + dims(sb));
                for (size_t i = 0; i < sb.size(); ++i) x.bias_shape[4 - sb.size() + i] = sb[i];
                x.bias = bias.GetTensorData<float>();
            }
            if (has_log_f_) {
                auto lf = ctx.GetInput(next++);
                const auto sl = lf.GetTensorTypeAndShapeInfo().GetShape();
                if (sl != std::vector<int64_t>{sq[0], sq[1], sq[2]})
                    return fail("GatedAttention: log_f must be (B, H, N) = " + dims({sq[0], sq[1], sq[2]}) + "; got " + dims(sl));
                x.log_f = lf.GetTensorData<float>();
            }
            auto o = ctx.GetOutput(0, std::vector<int64_t>{sq[0], sq[1], sq[2], sv[3]});
            x.o = o.GetTensorMutableData<float>();
            return status(gated_attention_cpu(x, pool(ctx)));
        } catch (const std::exception& e) {
            return fail(std::string("GatedAttention: ") + e.what());
        }
    }

  private:
    float scale_ = -1.0f;
    bool causal_ = false, has_bias_ = false, has_log_f_ = false;
};

}  // namespace

const OrtCustomOp* gated_attention_op() {
    static const Op<GatedAttentionKernel> op;
    return &op;
}

}  // namespace ort
}  // namespace ef
