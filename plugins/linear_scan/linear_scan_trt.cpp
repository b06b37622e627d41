// TensorRT IPluginV3 of edgeforge::LinearScan(a, b[, h0]) -> (h, h_last), field "reverse".
#include <stdexcept>

#include "linear_scan_kernel.h"
#include "trt_plugin_base.h"

namespace ef {
namespace trt {
namespace {

class LinearScanPlugin : public PluginBase {
  public:
    static constexpr const char* kName = "LinearScan";
    static FieldSpec field_names() {
        return {{"reverse", nvinfer1::PluginFieldType::kINT32}};
    }

    explicit LinearScanPlugin(Fields f) : PluginBase(kName, std::move(f)) {
        const int32_t r = fields_.get_int("reverse", 0);
        if (r != 0 && r != 1) throw std::invalid_argument("attribute reverse must be 0 or 1, got " + std::to_string(r));
        reverse_ = r == 1;
    }

    nvinfer1::IPluginV3* clone() noexcept override {
        try {
            return new LinearScanPlugin(*this);
        } catch (...) {
            return nullptr;
        }
    }

    int32_t getNbOutputs() const noexcept override { return 2; }

    int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs, const nvinfer1::DimsExprs*, int32_t,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept override {
        if (nbInputs < 2 || nbInputs > 3 || nbOutputs != 2 || inputs[0].nbDims != 3) {
            log_error("LinearScan: expects inputs (a, b[, h0]) with a of rank 3 and 2 outputs");
            return -1;
        }
        outputs[0] = inputs[0];
        outputs[1].nbDims = 2;
        outputs[1].d[0] = inputs[0].d[0];
        outputs[1].d[1] = inputs[0].d[2];
        return 0;
    }

    int32_t enqueue(const nvinfer1::PluginTensorDesc* in, const nvinfer1::PluginTensorDesc*, const void* const* inputs,
                    void* const* outputs, void*, cudaStream_t stream) noexcept override {
        const nvinfer1::Dims& d = in[0].dims;
        const bool half = in[0].type == nvinfer1::DataType::kHALF;
        const void* h0 = has_h0_ ? inputs[2] : nullptr;
        const int err = cuda::linear_scan(half, inputs[0], inputs[1], h0, outputs[0], outputs[1], d.d[0], d.d[1], d.d[2],
                                          reverse_, stream);
        if (err != 0) log_error("LinearScan: CUDA launch failed with error " + std::to_string(err));
        return err == 0 ? 0 : -1;
    }

  protected:
    std::string configure_shapes(const nvinfer1::Dims* in, int32_t nbInputs) override {
        if (nbInputs < 2 || nbInputs > 3) return "LinearScan: expects 2 or 3 inputs (a, b[, h0])";
        const nvinfer1::Dims& a = in[0];
        const nvinfer1::Dims& b = in[1];
        bool same = a.nbDims == 3 && b.nbDims == 3;
        for (int32_t i = 0; same && i < 3; ++i) same = a.d[i] == b.d[i];
        if (!same) return "LinearScan: a and b must both be (B, T, C); got a " + dims_str(a) + ", b " + dims_str(b);
        if (nbInputs == 3 && (in[2].nbDims != 2 || in[2].d[0] != a.d[0] || in[2].d[1] != a.d[2]))
            return "LinearScan: h0 must be (B, C); got " + dims_str(in[2]) + " for a " + dims_str(a);
        has_h0_ = nbInputs == 3;
        return "";
    }

  private:
    bool reverse_ = false;
    bool has_h0_ = false;
};

}  // namespace

nvinfer1::IPluginCreatorInterface* linear_scan_creator() {
    static Creator<LinearScanPlugin> creator;
    return &creator;
}

}  // namespace trt
}  // namespace ef
