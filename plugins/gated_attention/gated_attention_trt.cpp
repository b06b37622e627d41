// TensorRT IPluginV3 of edgeforge::GatedAttention(q, k, v[, bias][, log_f]) -> o, fields scale,
// causal, has_bias, has_log_f (which optional inputs are present, in that order).
#include <cmath>
#include <stdexcept>

#include "ef_core.h"
#include "gated_attention_kernel.h"
#include "trt_plugin_base.h"

namespace ef {
namespace trt {
namespace {

class GatedAttentionPlugin : public PluginBase {
  public:
    static constexpr const char* kName = "GatedAttention";
    static FieldSpec field_names() {
        return {{"scale", nvinfer1::PluginFieldType::kFLOAT32},
                {"causal", nvinfer1::PluginFieldType::kINT32},
                {"has_bias", nvinfer1::PluginFieldType::kINT32},
                {"has_log_f", nvinfer1::PluginFieldType::kINT32}};
    }

    explicit GatedAttentionPlugin(Fields f) : PluginBase(kName, std::move(f)) {
        scale_ = fields_.get_float("scale", -1.0f);
        causal_ = flag("causal");
        has_bias_ = flag("has_bias");
        has_log_f_ = flag("has_log_f");
        if (!std::isfinite(scale_)) throw std::invalid_argument("attribute scale must be finite");
    }

    nvinfer1::IPluginV3* clone() noexcept override {
        try {
            return new GatedAttentionPlugin(*this);
        } catch (...) {
            return nullptr;
        }
    }

    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs, const nvinfer1::DimsExprs*, int32_t,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept override {
        if (nbInputs != expected_inputs() || nbOutputs != 1 || inputs[0].nbDims != 4 || inputs[2].nbDims != 4) {
            log_error("GatedAttention: inputs must be q, k, v (4-D) plus the optional inputs the flags name");
            return -1;
        }
        outputs[0] = inputs[0];
        outputs[0].d[3] = inputs[2].d[3];
        return 0;
    }

    size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* in, int32_t, const nvinfer1::DynamicPluginTensorDesc*,
                            int32_t) const noexcept override {
        const nvinfer1::Dims& q = in[0].max;
        return cuda::gated_attention_workspace(q.d[0], q.d[1], q.d[2], in[2].max.d[3]);
    }

    int32_t enqueue(const nvinfer1::PluginTensorDesc* in, const nvinfer1::PluginTensorDesc*, const void* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        const nvinfer1::Dims &q = in[0].dims, &k = in[1].dims, &v = in[2].dims;
        int32_t next = 3;
        const void* bias = has_bias_ ? inputs[next++] : nullptr;
        const void* log_f = has_log_f_ ? inputs[next++] : nullptr;
        const float scale = scale_ > 0.0f ? scale_ : 1.0f / std::sqrt(static_cast<float>(q.d[3]));
        const int err = cuda::gated_attention(in[0].type == nvinfer1::DataType::kHALF, inputs[0], inputs[1], inputs[2],
                                              bias, bias_strides_, log_f, outputs[0], q.d[0], q.d[1], q.d[2], k.d[2],
                                              q.d[3], v.d[3], scale, causal_, workspace, stream);
        if (err != 0) log_error("GatedAttention: CUDA launch failed with error " + std::to_string(err));
        return err == 0 ? 0 : -1;
    }

  protected:
    std::string configure_shapes(const nvinfer1::Dims* in, int32_t nbInputs) override {
        if (nbInputs != expected_inputs())
            return "GatedAttention: has_bias=" + std::to_string(has_bias_) + " and has_log_f=" +
                   std::to_string(has_log_f_) + " need " + std::to_string(expected_inputs()) + " inputs, got " +
                   std::to_string(nbInputs);
        const nvinfer1::Dims &q = in[0], &k = in[1], &v = in[2];
        const std::string got = "; got q " + dims_str(q) + ", k " + dims_str(k) + ", v " + dims_str(v);
        if (q.nbDims != 4 || k.nbDims != 4 || v.nbDims != 4) return "GatedAttention: q, k, v must be 4-D" + got;
        if (k.d[0] != q.d[0] || v.d[0] != q.d[0] || k.d[1] != q.d[1] || v.d[1] != q.d[1] || k.d[3] != q.d[3] ||
            v.d[2] != k.d[2])
            return "GatedAttention: need q (B,H,N,D), k (B,H,M,D), v (B,H,M,Dv)" + got;
        if (q.d[3] > cuda::kMaxHeadDim || v.d[3] > cuda::kMaxHeadDim)
            return "GatedAttention: the TensorRT plugin supports D, Dv <= " + std::to_string(cuda::kMaxHeadDim) + got;
        if ((causal_ || has_log_f_) && k.d[2] < q.d[2]) return "GatedAttention: causal attention needs M >= N" + got;
        int32_t next = 3;
        if (has_bias_) {
            const nvinfer1::Dims& b = in[next++];
            if (b.nbDims > 4) return "GatedAttention: bias must have rank <= 4; got " + dims_str(b);
            int64_t shape[4] = {1, 1, 1, 1};
            for (int32_t i = 0; i < b.nbDims; ++i) shape[4 - b.nbDims + i] = b.d[i];
            const int64_t full[4] = {q.d[0], q.d[1], q.d[2], k.d[2]};
            if (!broadcast_strides(shape, full, bias_strides_))
                return "GatedAttention: bias " + dims_str(b) + " is not broadcastable to (B, H, N, M)" + got;
        }
        if (has_log_f_) {
            const nvinfer1::Dims& lf = in[next++];
            if (lf.nbDims != 3 || lf.d[0] != q.d[0] || lf.d[1] != q.d[1] || lf.d[2] != q.d[2] || q.d[2] != k.d[2])
                return "GatedAttention: log_f must be (B, H, N) with N == M; got " + dims_str(lf) + got;
        }
        return "";
    }

  private:
    bool flag(const char* name) const {
        const int32_t v = fields_.get_int(name, 0);
        if (v != 0 && v != 1)
            throw std::invalid_argument(std::string("attribute ") + name + " must be 0 or 1, got " + std::to_string(v));
        return v == 1;
    }
    int32_t expected_inputs() const { return 3 + (has_bias_ ? 1 : 0) + (has_log_f_ ? 1 : 0); }

    float scale_ = -1.0f;
    bool causal_ = false, has_bias_ = false, has_log_f_ = false;
    int64_t bias_strides_[4] = {0, 0, 0, 0};
};

}  // namespace

nvinfer1::IPluginCreatorInterface* gated_attention_creator() {
    static Creator<GatedAttentionPlugin> creator;
    return &creator;
}

}  // namespace trt
}  // namespace ef
